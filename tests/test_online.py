"""Online SAC (`ombrl.methods.sac`, `ombrl train-policy --env`): the learner learns when it acts."""

import json

import pandas as pd
import pytest
import torch
from test_cli import assert_user_error, ombrl

from ombrl.config import resolve_mode
from ombrl.methods import Inputs
from ombrl.methods.sac import train
from ombrl.training.loop import Evaluation

pytestmark = pytest.mark.slow


def test_solves_pendulum_within_a_fixed_budget() -> None:
    """1000 random steps, then 6000 steps with one update each: from about -1400 (the untrained
    policy) to above -300 over 10 evaluation episodes (about -170 to -200 with seeds 0 to 3)."""
    records: list[dict] = []
    cfg = resolve_mode(
        "sac", {"steps": 6000, "hidden_size": [64, 64], "batch_size": 128, "lr": 1e-3}, "test"
    )
    evaluation = Evaluation(every=3000, episodes=10, seed=100000)
    inputs = Inputs(
        "Pendulum-v1", None, None, 0, torch.device("cpu"), evaluation, False, warmup=1000
    )
    train("sac", cfg, inputs, records.append)
    assert [r["step"] for r in records] == [0, 3000, 6000]
    assert records[0]["return"] < -1000
    assert records[-1]["return"] > -300
    assert records[-1]["env_steps"] == 7000
    assert records[-1]["train_return"] > records[1]["train_return"]


def test_cli_runs_are_reproducible_and_tracked(tmp_path, tracking_store) -> None:
    from mlflow.tracking import MlflowClient

    def run(name: str, seed: str) -> pd.DataFrame:
        result = ombrl(
            "train-policy",
            "--env",
            "Pendulum-v1",
            "--mode",
            "sac",
            "--params",
            "steps=40",
            "hidden_size=16,16",
            "batch_size=32",
            "--warmup",
            "100",
            "--eval-every",
            "20",
            "--eval-episodes",
            "1",
            "--seed",
            seed,
            "--output",
            str(tmp_path / name),
            "--quiet",
        )
        assert result.returncode == 0, result.stderr
        return pd.read_csv(tmp_path / name / "progress.csv")

    first, again, other = run("a", "0"), run("b", "0"), run("c", "1")
    pd.testing.assert_frame_equal(first, again)
    assert not first["critic_loss"].equals(other["critic_loss"])
    assert list(first["step"]) == [0, 20, 40]
    assert list(first["env_steps"].dropna()) == [120, 140]
    assert "normalized_score" not in first  # Pendulum has no reference scores
    meta = json.loads((tmp_path / "a/eval.json").read_text())
    assert meta["env_id"] == "Pendulum-v1" and meta["warmup"] == 100
    client = MlflowClient(tracking_uri=tracking_store)
    runs = client.search_runs(
        [client.get_experiment_by_name("online").experiment_id],
        "tags.env = 'Pendulum-v1' and tags.seed = '0'",
    )
    assert len(runs) >= 2
    history = client.get_metric_history(runs[0].info.run_id, "return")
    assert [m.step for m in history] == [0, 20, 40]


ENV = ["--env", "Pendulum-v1"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        ([*ENV, "--mode", "bc"], "--env trains online, which only --mode sac does, not bc"),
        (
            [*ENV, "--mode", "sac", "--warmup", "10"],
            "warmup: 10 steps and 0 kept transitions cannot fill a batch of 256",
        ),
        (  # with --dataset, --env names the data's environment: offline, the file is read
            [*ENV, "--mode", "sac", "--dataset", "d.hdf5"],
            "d.hdf5: no such dataset file",
        ),
        (
            ["--dataset", "d.hdf5", "--mode", "sac", "--warmup", "500"],
            "--warmup: random steps of online training, only with --env",
        ),
    ],
)
def test_online_mistakes_are_one_line_errors(args, fragment, tmp_path) -> None:
    result = ombrl("train-policy", *args, "--output", "x", "--quiet", cwd=tmp_path)
    assert_user_error(result, fragment)
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "x").exists()
