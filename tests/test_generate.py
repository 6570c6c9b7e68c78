"""Generated D4RL-style datasets: a short behaviour run on a fast task (InvertedPendulum-v5),
every quality in the D4RL layout, resume after a kill, requests that cannot be met, and the
workflow sharing one behaviour job among qualities."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest

from ombrl.config import load_study
from ombrl.data.d4rl import read_hdf5
from ombrl.data.generate import QUALITIES, generate
from ombrl.errors import OmbrlError

pytestmark = pytest.mark.slow

ENV = "InvertedPendulum-v5"
SETTINGS = {
    "env_steps": 1500,
    "warmup": 200,
    "snapshot_every": 250,
    "hidden_size": "32,32",
    "batch_size": 64,
    "eval_episodes": 2,
    "lr": 0.001,
}
#: Below what the run reaches (~70 at its end), well above the random policy (~6).
MEDIUM_RETURN = 40.0
ROWS = 400
ROOT = Path(__file__).resolve().parents[1]


def behaviour_command(output: Path, checkpoints: Path, every: int = 300) -> list[str]:
    params = [f"{k}={v}" for k, v in SETTINGS.items()]
    return [
        sys.executable, "-m", "ombrl.cli", "behaviour", "--env", ENV, "--seed", "0",
        "--params", *params, "--output", str(output), "--checkpoint-every", str(every),
        "--checkpoint-dir", str(checkpoints), "--quiet",
    ]  # fmt: skip


def job_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("behaviour")
    out = tmp / "run"
    subprocess.run(behaviour_command(out, tmp / "ck"), check=True, env=job_env())
    return out


@pytest.fixture(scope="module")
def files(run, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("datasets")
    return {
        q: generate(
            run, q, None if q == "medium-replay" else ROWS, "task", tmp / f"{q}.hdf5",
            MEDIUM_RETURN,
        )
        for q in QUALITIES
    }  # fmt: skip


def arrays(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        out = {k: f[k][:] for k in ("observations", "actions", "rewards", "next_observations")}
        out |= {k: f[k][:] for k in ("terminals", "timeouts", "infos/qpos", "infos/qvel")}
        out["metadata"] = {k: f["metadata"][k][()] for k in f["metadata"]}
    return out


def episode_returns(data: dict) -> np.ndarray:
    ends = np.flatnonzero(data["terminals"] | data["timeouts"])
    return np.array([r.sum() for r in np.split(data["rewards"], ends[:-1] + 1)])


@pytest.mark.parametrize("quality", QUALITIES)
def test_every_quality_has_the_d4rl_layout(files, quality):
    data = arrays(files[quality])
    n = len(data["rewards"])
    assert data["observations"].dtype == np.float32 and data["observations"].shape == (n, 4)
    assert data["actions"].shape == (n, 1) and data["next_observations"].shape == (n, 4)
    assert data["terminals"].dtype == bool and data["timeouts"].dtype == bool
    assert not np.any(data["terminals"] & data["timeouts"])
    assert data["terminals"][-1] or data["timeouts"][-1]  # the file ends an episode
    inside = ~(data["terminals"] | data["timeouts"])[:-1]
    np.testing.assert_array_equal(
        data["next_observations"][:-1][inside], data["observations"][1:][inside]
    )
    # qpos/qvel are the simulator state each observation was made from.
    env = gym.make(ENV).unwrapped
    env.reset(seed=0)
    for i in range(0, n, 37):
        env.set_state(data["infos/qpos"][i], data["infos/qvel"][i])
        np.testing.assert_allclose(env._get_obs(), data["observations"][i], rtol=1e-6, atol=1e-6)
    dataset = read_hdf5(files[quality])
    assert len(dataset) == n and dataset.env_id == ENV


def test_returns_rise_from_random_to_medium_to_expert(files):
    means = {q: episode_returns(arrays(files[q])).mean() for q in ("random", "medium", "expert")}
    assert means["random"] < means["medium"] < means["expert"], means


def test_medium_expert_is_medium_then_expert_and_sizes(files):
    me, m, e = (arrays(files[q]) for q in ("medium-expert", "medium", "expert"))
    for key in ("observations", "actions", "rewards", "terminals", "timeouts"):
        np.testing.assert_array_equal(me[key], np.concatenate([m[key], e[key]]))
    assert len(m["rewards"]) == ROWS and len(me["rewards"]) == 2 * ROWS


def test_medium_replay_holds_what_the_run_saw_up_to_the_medium_snapshot(run, files):
    replay = arrays(files["medium-replay"])
    medium_step = eval(replay["metadata"]["snapshots"])["medium"]["env_steps"]
    assert len(replay["rewards"]) == medium_step > SETTINGS["warmup"]
    with h5py.File(run / "replay.hdf5", "r") as f:
        seen = f["observations"][:]
        assert len(seen) == SETTINGS["env_steps"]
        np.testing.assert_array_equal(replay["observations"], seen[:medium_step])
        np.testing.assert_array_equal(replay["actions"], f["actions"][:medium_step])
    # the first `warmup` actions were uniform random in the action bounds
    assert np.abs(replay["actions"][: SETTINGS["warmup"]]).max() <= 3.0


def test_reference_scores_are_stored(run, files, tmp_path):
    meta = arrays(files["medium"])["metadata"]
    assert meta["ref_scores"] == b"task"
    assert (meta["ref_min_score"], meta["ref_max_score"]) == (
        meta["task_ref_min_score"],
        meta["task_ref_max_score"],
    )
    assert meta["task_ref_max_score"] > 900  # InvertedPendulum's scripted expert: ~1000
    assert meta["own_ref_min_score"] < meta["own_ref_max_score"] < meta["task_ref_max_score"]
    own = generate(run, "random", ROWS, "own", tmp_path / "own.hdf5", MEDIUM_RETURN)
    dataset = read_hdf5(own)
    assert (dataset.ref_min_score, dataset.ref_max_score) == (
        meta["own_ref_min_score"],
        meta["own_ref_max_score"],
    )


def test_a_medium_the_run_never_reached_fails_the_job_with_a_reason(run, tmp_path):
    with pytest.raises(OmbrlError, match="no medium snapshot.*below the medium target 500"):
        generate(run, "medium", ROWS, "task", tmp_path / "m.hdf5", 500.0)
    assert not (tmp_path / "m.hdf5").exists()


def test_a_killed_behaviour_job_resumes_to_the_same_bytes(run, tmp_path):
    out, checkpoints = tmp_path / "run", tmp_path / "ck"
    job = subprocess.Popen(behaviour_command(out, checkpoints), env=job_env())
    deadline = time.time() + 120
    while not list(checkpoints.glob("*/step-*/state.json")) and time.time() < deadline:
        time.sleep(0.2)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert not out.exists() and list(checkpoints.glob("*/step-*"))
    resumed = subprocess.run(
        behaviour_command(out, checkpoints), env=job_env(), capture_output=True, text=True
    )
    assert resumed.returncode == 0 and "resuming from step" in resumed.stderr
    assert (out / "snapshots.safetensors").read_bytes() == (
        run / "snapshots.safetensors"
    ).read_bytes()
    for key in ("observations", "actions", "rewards", "terminals", "infos/qpos"):
        with h5py.File(out / "replay.hdf5") as a, h5py.File(run / "replay.hdf5") as b:
            np.testing.assert_array_equal(a[key][:], b[key][:])


def study(datasets: dict) -> dict:
    return {"seeds": [0], "datasets": datasets, "modes": {"bc": {}}}


def generated(**keys) -> dict:
    return {"source": "generate", "env": "Hopper-v5", "quality": "medium", **keys}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (generated(env="Hopper-v4", transitions=10), "'Hopper-v4' has no reference scores"),
        (generated(quality="medium-replay", transitions=10), "medium-replay takes no"),
        (generated(), "medium needs transitions"),
        (generated(quality="best", transitions=10), "'best' is not one of"),
        (
            generated(transitions=10, behaviour={"env_steps": 1000, "snapshot_every": 1000,
                                                 "warmup": 500}),
            "leaves no snapshot between random and expert",
        ),
    ],
)  # fmt: skip
def test_requests_that_cannot_be_met_are_one_line_errors(spec, message):
    with pytest.raises(OmbrlError, match=message) as err:
        load_study(study({"d": spec}), "s.yaml")
    assert len(str(err.value).splitlines()) == 1


def test_qualities_of_one_run_must_agree_on_its_settings():
    datasets = {
        "a": generated(transitions=10),
        "b": generated(quality="expert", transitions=10, behaviour={"env_steps": 50000}),
    }
    with pytest.raises(OmbrlError, match="datasets.b: behaviour: differs from datasets.a"):
        load_study(study(datasets), "s.yaml")


def test_two_qualities_of_one_task_plan_one_behaviour_job(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        "seeds: [0]\nmodes: {bc: {steps: 10}}\ntracking_uri: none\ndatasets:\n"
        "  hop-medium: {source: generate, env: Hopper-v5, quality: medium, transitions: 100}\n"
        "  hop-replay: {source: generate, env: Hopper-v5, quality: medium-replay}\n"
        "  hop-expert: {source: generate, env: Hopper-v5, quality: expert, transitions: 100,"
        " seed: 1}\n"
    )
    for item in ("Snakefile", "workflow", "config", "notebooks", "envs"):
        if (ROOT / item).exists():
            os.symlink(ROOT / item, tmp_path / item)
    snakemake = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
    plan = subprocess.run(
        [snakemake, "-n", "--quiet", "rules", "--configfile", str(config), "-d", str(tmp_path),
         "-s", str(ROOT / "Snakefile")],
        env=job_env(), capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    counts = dict(line.split()[:2] for line in plan.stdout.splitlines() if len(line.split()) == 2)
    assert counts["behaviour"] == "2"  # seeds 0 and 1; seed 0 shared by medium and replay
    assert counts["generate_dataset"] == "3"
