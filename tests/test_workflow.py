"""The real Snakemake workflow on a tiny study, in a fresh copy of the repository.

One module-scoped run of the whole DAG; the tests then check its outputs, that a second dry
run schedules nothing, and that a config change reruns exactly the stages it invalidates.
"""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from study_runner import copy_workflow, scheduled, snakemake

from ombrl.config import load_study, read_yaml
from ombrl.methods import METHODS

pytestmark = pytest.mark.slow

TINY = load_study(read_yaml(Path(".test/config_tiny/config.yaml")), "tiny")
# The tiny study's mode entries: every method once under its own name, and a sweep of
# mopo over two lambdas (`mopo@penalty_lambda=0.5`, `...=5.0`).
ENTRIES = list(TINY["modes"])
# The entries that train on model rollouts (all but bc and sac).
MODEL_BASED = sum(METHODS[entry["method"]].needs_ensemble for entry in TINY["modes"].values())
# The figures drawn from the scores: every change that reaches scores.csv redraws them.
FIGURES = {
    "figure_avg_return": 1,
    "figure_final_scores": 1,
    "figure_performance_profile": 1,
    "figure_sweep": 1,
}
# Entries that start from another entry's policy (finetune): they rerun with it.
STARTING = sum(METHODS[entry["method"]].starts_from for entry in TINY["modes"].values())
# Online PETS runs (one per propagation method and seed) and their figure: they refit models.
PETS_RUNS = {
    "pets_online": len(TINY["pets_propagation"]["prop_types"])
    * len(TINY["pets_propagation"]["seeds"]),
    "figure_pets_propagation": 1,
}


def run(workdir, *args):
    return snakemake(workdir, "--cores", "2", *args)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("study"))
    result = run(workdir, "--configfile", "study.yaml")
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


def test_the_study_produces_scores_and_figure(study):
    scores = pd.read_csv(study / "results/scores.csv")
    assert list(scores.columns[:7]) == [
        "dataset",
        "mode",
        "method",
        "seed",
        "step",
        "return",
        "normalized_score",
    ]
    assert set(scores["mode"]) == set(ENTRIES)
    assert set(scores["method"]) == set(METHODS)
    assert set(scores["dataset"]) == {"tiny-random"}
    # Evaluations at step 0, every 50 updates, and at the end (100).
    assert sorted(scores.loc[scores["mode"] == "bc", "step"]) == [0, 50, 100]
    pdf = study / "results/figures/avg_return.pdf"
    assert pdf.read_bytes().startswith(b"%PDF")
    # The figure draws every entry by its name (the executed notebook prints its curves).
    executed = (study / "results/notebooks/avg_return.ipynb").read_text()
    drawn = re.search(r"curves drawn: ([^\\\n\"]*)", executed).group(1).split(", ")
    assert sorted(drawn) == sorted(ENTRIES)
    loss = study / "results/figures/tiny-random/ensemble_loss.pdf"
    assert loss.read_bytes().startswith(b"%PDF")
    final = pd.read_csv(study / "results/tables/final_scores.csv")
    assert sorted(final["mode"]) == sorted(ENTRIES)


def test_the_planner_is_scored_once_and_the_propagation_figure_draws_every_run(study):
    scores = pd.read_csv(study / "results/scores.csv")
    assert list(scores.loc[scores["mode"] == "pets", "step"]) == [0]  # one evaluation
    meta = json.loads((study / "results/tiny-random/policies/pets/seed0/policy.json").read_text())
    assert meta["meta"]["ensemble"] == "results/tiny-random/ensembles/tiny/seed0"
    assert meta["meta"]["planner"]["settings"]["num_models"] == 2  # the tiny ensemble's elites
    assert (study / "results/figures/pets_propagation.pdf").read_bytes().startswith(b"%PDF")
    executed = (study / "results/notebooks/pets_propagation.ipynb").read_text()
    assert f"runs drawn: {PETS_RUNS['pets_online']};" in executed


