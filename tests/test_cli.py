"""The `ombrl` command as a user meets it: real subprocesses, real files, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ombrl.models.ensemble import load_ensemble

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
OMBRL = str(Path(sys.executable).parent / "ombrl")
TINY_ENSEMBLE = ["num_models=3", "num_elites=2", "hidden_size=32,32", "fit_epochs=2"]


def ombrl(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([OMBRL, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("ombrl: error: ")
    for fragment in fragments:
        assert fragment in result.stderr


def train_tiny_ensemble(dataset: Path, output: Path, *flags: str) -> subprocess.CompletedProcess:
    """`ombrl train-ensemble` of a 3-member 32x32 PNN for 2 epochs (seconds), quiet."""
    return ombrl(
        "train-ensemble",
        "--dataset",
        str(dataset),
        "--config",
        "config/ensembles/pnn.yaml",
        "--params",
        *TINY_ENSEMBLE,
        *flags,
        "--output",
        str(output),
        "--quiet",
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pendulum.hdf5"
    result = ombrl(
        "collect",
        "--env",
        "InvertedPendulum-v5",
        "--policy",
        "medium",
        "--transitions",
        "1200",
        "--seed",
        "3",
        "--output",
        str(path),
    )
    assert result.returncode == 0, result.stderr
    return path


def test_inspect_prints_a_json_summary(dataset):
    result = ombrl("dataset", "inspect", str(dataset))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["transitions"] == 1200
    assert (summary["obs_dim"], summary["act_dim"]) == (4, 1)
    assert summary["ref_max_score"] > summary["ref_min_score"]
    assert summary["return_min"] <= summary["return_mean"] <= summary["return_max"]


def test_same_seed_same_numbers_and_a_new_seed_differs(dataset, tmp_path):
    def train(name: str, seed: str) -> Path:
        out = tmp_path / name
        result = train_tiny_ensemble(dataset, out / "ensemble", "--seed", seed)
        assert result.returncode == 0, result.stderr
        result = ombrl(
            "train-policy",
            "--dataset",
            str(dataset),
            "--mode",
            "aleatoric-penalty",
            "--ensemble",
            str(out / "ensemble"),
            "--params",
            "steps=60",
            "hidden_size=32,32",
            "--eval-every",
            "30",
            "--eval-episodes",
            "2",
            "--seed",
            seed,
            "--output",
            str(out / "policy"),
            "--quiet",
        )
        assert result.returncode == 0, result.stderr
        return out

    first, again, other = train("a", "0"), train("b", "0"), train("c", "1")
    for name in ("ensemble/model.safetensors", "policy/policy.safetensors"):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
        assert (first / name).read_bytes() != (other / name).read_bytes(), name
    for name in ("ensemble/metrics.csv", "policy/progress.csv"):
        numbers = [
            pd.read_csv(run / name).drop(columns="seconds", errors="ignore")
            for run in (first, again)
        ]
        pd.testing.assert_frame_equal(*numbers)
    progress = pd.read_csv(first / "policy/progress.csv")
    assert list(progress["step"]) == [0, 30, 60]
    assert list(progress.columns[:7]) == [
        "dataset",
        "mode",
        "method",
        "seed",
        "step",
        "return",
        "normalized_score",
    ]
    meta = json.loads((first / "ensemble/model.json").read_text())["meta"]
    assert meta["seed"] == 0 and meta["config"]["hidden_size"] == [32, 32]
    assert len(meta["dataset_checksum"]) == 64 and meta["code_version"].startswith("0.")


def test_each_ensemble_is_one_tagged_mlflow_run(dataset, tmp_path, tracking_store):
    from mlflow.tracking import MlflowClient

    result = train_tiny_ensemble(dataset, tmp_path / "e", "--seed", "7")
    assert result.returncode == 0, result.stderr
    client = MlflowClient(tracking_uri=tracking_store)
    experiment = client.get_experiment_by_name("ensembles")
    runs = client.search_runs([experiment.experiment_id], "tags.seed = '7' and tags.config = 'pnn'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["dataset"] == "pendulum"
    assert run.data.params["hidden_size"] == "[32, 32]"
    epochs = client.get_metric_history(run.info.run_id, "holdout_mse")
    assert sorted(m.step for m in epochs) == [1, 2]
    csv = pd.read_csv(tmp_path / "e/metrics.csv")
    assert sorted(m.value for m in epochs) == sorted(csv["holdout_mse"])


def test_upstream_flag_spellings_and_list_overrides(dataset, tmp_path):
    result = ombrl(
        "train-ensemble",
        "--dataset",
        str(dataset),
        "--config",
        "config/ensembles/dnn.yaml",
        "--params",
        "fit_epochs=1",
        "hidden_size=16,16",
        "num_models=2",
        "num_elites=2",
        "--holdout_ratio",
        "0.3",
        "--csv",
        str(tmp_path / "log.csv"),
        "--output",
        str(tmp_path / "model"),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / "model/model.json").read_text())["meta"]
    assert meta["config"]["holdout_ratio"] == 0.3
    assert meta["config"]["hidden_size"] == [16, 16]
    assert len(pd.read_csv(tmp_path / "log.csv")) == 1


def test_morel_ensemble_trains_on_every_transition_and_logs_no_holdout(dataset, tmp_path):
    """config/ensembles/morel.yaml holds out nothing (mjrl): the metrics have no holdout
    column, model.json's holdout is empty, and all members are elites."""
    result = ombrl(
        "train-ensemble",
        "--dataset",
        str(dataset),
        "--config",
        "config/ensembles/morel.yaml",
        "--params",
        "fit_epochs=2",
        "hidden_size=16,16",
        "--output",
        str(tmp_path / "model"),
        "--track-training",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    csv = pd.read_csv(tmp_path / "model/metrics.csv")
    assert len(csv) == 2 and "full_mse_ensemble" in csv.columns
    assert not [c for c in csv.columns if c.startswith("holdout")]
    meta = json.loads((tmp_path / "model/model.json").read_text())["meta"]
    assert meta["config"]["holdout_ratio"] == 0 and meta["holdout"] == {}
    assert meta["best_epoch"] == [2, 2, 2, 2]
    model, _ = load_ensemble(tmp_path / "model")
    assert model.elites == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "args, fragments",
    [
        (
            ["train-ensemble", "--dataset", "missing.hdf5", "--output", "x"],
            ["missing.hdf5: no such dataset file"],
        ),
        (
            ["train-ensemble", "--dataset", "hopper-superb-v2", "--output", "x"],
            ["hopper-superb-v2"],
        ),
        (
            ["train-ensemble", "--dataset", "d.hdf5", "--params", "hidden=3", "--output", "x"],
            ["--params hidden: unknown key"],
        ),
        (
            ["train-ensemble", "--dataset", "d.hdf5", "--params", "num_models=-1", "--output", "x"],
            ["num_models: -1 is less than the minimum of 1"],
        ),
        (
            ["train-policy", "--dataset", "d.hdf5", "--mode", "aleatoric-penalty", "--output", "x"],
            ["--mode aleatoric-penalty needs --ensemble DIR"],
        ),
    ],
)
def test_user_mistakes_are_one_line_errors(args, fragments, tmp_path):
    result = ombrl(*args, cwd=tmp_path)
    assert_user_error(result, *fragments)
    assert not (tmp_path / "x").exists()


