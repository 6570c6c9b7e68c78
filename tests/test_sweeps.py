"""Sweeps: one mode entry expanded into named entries, planned, and drawn."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from study_runner import copy_workflow, papermill, scheduled, snakemake

from ombrl.config import load_study, read_yaml
from ombrl.errors import OmbrlError
from ombrl.scores import final_scores

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = read_yaml(ROOT / ".test/config_tiny/config.yaml")
MOPO = {"method": "mopo", "ensemble": "tiny", "steps": 200}


def study_with(sweeps: dict, **extra) -> dict:
    study = copy.deepcopy(TINY)
    study["modes"] = {"bc": {"steps": 200}, "mopo": dict(MOPO)}
    study.pop("sweeps", None)
    return {**study, "sweeps": sweeps, **extra}


def test_a_sweep_of_k_values_gives_k_named_entries_with_the_values():
    study = load_study(study_with({"mopo": {"penalty_lambda": [0.3, 1, 2.5]}}), "s.yaml")
    names = [m for m in study["modes"] if m != "bc"]
    assert names == ["mopo@penalty_lambda=0.3", "mopo@penalty_lambda=1", "mopo@penalty_lambda=2.5"]
    assert [study["modes"][m]["penalty_lambda"] for m in names] == [0.3, 1, 2.5]
    # The entry's other keys and method carry over; the method's defaults are filled in.
    assert {study["modes"][m]["method"] for m in names} == {"mopo"}
    assert {study["modes"][m]["uncertainty"] for m in names} == {"max_norm"}
    assert study["sweeps"]["mopo"]["settings"] == ["penalty_lambda"]
    assert list(study["sweeps"]["mopo"]["entries"]) == names


def test_two_settings_give_every_pair_in_alphabetical_setting_order():
    sweep = {"rollout_length": [1, 5], "penalty_lambda": [0.5, 2.0]}
    study = load_study(study_with({"mopo": sweep}), "s.yaml")
    names = sorted(m for m in study["modes"] if m != "bc")
    assert names == [
        f"mopo@penalty_lambda={lam}@rollout_length={h}" for lam in ("0.5", "2.0") for h in (1, 5)
    ]
    entry = study["modes"]["mopo@penalty_lambda=2.0@rollout_length=5"]
    assert (entry["penalty_lambda"], entry["rollout_length"]) == (2.0, 5)


def test_editing_one_value_changes_only_that_entry():
    before = load_study(study_with({"mopo": {"penalty_lambda": [0.3, 1.0, 3.0]}}), "s.yaml")
    after = load_study(study_with({"mopo": {"penalty_lambda": [0.3, 1.5, 3.0]}}), "s.yaml")
    kept = set(before["modes"]) & set(after["modes"])
    assert set(before["modes"]) - kept == {"mopo@penalty_lambda=1.0"}
    assert set(after["modes"]) - kept == {"mopo@penalty_lambda=1.5"}
    assert all(before["modes"][m] == after["modes"][m] for m in kept)


def test_overrides_of_a_swept_entry_reach_every_value_but_not_the_swept_setting():
    overrides = {"tiny-random": {"mopo": {"rollout_length": 3}}}
    study = load_study(
        study_with({"mopo": {"penalty_lambda": [1.0, 2.0]}}, overrides=overrides), "s.yaml"
    )
    assert study["overrides"]["tiny-random"] == {
        "mopo@penalty_lambda=1.0": {"rollout_length": 3},
        "mopo@penalty_lambda=2.0": {"rollout_length": 3},
    }
    clash = {"tiny-random": {"mopo": {"penalty_lambda": 3}}}
    with pytest.raises(OmbrlError, match=r"overrides.tiny-random.mopo.penalty_lambda: the setting"):
        load_study(study_with({"mopo": {"penalty_lambda": [1.0]}}, overrides=clash), "s.yaml")


@pytest.mark.parametrize(
    ("sweeps", "message"),
    [
        ({"nope": {"steps": [1]}}, "s.yaml: sweeps.nope: not an entry of modes"),
        ({"mopo": {"lamda": [1]}}, "modes.mopo@lamda=1.lamda: unknown key"),
        ({"mopo": {"penalty_lambda": [-1]}}, "penalty_lambda: -1 is less than the minimum"),
        ({"mopo": {"scale": ["a b"]}}, "'mopo@scale=a b' is not a valid entry name"),
        ({"mopo": {"a": [1], "b": [1], "c": [1]}}, "s.yaml: sweeps.mopo: "),
    ],
)
def test_sweep_mistakes_are_one_line_each(sweeps, message):
    with pytest.raises(OmbrlError, match="^") as error:
        load_study(study_with(sweeps), "s.yaml")
    assert message in str(error.value)


@pytest.mark.slow
def test_a_sweep_plans_k_jobs_per_seed_and_an_edit_plans_only_its_value(tmp_path):
    workdir = copy_workflow(tmp_path)
    sweep = study_with({"mopo": {"penalty_lambda": [0.3, 1.0, 3.0]}}, seeds=[0, 1])
    (workdir / "study.yaml").write_text(yaml.safe_dump(sweep))
    result = snakemake(workdir, "--cores", "1", "--configfile", "study.yaml", "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    policies = r"results/tiny-random/policies/\S+?/policy.safetensors"
    assert set(re.findall(policies, result.stdout)) == {
        f"results/tiny-random/policies/{mode}/seed{s}/policy.safetensors"
        for mode in ("bc", *(f"mopo@penalty_lambda={lam}" for lam in ("0.3", "1.0", "3.0")))
        for s in (0, 1)
    }
    assert scheduled(result)["train_policy"] == (1 + 3) * 2
    assert scheduled(result)["figure_sweep"] == 1
    # Edit one value: the other values' jobs keep their paths and their exact commands (so
    # Snakemake's params and input triggers leave them alone); only the edited value's change.
    sweep["sweeps"]["mopo"]["penalty_lambda"] = [0.3, 1.5, 3.0]
    (workdir / "edited.yaml").write_text(yaml.safe_dump(sweep))
    edited = snakemake(workdir, "--cores", "1", "--configfile", "edited.yaml", "--dry-run")
    assert edited.returncode == 0, edited.stderr[-3000:]
    before, after = policy_commands(result.stdout), policy_commands(edited.stdout)
    assert set(before) - set(after) == {"mopo@penalty_lambda=1.0"}
    assert set(after) - set(before) == {"mopo@penalty_lambda=1.5"}
    assert all(before[m] == after[m] for m in set(before) & set(after))
    assert len(after["mopo@penalty_lambda=1.5"]) == 2


def policy_commands(stdout: str) -> dict[str, list[str]]:
    """Mode entry -> the shell commands of its policy jobs (one per seed), from a dry run."""
    commands: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        match = re.search(r"ombrl train-policy .* --name (\S+) ", line)
        if match:
            commands.setdefault(match.group(1), []).append(line)
    return {mode: sorted(lines) for mode, lines in commands.items()}


def synthetic_final(names_values: dict[str, float], seeds: int = 3) -> pd.DataFrame:
    """final_scores of synthetic runs whose score is `level` plus seed noise."""
    rng = np.random.default_rng(0)
    rows = [
        {
            "dataset": "pendulum-random",
            "mode": name,
            "method": "mopo",
            "seed": s,
            "step": 100,
            "return": level,
            "normalized_score": level + rng.normal(0, 3),
        }
        for name, level in names_values.items()
        for s in range(seeds)
    ]
    return final_scores(pd.DataFrame(rows))


def run_notebook(folder: Path, final: pd.DataFrame, sweeps: dict) -> subprocess.CompletedProcess:
    final.to_csv(folder / "final_scores.csv", index=False)
    parameters = {
        "final_csv": str(folder / "final_scores.csv"),
        "dataset": "pendulum-random",
        "sweeps": sweeps,
        "output_pdf": str(folder / "figures/sweep.pdf"),
    }
    return papermill("sweep", folder, parameters)


@pytest.mark.slow
def test_the_sweep_figure_draws_a_line_and_a_heat_map(tmp_path):
    line = {f"mopo@penalty_lambda={v}": {"penalty_lambda": v} for v in (0.1, 1.0, 10.0)}
    heat = {
        f"halt@rollout_length={h}@threshold={t}": {"rollout_length": h, "threshold": t}
        for h in (1, 5)
        for t in (0.5, 1.0)
    }
    levels = {name: 20.0 * i for i, name in enumerate([*line, *heat])}
    sweeps = {
        "mopo": {"settings": ["penalty_lambda"], "entries": line},
        "halt": {"settings": ["rollout_length", "threshold"], "entries": heat},
    }
    done = run_notebook(tmp_path, synthetic_final(levels), sweeps)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "figures/sweep.pdf").read_bytes().startswith(b"%PDF")
    executed = json.loads((tmp_path / "sweep.ipynb").read_text())
    summary = "".join(executed["cells"][-1]["outputs"][0]["data"]["text/plain"])
    assert all(name in summary for name in levels)
    missing = run_notebook(tmp_path, synthetic_final({"mopo@penalty_lambda=0.1": 1.0}), sweeps)
    assert missing.returncode != 0 and "no final score of" in missing.stderr