def test_every_job_is_a_finished_mlflow_run_in_the_study_store(study):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{study}/results/mlflow.db")
    runs = {
        name: client.search_runs([client.get_experiment_by_name(name).experiment_id])
        for name in ("ensembles", "policies")
    }
    assert len(runs["ensembles"]) == 1 and len(runs["policies"]) == len(ENTRIES)
    assert {r.info.status for r in runs["ensembles"] + runs["policies"]} == {"FINISHED"}
    assert {r.data.tags["mode"] for r in runs["policies"]} == set(ENTRIES)
    # A workflow ensemble's run says which study entry and which base config it is.
    tags = runs["ensembles"][0].data.tags
    assert (tags["ensemble"], tags["config"]) == ("tiny", "pnn")


def test_the_report_holds_the_figure_and_the_score_table(study):
    result = run(study, "--configfile", "study.yaml", "--report", "results/report.html")
    assert result.returncode == 0, result.stderr[-3000:]
    html = (study / "results/report.html").read_text()
    for name in (
        "avg_return.pdf",
        "final_scores.csv",
        "Final normalized score",
        "Normalized score",
        "aggregates.csv",
        "runs.csv",
        "Where every number comes from",
    ):
        assert name in html, name


def test_a_finished_study_schedules_nothing(study):
    result = run(study, "--configfile", "study.yaml", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert scheduled(result) == {}


def test_a_policy_parameter_reruns_only_policies_scores_and_figures(study):
    changed = yaml.safe_load((study / "study.yaml").read_text())
    changed["modes"]["aleatoric-penalty"]["penalty_lambda"] = 2.5
    (study / "changed.yaml").write_text(yaml.safe_dump(changed))
    result = run(study, "--configfile", "changed.yaml", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert scheduled(result) == {"train_policy": 1, "scores": 1, **FIGURES}


def test_the_runs_table_leads_every_score_to_its_folder_and_mlflow_run(study):
    from mlflow.tracking import MlflowClient

    scores = pd.read_csv(study / "results/scores.csv")
    runs = pd.read_csv(study / "results/tables/runs.csv", keep_default_na=False)
    joined = scores.merge(runs, on=["dataset", "mode", "seed"], how="left", validate="m:1")
    assert joined["output"].notna().all()
    client = MlflowClient(tracking_uri=f"sqlite:///{study}/results/mlflow.db")
    for row in runs.itertuples():
        assert (study / row.output / "policy.safetensors").is_file()
        assert (study / "logs" / f"{row.output.removeprefix('results/')}.log").is_file()
        assert client.get_run(row.mlflow_run_id).data.tags["mode"] == row.mode
        assert row.code_version.startswith("0.")


def test_the_scores_settings_rerun_only_the_scores_and_figures(study):
    changed = yaml.safe_load((study / "study.yaml").read_text())
    changed["scores"] = {"last_k": 2, "baseline": "sac"}
    (study / "changed.yaml").write_text(yaml.safe_dump(changed))
    result = run(study, "--configfile", "changed.yaml", "--dry-run", "--printshellcmds")
    assert result.returncode == 0, result.stderr
    assert scheduled(result) == {"scores": 1, **FIGURES}
    assert "--last-k 2 --optimality-threshold 100 --baseline sac" in result.stdout


def test_an_ensemble_parameter_reruns_the_ensemble_and_what_depends_on_it(study):
    changed = yaml.safe_load((study / "study.yaml").read_text())
    changed["ensembles"]["tiny"]["params"]["fit_epochs"] = 4
    (study / "changed.yaml").write_text(yaml.safe_dump(changed))
    result = run(study, "--configfile", "changed.yaml", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert scheduled(result) == {
        "train_ensemble": 1,
        "train_policy": MODEL_BASED + STARTING,
        "scores": 1,
        **FIGURES,
        "figure_ensemble_loss": 1,
    }


def with_change(study, path: str, edit):
    """Apply `edit` to a file of the study copy and return a restore function."""
    target = study / path
    original = target.read_text()
    target.write_text(edit(original))
    return lambda: target.write_text(original)


def test_a_new_seed_adds_only_its_jobs(study):
    changed = yaml.safe_load((study / "study.yaml").read_text())
    changed["seeds"] = [0, 1]
    (study / "changed.yaml").write_text(yaml.safe_dump(changed))
    result = run(study, "--configfile", "changed.yaml", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert scheduled(result) == {
        "train_ensemble": 1,
        "train_policy": len(ENTRIES),
        "scores": 1,
        **FIGURES,
        "figure_ensemble_loss": 1,
    }


def test_a_new_seed_trains_on_a_pretrained_ensemble_without_fitting_one(study):
    """An ensemble entry with `seed: 0` is fitted once: seed 1's policies train on seed 0's
    ensemble, and nothing of seed 0 reruns."""
    changed = yaml.safe_load((study / "study.yaml").read_text())
    changed["seeds"] = [0, 1]
    changed["ensembles"]["tiny"]["seed"] = 0
    (study / "changed.yaml").write_text(yaml.safe_dump(changed))
    result = run(study, "--configfile", "changed.yaml", "--dry-run", "--printshellcmds")
    assert result.returncode == 0, result.stderr
    assert scheduled(result) == {"train_policy": len(ENTRIES), "scores": 1, **FIGURES}
    used = re.findall(r"--ensemble (\S+)", result.stdout)
    assert len(used) == MODEL_BASED
    assert set(used) == {"results/tiny-random/ensembles/tiny/seed0"}


def test_editing_the_figure_notebook_reruns_only_the_figure(study):
    restore = with_change(
        study,
        "notebooks/avg_return.ipynb",
        lambda t: t.replace("grid(alpha=0.3)", "grid(alpha=0.4)"),
    )
    try:
        result = run(study, "--configfile", "study.yaml", "--dry-run")
    finally:
        restore()
    assert result.returncode == 0, result.stderr
    assert scheduled(result) == {"figure_avg_return": 1}


def test_editing_the_sac_agent_reruns_only_the_jobs_that_use_it(study):
    restore = with_change(study, "src/ombrl/agents/sac.py", lambda t: t + "\n# an edit\n")
    try:
        result = run(study, "--configfile", "study.yaml", "--dry-run")
    finally:
        restore()
    assert result.returncode == 0, result.stderr
    # The SAC family's entries, and cql, whose actor is SAC's (agents/cql.py imports it).
    users = [m for m, e in TINY["modes"].items() if METHODS[e["method"]].module in {"sac", "cql"}]
    assert scheduled(result) == {
        "train_policy": len(users),
        "scores": 1,
        **FIGURES,
    }
    # Every SAC-family entry's job and cql's; bc, td3-bc, iql and the NPG methods do not use SAC.
    assert sorted(re.findall(r"mode=([\w.@=+-]+), seed=\d", result.stdout)) == sorted(users)


@pytest.mark.parametrize(
    ("path", "rerun"),
    [
        # The MLP every learner is built from: bc, the SAC family and NPG's value baseline
        # (not the planner, pets, which learns nothing).
        ("src/ombrl/agents/networks.py", [e for e in ENTRIES if e != "pets"]),
        # Imported by no stage (`ombrl convert-ensemble` only): nothing reruns.
        ("src/ombrl/models/convert.py", []),
    ],
)
def test_a_library_edit_reruns_exactly_the_jobs_that_import_it(study, path, rerun):
    restore = with_change(study, path, lambda t: t + "\n# an edit\n")
    try:
        result = run(study, "--configfile", "study.yaml", "--dry-run")
    finally:
        restore()
    assert result.returncode == 0, result.stderr
    expected = {"train_policy": len(rerun), "scores": 1, **FIGURES} if rerun else {}
    assert scheduled(result) == expected
    assert sorted(re.findall(r"mode=([\w.@=+-]+), seed=\d", result.stdout)) == sorted(rerun)


def test_editing_the_ensemble_code_reruns_ensembles_and_dependants(study):
    restore = with_change(study, "src/ombrl/models/fit.py", lambda t: t + "\n# an edit\n")
    try:
        result = run(study, "--configfile", "study.yaml", "--dry-run")
    finally:
        restore()
    assert result.returncode == 0, result.stderr
    assert scheduled(result) == {
        "train_ensemble": 1,
        "train_policy": MODEL_BASED + STARTING,
        "scores": 1,
        **FIGURES,
        "figure_ensemble_loss": 1,
        **PETS_RUNS,
    }


def test_a_bad_config_stops_before_any_job_with_one_line_per_problem(study):
    bad = yaml.safe_load((study / "study.yaml").read_text())
    bad["modes"]["bc"]["stepz"] = 1
    bad["datasets"]["tiny-random"]["transitions"] = "many"
    (study / "bad.yaml").write_text(yaml.safe_dump(bad))
    result = run(study, "--configfile", "bad.yaml", "--dry-run")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("ombrl: error:")]
    assert len(errors) == 2, result.stderr
    assert any("modes.bc.stepz: unknown key" in line for line in errors)
    assert any(
        "datasets.tiny-random.transitions: 'many' is not of type 'integer'" in line
        for line in errors
    )
    assert "Traceback" not in result.stderr


def test_the_d4rl_study_plans_every_job_with_its_tuned_values(tmp_path):
    workdir = copy_workflow(tmp_path, "config/d4rl.yaml")
    result = run(workdir, "--configfile", "study.yaml", "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    # Every method that optimises the task's return offline by learning a policy (the
    # thesis's other experiments and the planner, pets, are in config/full.yaml), but mopo:
    # no seed project tuned MOPO on D4RL (the thesis's aleatoric-penalty carries its values).
    datasets, seeds = 12, 5
    modes = sum(
        spec.task_objective and not spec.starts_from and spec.progress is not None
        for name, spec in METHODS.items()
        if name != "mopo"
    )
    # Per dataset: the thesis's 4x200 PNN, MOReL's deterministic and J-MOReL's probabilistic
    # ensemble (halfcheetah's own sizes for both).
    ensembles = 3
    assert scheduled(result) == {
        "download_dataset": datasets,
        "tracking_store": 1,
        "train_ensemble": datasets * seeds * ensembles,
        "train_policy": datasets * seeds * modes + seeds,  # + J-MOReL's MOReL, one dataset
        "scores": 1,
        "figure_avg_return": 1,
        "figure_final_scores": 1,
        "figure_performance_profile": 1,
        "figure_ensemble_loss": datasets,
    }
    # Each dataset's tuned rollout length and penalty reach its own policy jobs only.
    commands = [line for line in result.stdout.splitlines() if "--mode aleatoric-penalty" in line]
    hopper = [c for c in commands if "hopper-medium-v2.hdf5" in c]
    assert len(hopper) == seeds
    assert all("rollout_length=15" in c and "penalty_lambda=300" in c for c in hopper)
    # A job gets only its rollout scheme's keys: the CLI refuses the other scheme's.
    assert not any("rollout_batch" in c or "persistent_rollouts=50" not in c for c in hopper)
    mbpo = [c for c in result.stdout.splitlines() if "--mode mbpo" in c]
    assert mbpo and all("rollout_batch=50000" in c and "persistent" not in c for c in mbpo)
    cheetah = [c for c in commands if "halfcheetah-medium-expert-v2.hdf5" in c]
    assert all("rollout_length=2" in c and "penalty_lambda=8.1968" in c for c in cheetah)
    halt = [
        line
        for line in result.stdout.splitlines()
        if "--mode aleatoric-partitioning" in line and "hopper-medium-v2.hdf5" in line
    ]
    assert len(halt) == seeds
    assert all("rollout_length=19" in c and "threshold=0.0131" in c for c in halt)
    assert all("threshold_rule=absolute" in c and "scale=obs_std" in c for c in halt)
    # J-MOReL's per-environment settings, and halfcheetah's own ensemble.
    lines = result.stdout.splitlines()
    jmorel = [c for c in lines if "--mode j-morel" in c and "j-morel-morel" not in c]
    assert len(jmorel) == datasets * seeds
    # J-MOReL's own MOReL: the mask, step 0.02, halfcheetah's J-MOReL values, on one dataset.
    preset = [c for c in lines if "--mode j-morel" in c and "j-morel-morel" in c]
    assert len(preset) == seeds and all("halfcheetah-medium-v2.hdf5" in c for c in preset)
    assert all("input_scaling=mask" in c and "step_size=0.02" in c for c in preset)
    assert all("threshold=50" in c and "halt_penalty=-200" in c for c in preset)
    walker = [c for c in jmorel if "walker2d-random-v2.hdf5" in c]
    assert all(
        "threshold=20" in c and "halt_penalty=-30" in c and "update_paths=100" in c for c in walker
    )
    cheetah = [c for c in jmorel if "halfcheetah-medium-v2.hdf5" in c]
    assert all("ensembles/pnn-4x512-cheetah/" in c and "horizon=1000" in c for c in cheetah)