def test_a_bad_study_config_lists_every_problem(tmp_path):
    bad = tmp_path / "study.yaml"
    bad.write_text(
        (ROOT / "config/config.yaml")
        .read_text()
        .replace("seeds: [0, 1]", "seeds: [0, 1]\nfoo: 1")
        .replace("steps: 5000", "steps: -5")
    )
    result = ombrl("check-config", str(bad))
    assert_user_error(result, "foo: unknown key", "modes.bc.steps: -5 is less than the minimum")
    assert len(result.stderr.splitlines()) == 2
    assert ombrl("check-config", "config/config.yaml").returncode == 0


def test_a_corrupted_model_is_a_clear_error_and_leaves_no_output(dataset, tmp_path):
    model = tmp_path / "ensemble"
    result = train_tiny_ensemble(dataset, model)
    assert result.returncode == 0, result.stderr
    blob = bytearray((model / "model.safetensors").read_bytes())
    blob[-8:] = b"\x00" * 8
    (model / "model.safetensors").write_bytes(bytes(blob))
    result = ombrl(
        "train-policy",
        "--dataset",
        str(dataset),
        "--mode",
        "aleatoric-penalty",
        "--ensemble",
        str(model),
        "--output",
        str(tmp_path / "policy"),
        "--quiet",
    )
    assert_user_error(result, "model.safetensors")
    assert not (tmp_path / "policy").exists()


def test_track_training_adds_costly_metrics_to_csv_and_mlflow(dataset, tmp_path, tracking_store):
    from mlflow.tracking import MlflowClient

    result = train_tiny_ensemble(
        dataset,
        tmp_path / "e",
        "--seed",
        "8",
        "--track_training",
        "--csv",
        str(tmp_path / "log.csv"),
    )
    assert result.returncode == 0, result.stderr
    csv = pd.read_csv(tmp_path / "log.csv")
    pd.testing.assert_frame_equal(csv, pd.read_csv(tmp_path / "e/metrics.csv"))
    # model.json holds the kept snapshot's holdout metrics: each member's are its kept epoch's.
    meta = json.loads((tmp_path / "e/model.json").read_text())["meta"]
    for m, epoch in enumerate(meta["best_epoch"]):
        for name in ("mse", "nll", "z2", "within_1sigma"):
            column = f"holdout_{name}_m{m}"
            assert meta["holdout"][column] == pytest.approx(csv[column][epoch - 1], rel=1e-5)
    assert 0 < meta["holdout"]["holdout_within_1sigma_ensemble"] < 1
    client = MlflowClient(tracking_uri=tracking_store)
    experiment = client.get_experiment_by_name("ensembles")
    (run,) = client.search_runs(
        [experiment.experiment_id], "tags.seed = '8' and tags.config = 'pnn'"
    )
    for key in ("full_mse_ensemble", "full_nll_m0", "holdout_z2", "holdout_within_1sigma_ensemble"):
        values = [m.value for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(values) == sorted(csv[key])
