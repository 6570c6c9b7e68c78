"""`ombrl uncertainty` and `ombrl train-policy` in the pessimistic modes, as subprocesses."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_cli import assert_user_error, ombrl, train_tiny_ensemble

from ombrl.data.d4rl import read_hdf5
from ombrl.models.ensemble import load_ensemble
from ombrl.models.uncertainty import dataset_statistics, disagreement_scale

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset, ensemble folder): a small random-policy dataset and a fitted ensemble."""
    root = tmp_path_factory.mktemp("modes")
    data = root / "pendulum.hdf5"
    result = ombrl(
        "collect",
        "--env",
        "InvertedPendulum-v5",
        "--policy",
        "random",
        "--transitions",
        "1000",
        "--output",
        str(data),
    )
    assert result.returncode == 0, result.stderr
    result = train_tiny_ensemble(data, root / "ensemble")
    assert result.returncode == 0, result.stderr
    return data, root / "ensemble"


def uncertainty_json(data: Path, ensemble: Path, *flags: str) -> dict:
    """What `ombrl uncertainty --json` prints."""
    result = ombrl(
        "uncertainty", "--dataset", str(data), "--ensemble", str(ensemble), "--json", *flags
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_uncertainty_prints_the_statistics_of_every_kind(trained):
    data, ensemble = trained
    printed = uncertainty_json(data, ensemble)
    model, _ = load_ensemble(ensemble, torch.device("cpu"))
    dataset = read_hdf5(data)
    kinds = ["epistemic", "max_norm", "max_var"]
    # By default in the thesis modes' units and members: obs_std, every member.
    obs_std = disagreement_scale("obs_std", model, dataset.observations, dataset.actions)
    expected = dataset_statistics(model, dataset, kinds, 4096, obs_std)
    assert printed.keys() == expected.keys()
    for kind in kinds:
        assert printed[kind] == pytest.approx(expected[kind], rel=1e-6)
        assert printed[kind]["max"] > printed[kind]["p50"] > 0
    # The table names the kinds and the columns; --scale changes the numbers.
    table = ombrl("uncertainty", "--dataset", str(data), "--ensemble", str(ensemble))
    assert table.returncode == 0, table.stderr
    assert "all members" in table.stdout and all(k in table.stdout for k in ["p99", *kinds])
    targets = uncertainty_json(data, ensemble, "--scale", "target_std", "--members", "elites")
    scale = disagreement_scale("target_std", model, dataset.observations, dataset.actions)
    expected = dataset_statistics(model, dataset, kinds, 4096, scale, model.elites)
    for kind in kinds:
        assert targets[kind] == pytest.approx(expected[kind], rel=1e-6)
        assert targets[kind]["mean"] != pytest.approx(printed[kind]["mean"], rel=1e-3)
    renamed = ombrl(
        "uncertainty", "--dataset", str(data), "--ensemble", str(ensemble), "--scale", "normalized"
    )
    assert_user_error(renamed, "'normalized' was renamed; use target_std")


def test_uncertainty_mistakes_are_one_line_errors(trained, tmp_path):
    data, ensemble = trained
    missing = ombrl("uncertainty", "--dataset", str(data), "--ensemble", str(tmp_path))
    assert_user_error(missing, str(tmp_path))
    other = tmp_path / "hopper.hdf5"
    result = ombrl(
        "collect",
        "--env",
        "Hopper-v5",
        "--policy",
        "random",
        "--transitions",
        "50",
        "--output",
        str(other),
    )
    assert result.returncode == 0, result.stderr
    mismatch = ombrl("uncertainty", "--dataset", str(other), "--ensemble", str(ensemble))
    assert_user_error(mismatch, "dimensions")


def test_a_partitioning_mode_trains_from_the_cli_and_logs_its_threshold(trained, tmp_path):
    data, ensemble = trained
    stats = uncertainty_json(data, ensemble)  # the partitioning modes' scale and members
    result = ombrl(
        "train-policy",
        "--dataset",
        str(data),
        "--mode",
        "epistemic-partitioning",
        "--ensemble",
        str(ensemble),
        "--params",
        "steps=40",
        "hidden_size=32,32",
        "threshold_rule=percentile",
        "threshold=90",
        "halt_penalty=-5",
        "--eval-every",
        "40",
        "--eval-episodes",
        "1",
        "--output",
        str(tmp_path / "policy"),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    progress = pd.read_csv(tmp_path / "policy/progress.csv")
    last = progress.iloc[-1]
    # The threshold is the dataset's 90th percentile, as `ombrl uncertainty` reports it.
    assert last["halt_threshold"] == pytest.approx(stats["epistemic"]["p90"], rel=1e-5)
    assert last["halt_penalty"] == -5 and 0 <= last["rollout_halted"] <= 1
    assert np.isfinite(last["critic_loss"])
    meta = json.loads((tmp_path / "policy/eval.json").read_text())
    assert meta["config"]["threshold_rule"] == "percentile" and meta["mode"] == (
        "epistemic-partitioning"
    )
    wrong = ombrl(
        "train-policy",
        "--dataset",
        str(data),
        "--mode",
        "mbpo",
        "--ensemble",
        str(ensemble),
        "--params",
        "threshold=3",
        "--output",
        str(tmp_path / "x"),
    )
    assert_user_error(wrong, "--params threshold: unknown key")
    assert not (tmp_path / "x").exists()
