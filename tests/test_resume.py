"""Killed jobs resume: SIGKILL the real CLI mid-run, rerun the same command, get the same bytes.

Each scenario runs the job once without interruption (in this process, through `main`), once in
a subprocess killed with SIGKILL as soon as a checkpoint is on disk, and once more (a fresh
process, as a cluster restarts it) with the same command line, which must resume and end with
byte-identical model files and the same metric rows (wall-clock columns aside). The jobs are
small but have many short steps, so the kill lands well before the end (asserted: the killed
process must not have exited on its own).
"""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from ombrl.checkpoint import Checkpointer, checkpoint_root, job_key
from ombrl.cli import main
from ombrl.data.collect import collect

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
OMBRL = str(Path(sys.executable).parent / "ombrl")
ENSEMBLE_PARAMS = [
    "num_models=3",
    "num_elites=2",
    "hidden_size=24,24",
    "batch_size=16",
    "fit_epochs=80",
    "patience=10",
    "lr=0.003",
    "scheduler_gamma=0.85",
    "bootstrap=true",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pendulum.hdf5"
    return collect("InvertedPendulum-v5", "medium", 1200, seed=3, path=path, ref_episodes=2)


@pytest.fixture(scope="module")
def ensemble(dataset, tmp_path_factory) -> Path:
    """A tiny trained probabilistic ensemble for the MOPO scenario."""
    out = tmp_path_factory.mktemp("ensemble")
    params = ["num_models=3", "num_elites=2", "hidden_size=16,16", "fit_epochs=2"]
    assert main(ensemble_argv(dataset, out, out / "ckpt", every=0, params=params)) == 0
    return out / "model"


def ensemble_argv(
    dataset: Path, out: Path, root: Path, every: int = 2, params: list[str] = ENSEMBLE_PARAMS
) -> list[str]:
    return [
        "train-ensemble",
        "--dataset",
        str(dataset),
        "--config",
        str(ROOT / "config/ensembles/pnn.yaml"),
        "--output",
        str(out / "model"),
        "--checkpoint-dir",
        str(root),
        "--checkpoint-every",
        str(every),
        "--quiet",
        "--params",
        *params,
    ]


def policy_argv(dataset: Path, out: Path, root: Path, mode: str, every: int, *extra: str):
    return [
        "train-policy",
        "--dataset",
        str(dataset),
        "--mode",
        mode,
        "--output",
        str(out / "policy"),
        "--checkpoint-dir",
        str(root),
        "--checkpoint-every",
        str(every),
        "--eval-episodes",
        "2",
        "--device",
        "cpu",
        "--quiet",
        *extra,
    ]


def states(root: Path) -> list[Path]:
    """Complete saved states (state.json is written last), oldest first."""
    return sorted(root.glob("*/step-*/state.json"))


def newest_step(root: Path) -> int:
    """Step of the newest complete state (0: none), from its folder name: a running job may
    remove an older folder between a listing and a read."""
    found = states(root)
    return int(found[-1].parent.name.removeprefix("step-")) if found else 0


def run_killed(argv: list[str], root: Path, min_step: int = 1) -> int:
    """Run the CLI in a subprocess, SIGKILL it once a state of `min_step` or later is saved;
    return the newest saved step."""
    process = subprocess.Popen(
        [OMBRL, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while newest_step(root) < min_step:
        assert process.poll() is None, f"ended before step {min_step}: {process.stderr.read()}"
        assert time.monotonic() < deadline, f"no checkpoint of step {min_step} within 60 s"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL, "the job ended before the kill landed"
    # Normally one state; two if the kill fell between a save and the removal of the older.
    return newest_step(root)


def run_cli(argv: list[str]) -> subprocess.CompletedProcess:
    """The same command again, as a fresh process (as a cluster would restart it)."""
    result = subprocess.run([OMBRL, *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def assert_same_outputs(a: Path, b: Path, tensors: str, csv: str) -> None:
    assert (a / tensors).read_bytes() == (b / tensors).read_bytes()
    frames = [pd.read_csv(d / csv).drop(columns="seconds", errors="ignore") for d in (a, b)]
    pd.testing.assert_frame_equal(*frames)


def test_killed_ensemble_fit_resumes_to_the_same_bytes(dataset, tmp_path, capsys):
    root = tmp_path / "ckpt"
    assert main(ensemble_argv(dataset, tmp_path / "reference", root)) == 0
    assert not list(root.iterdir()), "a finished job leaves no checkpoint behind"
    # The reference stopped early; kill within its last `patience` epochs, where no member
    # improves, so the early-stopping counters in the checkpoint decide when the resumed job
    # stops.
    stop = len(pd.read_csv(tmp_path / "reference/model/metrics.csv"))
    assert stop < 80, "the reference run should stop early"

    resumed = tmp_path / "resumed"
    argv = ensemble_argv(dataset, resumed, root)
    step = run_killed(argv, root, min_step=stop - 10 + 1)
    assert step % 2 == 0 and step < stop
    assert not (resumed / "model").exists()

    # A changed job (fewer epochs) has another key: it starts afresh and leaves the killed
    # job's checkpoint alone.
    changed = ensemble_argv(dataset, resumed, root, params=[*ENSEMBLE_PARAMS, "fit_epochs=3"])
    saved = states(root)
    capsys.readouterr()
    assert main(changed) == 0
    assert "resuming" not in capsys.readouterr().err
    assert len(pd.read_csv(resumed / "model/metrics.csv")) == 3
    assert states(root) == saved

    result = run_cli(argv)
    assert f"resuming from step {step} " in result.stderr
    assert_same_outputs(
        tmp_path / "reference/model", resumed / "model", "model.safetensors", "metrics.csv"
    )
    metrics = pd.read_csv(resumed / "model/metrics.csv")
    assert list(metrics["epoch"]) == list(range(1, stop + 1))
    reference_meta = json.loads((tmp_path / "reference/model/model.json").read_text())["meta"]
    resumed_meta = json.loads((resumed / "model/model.json").read_text())["meta"]
    assert reference_meta["elites"] == resumed_meta["elites"]
    assert reference_meta["best_epoch"] == resumed_meta["best_epoch"]
    assert not states(root) and not list(root.iterdir())


@pytest.mark.parametrize(
    ("mode", "params", "every"),
    [
        ("bc", ["steps=1500", "hidden_size=32,32", "batch_size=32"], 350),
        # An odd interval: the checkpoint falls between two of TD3+BC's delayed actor steps.
        ("td3-bc", ["steps=900", "hidden_size=32,32", "batch_size=32"], 175),
        ("iql", ["steps=900", "hidden_size=32,32", "batch_size=32"], 350),
        ("cql", ["steps=600", "hidden_size=32,32", "batch_size=32", "n_actions=4"], 250),
        (
            "aleatoric-penalty",
            [
                "steps=900",
                "hidden_size=32,32",
                "batch_size=32",
                "rollout_length=3",
                "real_ratio=0.25",
            ],
            130,
        ),
    ],
)
def test_killed_policy_training_resumes_to_the_same_bytes(
    mode, params, every, dataset, ensemble, tmp_path
):
    root = tmp_path / "ckpt"
    extra = ["--eval-every", "200", "--params", *params]
    if mode == "aleatoric-penalty":
        extra = ["--ensemble", str(ensemble), *extra]
    # Checkpoints fall between evaluations, so the metric sums since the last evaluation are
    # part of the saved state; for MOPO no rollout round (steps 1, 201, ...) falls between the
    # checkpoint (130) and the next evaluation (200), so that one reports the restored
    # statistics of the last round.
    assert main(policy_argv(dataset, tmp_path / "reference", root, mode, every, *extra)) == 0
    resumed = tmp_path / "resumed"
    argv = policy_argv(dataset, resumed, root, mode, every, *extra)
    step = run_killed(argv, root)
    assert step % every == 0 and step > 0
    assert not (resumed / "policy").exists()

    result = run_cli(argv)
    assert f"resuming from step {step} " in result.stderr
    reference = tmp_path / "reference/policy"
    assert_same_outputs(reference, resumed / "policy", "policy.safetensors", "progress.csv")
    assert (reference / "eval.json").read_text() == (resumed / "policy/eval.json").read_text()
    assert not list(root.iterdir())


def test_unreadable_checkpoints_are_skipped_with_a_warning(tmp_path, capsys):
    """A bad newest state falls back to an older one; none readable: start over (None)."""
    ckpt = Checkpointer(tmp_path, {"command": "test", "seed": 0}, every=2)
    assert not ckpt.due(1) and ckpt.due(4)
    ckpt.save(2, {"w": torch.full((3,), 2.0)}, {"rows": [2]})
    older = ckpt.directory / "step-000000002"
    shutil.copytree(older, tmp_path / "kept")
    ckpt.save(4, {"w": torch.full((3,), 4.0)}, {"rows": [2, 4]})
    assert not older.exists(), "a new state replaces the older one"
    shutil.copytree(tmp_path / "kept", older)  # as if killed before the older was removed

    state = ckpt.load()
    assert state is not None and state.step == 4 and state.meta == {"rows": [2, 4]}
    assert torch.equal(state.tensors["w"], torch.full((3,), 4.0))
    assert "resuming from step 4" in capsys.readouterr().err

    newest = ckpt.directory / "step-000000004/state.safetensors"
    blob = bytearray(newest.read_bytes())
    blob[-1] ^= 0xFF
    newest.write_bytes(bytes(blob))
    state = ckpt.load()
    err = capsys.readouterr().err
    assert state is not None and state.step == 2 and state.meta == {"rows": [2]}
    assert "warning: ignoring unreadable checkpoint" in err and "sha256" in err

    (older / "state.json").write_text("{not json")
    assert ckpt.load() is None
    assert capsys.readouterr().err.count("warning: ignoring") == 2

    # A state copied in from another job is not resumed either.
    other = Checkpointer(tmp_path, {"command": "test", "seed": 1}, every=2)
    other.save(2, {"w": torch.zeros(3)}, {})
    ckpt.clear()
    shutil.copytree(other.directory, ckpt.directory)
    assert ckpt.load() is None
    assert "saved by another job" in capsys.readouterr().err
    ckpt.clear()
    assert not ckpt.directory.exists() and other.directory.exists()


def test_global_generators_are_restored(tmp_path):
    """Generators outside the loops' own (torch, numpy, random) come back as they were."""
    import random

    import numpy as np

    ckpt = Checkpointer(tmp_path, {"job": 1}, every=1)
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    ckpt.save(1, {}, {})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    assert ckpt.load() is not None
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0])
    np.testing.assert_array_equal(expected[1], again[1])
    assert expected[2] == again[2]


def test_key_covers_every_identity_field_and_root_defaults(monkeypatch, tmp_path):
    base = {"command": "train-ensemble", "config": {"lr": 0.001}, "seed": 0, "threads": 1}
    assert job_key(base) == job_key(dict(reversed(base.items())))
    for change in ({"seed": 1}, {"threads": 2}, {"config": {"lr": 0.002}}):
        assert job_key({**base, **change}) != job_key(base)
    monkeypatch.delenv("OMBRL_CHECKPOINT_DIR", raising=False)
    assert checkpoint_root(None) == Path(".checkpoints")
    monkeypatch.setenv("OMBRL_CHECKPOINT_DIR", str(tmp_path))
    assert checkpoint_root(None) == tmp_path
    assert checkpoint_root("elsewhere") == Path("elsewhere")


def test_negative_checkpoint_every_is_a_user_error(dataset, tmp_path, capsys):
    argv = ensemble_argv(dataset, tmp_path, tmp_path / "ckpt", every=-1)
    with pytest.raises(SystemExit) as exit_:  # argparse's range check, before any work
        main(argv)
    assert exit_.value.code == 2
    assert "argument --checkpoint-every: -1 must be at least 0" in capsys.readouterr().err
