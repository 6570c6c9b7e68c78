"""config/hopper.yaml's DAG, run for real at tiny sizes: the same ensembles, modes and rules
(behaviour run, generated data, ensembles, policies, scores, figures) on its first dataset,
one seed, with every size shrunk so the whole study takes about a minute."""

import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from study_runner import ROOT, copy_workflow, scheduled, snakemake

from ombrl.config import SCHEMA, read_yaml, section_properties
from ombrl.methods import method_spec

pytestmark = pytest.mark.slow

#: Size keys wherever they appear in the study, and their tiny values.
TINY = {
    "seeds": [0],
    "env_steps": 600,
    "warmup": 200,
    "snapshot_every": 200,
    "eval_episodes": 1,
    "transitions": 300,
    "hidden_size": [16, 16],
    "batch_size": 32,
    "fit_epochs": 2,
    "steps": 60,
    "rollout_batch": 100,
    "rollout_every": 30,
    "iterations": 2,
    "update_paths": 4,
    "horizon": 10,
    "eval_every": 1,
    "every": 30,
    "episodes": 1,
}


#: Sizes the real study leaves at their defaults, set on each mode entry whose method has
#: them: NPG's behaviour-cloning start (19530 minibatch steps) and baseline (128x128), the
#: model-free references' 256x256 networks, every policy's batch (256).
DEFAULT_SIZES = {k: TINY[k] for k in ("hidden_size", "batch_size")}
DEFAULT_SIZES |= {"bc_steps": 20, "value_hidden_size": [16]}


def shrink(node):
    """`node` with every size key of TINY set to its tiny value, at any depth."""
    if isinstance(node, dict):
        return {k: TINY[k] if k in TINY else shrink(v) for k, v in node.items()}
    return node


def shrink_defaults(entry: dict, name: str) -> dict:
    """A mode entry with DEFAULT_SIZES set where its method has the key."""
    section = SCHEMA["$defs"][method_spec(entry.get("method", name)).section]
    keys = section_properties(section)
    return entry | {k: v for k, v in DEFAULT_SIZES.items() if k in keys}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict, dict[str, int]]:
    study = shrink(read_yaml(ROOT / "config" / "hopper.yaml"))
    study["modes"] = {name: shrink_defaults(e, name) for name, e in study["modes"].items()}
    first = next(iter(study["datasets"]))
    study["datasets"] = {first: study["datasets"][first]}
    study["overrides"] = {d: v for d, v in study.get("overrides", {}).items() if d == first}
    spec = study["datasets"][first]
    spec["medium_return"] = 1.0  # any trained snapshot is the tiny run's medium
    spec["behaviour"] |= {k: TINY[k] for k in ("warmup", "batch_size", "hidden_size")}
    workdir = copy_workflow(tmp_path_factory.mktemp("hopper"))
    (workdir / "study.yaml").write_text(yaml.safe_dump(study))
    result = snakemake(workdir, "--cores", "2", "--configfile", "study.yaml")
    assert result.returncode == 0, result.stderr[-4000:]
    # The jobs it ran: the 'Job stats' table a run logs before it starts.
    ran = scheduled(subprocess.CompletedProcess(result.args, 0, result.stderr))
    return workdir, study, ran


def test_the_tiny_hopper_study_scores_every_entry_from_one_behaviour_run(tiny):
    workdir, study, _ = tiny
    scores = pd.read_csv(workdir / "results" / "scores.csv")
    expected = {
        (d, m, s) for d in study["datasets"] for m in study["modes"] for s in study["seeds"]
    }
    assert set(zip(scores["dataset"], scores["mode"], scores["seed"], strict=True)) == expected
    assert scores["normalized_score"].notna().all()
    assert [p.name for p in (workdir / "resources" / "behaviour").iterdir()] == ["Hopper-v5-seed0"]
    for figure in ("avg_return", "final_scores", "performance_profile"):
        assert (workdir / "results" / "figures" / f"{figure}.pdf").stat().st_size > 0
    rerun = snakemake(workdir, "--dry-run", "--configfile", "study.yaml")
    assert rerun.returncode == 0 and scheduled(rerun) == {}


def test_the_real_study_plans_the_same_rules(tiny):
    workdir, _, ran = tiny
    (workdir / "hopper.yaml").write_text((ROOT / "config" / "hopper.yaml").read_text())
    plan = snakemake(workdir, "-n", "--quiet", "rules", "--forceall", "--configfile", "hopper.yaml")
    assert plan.returncode == 0, plan.stderr[-2000:]
    planned = scheduled(plan)
    real = read_yaml(workdir / "hopper.yaml")
    seeds, datasets = len(real["seeds"]), len(real["datasets"])
    scale = {"train_policy": seeds * datasets, "train_ensemble": seeds * datasets}
    scale |= {"generate_dataset": datasets, "figure_ensemble_loss": datasets}
    assert ran.keys() == planned.keys() >= scale.keys()
    for rule, count in ran.items():
        assert planned[rule] == count * scale.get(rule, 1), rule
