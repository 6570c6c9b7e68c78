"""The locomotion studies' DAGs (config/hopper.yaml, config/halfcheetah.yaml), each run for
real at tiny sizes: the same ensembles, modes and rules (behaviour run, generated data,
ensembles, policies, scores, figures) on the dataset with the most entries, one seed, with
every size shrunk so each study takes a few minutes at most (docs/reliability.md)."""

import copy
import subprocess
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml
from study_runner import ROOT, copy_workflow, scheduled, snakemake

from ombrl.config import SCHEMA, load_study, mode_params, read_yaml, section_properties
from ombrl.data.requests import behaviour_name
from ombrl.methods import method_spec

pytestmark = pytest.mark.slow

#: The studies, by their file in config/.
STUDIES = ["hopper", "halfcheetah"]

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
    "update_paths": 2,
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


def jobs_per_dataset(study: dict) -> Counter:
    """The jobs whose number follows the study's datasets, seeds and entries, from the file
    alone: a policy per seed and entry of each dataset (an entry's `datasets` restricts it),
    an ensemble per seed (one where the ensemble entry sets its `seed`) and ensemble those
    entries use, one dataset and one loss figure per dataset, one behaviour run per task and
    behaviour seed."""
    resolved = load_study(copy.deepcopy(study), "study", ROOT)  # fills in defaults in place
    seeds, datasets = len(resolved["seeds"]), resolved["datasets"]
    jobs: Counter = Counter()
    for dataset in datasets:
        entries = [m for m, e in resolved["modes"].items() if dataset in e["datasets"]]
        used = {mode_params(resolved, dataset, m).get("ensemble") for m in entries} - {None}
        jobs["train_policy"] += seeds * len(entries)
        # An entry with its own `seed` is fitted once for every policy seed.
        jobs["train_ensemble"] += sum(
            1 if study["ensembles"][e].get("seed") is not None else seeds for e in used
        )
        jobs["figure_ensemble_loss"] += int(bool(used))
    jobs["generate_dataset"] = len(datasets)
    jobs["behaviour"] = len({behaviour_name(spec) for spec in datasets.values()})
    return jobs


@pytest.fixture(scope="module", params=STUDIES)
def tiny(request, tmp_path_factory) -> tuple[Path, str, dict, dict[str, int]]:
    name = request.param
    study = shrink(read_yaml(ROOT / "config" / f"{name}.yaml"))
    study["modes"] = {m: shrink_defaults(e, m) for m, e in study["modes"].items()}
    resolved = load_study(read_yaml(ROOT / "config" / f"{name}.yaml"), name, ROOT)
    # The dataset with the most entries (entries can be restricted to some datasets).
    first = max(
        resolved["datasets"],
        key=lambda d: sum(d in e["datasets"] for e in resolved["modes"].values()),
    )
    study["datasets"] = {first: study["datasets"][first]}
    study["overrides"] = {d: v for d, v in study.get("overrides", {}).items() if d == first}
    spec = study["datasets"][first]
    # Any trained snapshot is the tiny run's medium (HalfCheetah's returns can be negative).
    spec["medium_return"] = -1.0e6
    spec["behaviour"] |= {k: TINY[k] for k in ("warmup", "batch_size", "hidden_size")}
    # No MLflow: its import and store check cost each job about 2.6 CPU s, and the tracking
    # store is test_workflow.py's to check.
    study["tracking_uri"] = "none"
    workdir = copy_workflow(tmp_path_factory.mktemp(name))
    (workdir / "study.yaml").write_text(yaml.safe_dump(study))
    result = snakemake(workdir, "--cores", "2", "--configfile", "study.yaml")
    assert result.returncode == 0, result.stderr[-4000:]
    # The jobs it ran: the 'Job stats' table a run logs before it starts.
    ran = scheduled(subprocess.CompletedProcess(result.args, 0, result.stderr))
    return workdir, name, study, ran


def test_the_tiny_study_scores_every_entry_from_one_behaviour_run(tiny):
    workdir, _, study, _ = tiny
    scores = pd.read_csv(workdir / "results" / "scores.csv")
    expected = {
        (d, m, s) for d in study["datasets"] for m in study["modes"] for s in study["seeds"]
    }
    assert set(zip(scores["dataset"], scores["mode"], scores["seed"], strict=True)) == expected
    assert scores["normalized_score"].notna().all()
    (spec,) = study["datasets"].values()
    runs = [p.name for p in (workdir / "resources" / "behaviour").iterdir()]
    assert runs == [behaviour_name({"seed": 0, **spec})]
    for figure in ("avg_return", "final_scores", "performance_profile"):
        assert (workdir / "results" / "figures" / f"{figure}.pdf").stat().st_size > 0
    rerun = snakemake(workdir, "--dry-run", "--configfile", "study.yaml")
    assert rerun.returncode == 0 and scheduled(rerun) == {}


def test_the_real_study_plans_the_same_rules(tiny):
    workdir, name, study, ran = tiny
    (workdir / "real.yaml").write_text((ROOT / "config" / f"{name}.yaml").read_text())
    plan = snakemake(workdir, "-n", "--quiet", "rules", "--forceall", "--configfile", "real.yaml")
    assert plan.returncode == 0, plan.stderr[-2000:]
    planned = scheduled(plan)
    real, small = jobs_per_dataset(read_yaml(workdir / "real.yaml")), jobs_per_dataset(study)
    assert ran.keys() == planned.keys() >= real.keys()
    for rule, count in ran.items():
        if rule in real:
            assert (count, planned[rule]) == (small[rule], real[rule]), rule
        else:
            assert planned[rule] == count, rule
