"""Nothing silent, nothing lost: every user mistake and failing disk or store the CLI meets is
one `ombrl: error:` line with exit code 2 (or, for tracking, one warning and a finished job),
and no partial output is left behind.

The verbs run in-process through `ombrl.cli.main` (a subprocess costs seconds of imports per
case); every dataset is a few hundred random rows of InvertedPendulum-v5's shape.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ombrl import runtime
from ombrl.checkpoint import job_checkpointer
from ombrl.cli import main
from ombrl.evaluate import continuous_spaces
from ombrl.models.ensemble import DynamicsEnsemble, save_ensemble
from ombrl.tracking import MlflowRun, resolve_tracking_uri

pytestmark = pytest.mark.slow

ROWS, EPISODE = 400, 100
RUN = ["--quiet", "--tracking-uri", "none"]
BC = ["--mode", "bc", "--eval-every", "10", "--eval-episodes", "1", *RUN]
BC += ["--params", "steps=20", "hidden_size=16"]
TINY = ["--params", "num_models=2", "num_elites=1", "hidden_size=16", "fit_epochs=2"]
ENSEMBLE = [*RUN, *TINY]


def write_dataset(path: Path, env: str | None = "InvertedPendulum-v5", edit=None, obs=4, act=1):
    """ROWS random transitions in episodes of EPISODE rows (timeouts), D4RL layout; `edit`
    changes the arrays first; `env` None writes no metadata at all."""
    rng = np.random.default_rng(0)
    arrays = {
        "observations": rng.normal(size=(ROWS, obs)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(ROWS, act)).astype(np.float32),
        "rewards": rng.normal(size=ROWS).astype(np.float32),
        "terminals": np.zeros(ROWS, bool),
        "timeouts": np.arange(ROWS) % EPISODE == EPISODE - 1,
    }
    arrays["next_observations"] = arrays["observations"] + 0.1 * arrays["observations"]
    if edit is not None:
        edit(arrays)
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
        if env is not None:
            meta = f.create_group("metadata")
            meta.attrs.update({"env_id": env, "ref_min_score": 0.0, "ref_max_score": 1000.0})
    return path


def put(key: str, row: int, value: float):
    def edit(arrays):
        arrays[key][row] = value

    return edit


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    paths = {
        "good": write_dataset(root / "good.hdf5"),
        "nan_obs": write_dataset(root / "nan_obs.hdf5", edit=put("observations", 17, np.nan)),
        "inf_rew": write_dataset(root / "inf_rew.hdf5", edit=put("rewards", 250, np.inf)),
        "nan_act": write_dataset(root / "nan_act.hdf5", edit=put("actions", 5, np.nan)),
        "nan_next": write_dataset(
            root / "nan_next.hdf5", edit=put("next_observations", 99, -np.inf)
        ),
        "nometa": write_dataset(root / "nometa.hdf5", env=None),
        "afile": root / "afile",
        "afolder": root / "afolder",
        "binary": root / "binary.yaml",
        "progress_nan": root / "progress_nan.csv",
        "nan_ensemble": root / "nan_ensemble",
    }
    paths["dup_study"] = root / "dup.yaml"
    paths["dup_study"].write_text(
        "seeds: [0]\nmodes:\n  bc: {}\ndatasets:\n  a: {source: collect, env: Hopper-v5, "
        "policy: random, transitions: 10}\n# the second block replaced the first in silence\n"
        "modes:\n  sac: {}\n"
    )
    paths["bad_collect"] = root / "bad_collect.yaml"
    paths["bad_collect"].write_text(
        "seeds: [0]\nmodes: {bc: {}}\ndatasets:\n  a: {source: collect, env: Hopper-v5, "
        "policy: expert, transitions: 10}\n"
    )
    paths["afile"].write_text("x")
    paths["afolder"].mkdir()
    paths["binary"].write_bytes(bytes(range(256)) * 4)
    header = "dataset,mode,method,seed,step,return,normalized_score\n"
    paths["progress_nan"].write_text(header + "d,bc,bc,0,0,1.0,0.1\nd,bc,bc,0,10,nan,nan\n")
    torch.manual_seed(0)
    model = DynamicsEnsemble(4, 1, [8], 2, True, "swish", False)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    save_ensemble(model, paths["nan_ensemble"], {})
    return paths


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `ombrl ARGV` run in this process."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def leftovers(folder: Path) -> list[str]:
    """Files a failed job may have left: scratch folders and temporary files."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".part"]


# (id, argv with {name} placeholders for `files` and {out} for a fresh folder, expected line)
CASES = [
    (
        "nan-observation-inspect",
        ["dataset", "inspect", "{nan_obs}"],
        "nan_obs.hdf5: key 'observations' has a non-finite value (nan) at row 17 (1 rows in "
        "all); fix the file or pass --drop-nonfinite to drop the affected episodes",
    ),
    (
        "inf-reward-train-ensemble",
        ["train-ensemble", "--dataset", "{inf_rew}", "--output", "{out}/ens", *ENSEMBLE],
        "inf_rew.hdf5: key 'rewards' has a non-finite value (inf) at row 250",
    ),
    (
        "nan-action-train-policy",
        ["train-policy", "--dataset", "{nan_act}", *BC, "--output", "{out}/pol"],
        "nan_act.hdf5: key 'actions' has a non-finite value (nan) at row 5",
    ),
    (
        "inf-next-observation-uncertainty",
        ["uncertainty", "--dataset", "{nan_next}", "--ensemble", "{nan_ensemble}", "--json"],
        "nan_next.hdf5: key 'next_observations' has a non-finite value (-inf) at row 99",
    ),
    (
        "nan-statistics-uncertainty",
        ["uncertainty", "--dataset", "{good}", "--ensemble", "{nan_ensemble}", "--json"],
        "uncertainty is non-finite for 400 of 400 transitions (first: transition 0)",
    ),
    (
        "policy-diverges",
        ["train-policy", "--dataset", "{good}", *BC, "lr=1e30", "--output", "{out}/pol"],
        "training turned non-finite at update",
    ),
    (
        "ensemble-diverges",
        ["train-ensemble", "--dataset", "{good}", "--output", "{out}/ens", *ENSEMBLE, "lr=1e30"],
        "ensemble training turned non-finite at epoch 1",
    ),
    (
        "nan-progress-scores",
        ["scores", "{progress_nan}", "--output", "{out}/s.csv", "--final", "{out}/f.csv"],
        "progress_nan.csv: column 'return' is not a finite number at row 2",
    ),
    (
        "output-is-a-file",
        ["train-policy", "--dataset", "{good}", *BC, "--output", "{afile}"],
        "--output {afile}: is an existing file, not a folder",
    ),
    (
        "csv-folder-missing",
        [
            "train-ensemble",
            "--dataset",
            "{good}",
            "--output",
            "{out}/ens",
            "--csv",
            "{out}/missing/m.csv",
            *ENSEMBLE,
        ],
        "--csv {out}/missing/m.csv: folder {out}/missing does not exist",
    ),
    (
        "scores-final-is-a-folder",
        ["scores", "{progress_nan}", "--output", "{out}/s.csv", "--final", "{afolder}"],
        "--final {afolder}: {afolder} is a folder, not a file",
    ),
    (
        "collect-output-is-a-folder",
        [
            "collect",
            "--env",
            "InvertedPendulum-v5",
            "--policy",
            "random",
            "--transitions",
            "10",
            "--output",
            "{afolder}",
        ],
        "--output {afolder}: is a folder, not a file",
    ),
    (
        "tracking-uri-unknown-scheme",
        [
            "train-ensemble",
            "--dataset",
            "{good}",
            "--output",
            "{out}/ens",
            *ENSEMBLE,
            "--tracking-uri",
            "foo://bar",
        ],
        "tracking URI 'foo://bar': expected sqlite:///PATH",
    ),
    (
        "tracking-uri-sqlite-two-slashes",
        [
            "train-policy",
            "--dataset",
            "{good}",
            *BC,
            "--output",
            "{out}/pol",
            "--tracking-uri",
            "sqlite://mlflow.db",
        ],
        "tracking URI 'sqlite://mlflow.db': expected sqlite:///PATH",
    ),
    (
        "no-environment-for-policy",
        ["train-policy", "--dataset", "{nometa}", *BC, "--output", "{out}/pol"],
        "nometa.hdf5: unknown environment: no metadata/env_id and 'nometa' is not a D4RL name; "
        "pass --env ENV_ID",
    ),
    # item 4: argparse ranges, environments, unreadable configs, absurd sizes
    (
        "negative-seed",
        ["train-ensemble", "--dataset", "{good}", "--output", "{out}/ens", "--seed", "-1"],
        "ombrl train-ensemble: argument --seed: -1 must be at least 0",
    ),
    (
        "zero-threads",
        ["train-policy", "--dataset", "{good}", *BC, "--output", "{out}/pol", "--threads", "0"],
        "ombrl train-policy: argument --threads: 0 must be at least 1",
    ),
    (
        "negative-eval-seed",
        ["train-policy", "--dataset", "{good}", "--eval-seed", "-1", *BC, "--output", "{out}/p"],
        "ombrl train-policy: argument --eval-seed: -1 must be at least 0",
    ),
    (
        "discrete-actions",
        ["train-policy", "--env", "CartPole-v1", "--mode", "sac", "--output", "{out}/pol"],
        "argument --env: 'CartPole-v1' has Discrete actions; ombrl needs continuous vectors",
    ),
    (
        "unknown-env",
        [
            "collect",
            "--env",
            "Nope-v9",
            "--policy",
            "random",
            "--transitions",
            "10",
            "--output",
            "{out}/d.hdf5",
        ],
        "argument --env: cannot make 'Nope-v9'",
    ),
    (
        "check-config-on-a-folder",
        ["check-config", "{afolder}"],
        "{afolder}: is a folder, not a config file",
    ),
    (
        "check-config-on-a-binary-file",
        ["check-config", "{binary}"],
        "{binary}: not a text file (byte 128 is not UTF-8)",
    ),
    (
        "absurd-ensemble-hidden-size",
        [
            "train-ensemble",
            "--dataset",
            "{good}",
            "--output",
            "{out}/ens",
            "--params",
            "hidden_size=100000,100000",
            "num_models=2",
            "num_elites=1",
        ],
        "--params: hidden_size: [100000, 100000] x 2 member(s) needs at least 298 GiB",
    ),
    (
        "absurd-policy-hidden-size",
        [
            "train-policy",
            "--dataset",
            "{good}",
            *BC,
            "hidden_size=100000,100000",
            "--output",
            "{out}/pol",
        ],
        "--params for mode bc: hidden_size: [100000, 100000] x 1 member(s) needs at least 149 GiB",
    ),
    # item 2: duplicate keys, and what a job would refuse, checked when the study loads
    (
        "duplicate-yaml-key",
        ["check-config", "{dup_study}"],
        "{dup_study}: duplicate key 'modes' at lines 2 and 7 (only the last would be used)",
    ),
    (
        "collect-env-and-controller",
        ["check-config", "{bad_collect}"],
        "{bad_collect}: datasets.a.policy: Hopper-v5 has no 'expert' controller (random)",
    ),
    (
        "holdout-ratio-zero",
        ["train-ensemble", "--dataset", "{good}", "--output", "{out}/e", "--holdout-ratio", "0"],
        "--params: snapshot: 'mse' picks an epoch by a holdout metric, and holdout_ratio: 0 "
        "leaves no holdout; use last",
    ),
]


def test_pendulum_stays_valid_for_online_sac():
    obs_space, act_space = continuous_spaces("Pendulum-v1")
    assert (obs_space.shape, act_space.shape) == ((3,), (1,))


@pytest.mark.parametrize(("argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_mistake_is_one_line_and_leaves_nothing(
    argv, expected, files, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the flags' own URIs are what is tested
    names = {key: str(path) for key, path in files.items()} | {"out": str(tmp_path)}
    argv = [arg.format(**names) for arg in argv]
    code, _, err = run_cli(argv, capsys)
    assert (code, err.count("\n")) == (2, 1), err
    assert err.startswith("ombrl: error: ") and expected.format(**names) in err, err
    assert list(tmp_path.iterdir()) == [], "a failed job left outputs behind"
    assert leftovers(files["afolder"].parent) == []


def test_drop_nonfinite_drops_whole_episodes_and_says_so(files, tmp_path, capsys):
    argv = ["train-policy", "--dataset", str(files["nan_act"]), *BC, "--drop-nonfinite"]
    code, _, err = run_cli([*argv, "--output", str(tmp_path / "pol")], capsys)
    assert code == 0, err
    assert "nan_act.hdf5: dropped 1 of 4 episodes (100 rows) holding non-finite values" in err
    assert (tmp_path / "pol" / "policy.safetensors").is_file()
    argv = ["dataset", "inspect", str(files["nan_obs"]), "--drop-nonfinite"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert json.loads(out)["transitions"] == ROWS - EPISODE


def test_d4rl_server_names_and_files_without_metadata(tmp_path, capsys):
    """A file as the d4rl package caches it is a D4RL dataset; one without metadata is read by
    the stages that never act in an environment, and by the others given --env."""
    hopper = {"obs": 11, "act": 3, "env": None}
    served = write_dataset(tmp_path / "hopper_medium-v2.hdf5", **hopper)
    code, out, err = run_cli(["dataset", "inspect", str(served)], capsys)
    summary = json.loads(out)
    assert code == 0, err
    assert (summary["env_id"], summary["ref_max_score"], summary["notes"]) == (
        "Hopper-v4",
        3234.3,
        [],
    )
    mystery = write_dataset(tmp_path / "mystery.hdf5", **hopper)
    code, out, err = run_cli(["dataset", "inspect", str(mystery)], capsys)
    summary = json.loads(out)
    assert code == 0, err
    assert summary["env_id"] is None
    assert any("reference scores unknown" in note for note in summary["notes"])
    argv = ["train-ensemble", "--dataset", str(mystery), "--output", str(tmp_path / "ens")]
    code, _, err = run_cli([*argv, *ENSEMBLE], capsys)
    assert code == 0, err
    assert (tmp_path / "ens" / "model.safetensors").is_file()
    argv = ["train-policy", "--dataset", str(mystery), "--env", "Hopper-v4", *BC]
    code, _, err = run_cli([*argv, "--output", str(tmp_path / "pol")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "pol" / "eval.json").read_text())["env_id"] == "Hopper-v4"


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_tracking_server_warns_in_seconds_and_the_job_trains(
    files, tmp_path, capsys, monkeypatch
):
    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")  # restored afterwards
    out = tmp_path / "ens"
    start = time.monotonic()
    code, _, err = run_cli(
        ["train-ensemble", "--dataset", str(files["good"]), "--output", str(out), "--quiet", *TINY],
        capsys,
    )
    assert code == 0, err
    assert time.monotonic() - start < 60
    assert err.count("\n") == 1 and err.startswith("ombrl: warning: tracking stopped"), err
    assert "Connection refused" in err or "Max retries" in err, err
    assert (out / "model.safetensors").is_file()
    assert "Connection refused" in (out / "TRACKING_INCOMPLETE").read_text()


@pytest.fixture
def small_disk(tmp_path):
    """Mount a tmpfs of the given size (and options) under tmp_path; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: str, options: str = "") -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        opts = f"size={size}" + (f",{options}" if options else "")
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here: {result.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        # lazy: the MLflow client may still hold its SQLite file open in this process
        subprocess.run(["umount", "--lazy", str(point)], check=False)


def fill(disk: Path) -> None:
    """Write until the disk is full."""
    try:
        with open(disk / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError:
        pass


def test_collect_on_a_full_disk_is_one_line_and_leaves_no_file(small_disk, capsys):
    disk = small_disk("16k")
    argv = ["collect", "--env", "InvertedPendulum-v5", "--policy", "random"]
    code, _, err = run_cli([*argv, "--transitions", "2000", "--output", f"{disk}/d.hdf5"], capsys)
    assert (code, err.count("\n")) == (2, 1), err
    assert f"--output {disk}/d.hdf5: cannot write (No space left on device)" in err, err
    assert list(disk.iterdir()) == []


def test_policy_outputs_on_a_full_disk_are_one_line_and_leave_nothing(files, small_disk, capsys):
    disk = small_disk("64k")  # a 256 x 256 policy is ~300 kB of weights
    argv = ["train-policy", "--dataset", str(files["good"]), *BC, "hidden_size=256,256"]
    code, _, err = run_cli([*argv, "--output", f"{disk}/pol"], capsys)
    assert (code, err.count("\n")) == (2, 1), err
    expected = f"{disk}/pol: cannot write the outputs (No space left on device); nothing written"
    assert expected in err, err
    assert list(disk.iterdir()) == []


def test_read_only_output_fails_before_training(files, small_disk, capsys):
    disk = small_disk("1m", "ro")
    argv = ["train-policy", "--dataset", str(files["good"]), *BC]
    code, _, err = run_cli([*argv, "--output", f"{disk}/pol"], capsys)
    assert (code, err.count("\n")) == (2, 1), err
    assert f"--output {disk}/pol: cannot write in {disk} (Read-only file system)" in err, err


def test_tracking_store_on_a_full_disk_still_writes_the_model(
    files, small_disk, tmp_path, capsys, monkeypatch
):
    disk = small_disk("8m")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{disk}/mlflow.db")
    code, _, err = run_cli(["tracking-init"], capsys)
    assert code == 0, err
    fill(disk)
    out, csv = tmp_path / "ens", tmp_path / "metrics.csv"
    argv = ["train-ensemble", "--dataset", str(files["good"]), "--output", str(out)]
    code, _, err = run_cli([*argv, "--csv", str(csv), "--quiet", *TINY], capsys)
    assert code == 0, err
    assert err.count("\n") == 1 and err.startswith("ombrl: warning: tracking stopped"), err
    assert "full" in err or "disk" in err, err
    assert (out / "model.safetensors").is_file() and csv.is_file()
    assert (out / "TRACKING_INCOMPLETE").read_text().strip()


def test_workflow_refuses_a_study_with_a_duplicated_key(tmp_path):
    """Snakemake's loader keeps the last of two `seeds:`; the workflow's load says so."""
    root = Path(__file__).resolve().parents[1]
    study = (root / ".test/config_tiny/config.yaml").read_text()
    path = tmp_path / "study.yaml"
    path.write_text(study + "seeds: [1]\n")
    line = len(study.splitlines()) + 1
    result = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "-n", "--configfile", str(path)],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert f"duplicate key 'seeds' at lines 2 and {line}" in result.stderr, result.stderr


def saved_checkpoint(root: Path, output: Path, code: str, monkeypatch) -> Path:
    """A checkpoint of a job writing `output`, saved at step 5 by code version `code`."""
    monkeypatch.setattr(runtime, "code_version", lambda: code)
    checkpointer = job_checkpointer(str(root), 5, {"command": "test"}, 0, 1, output)
    checkpointer.save(5, {"w": torch.zeros(2)}, {"progress": 5})
    monkeypatch.undo()
    return checkpointer.directory


def test_rerun_after_a_code_edit_says_it_starts_over_and_removes_the_old_state(
    tmp_path, capsys, monkeypatch
):
    output = tmp_path / "pol"
    old = saved_checkpoint(tmp_path / "ckpt", output, "1.0+old", monkeypatch)
    capsys.readouterr()
    monkeypatch.setattr(runtime, "code_version", lambda: "1.0+new")
    fresh = job_checkpointer(str(tmp_path / "ckpt"), 5, {"command": "test"}, 0, 1, output)
    err = capsys.readouterr().err
    assert fresh.directory != old and not old.exists()
    assert err.count("\n") == 1, err
    assert (
        f"ombrl: the checkpoint of {output} at step 5 ({old}) is stale (saved by code 1.0+old, "
        "now 1.0+new); starting over and removing it"
    ) in err
    assert fresh.load() is None


def test_checkpoints_verb_lists_and_cleans_stale_ones(tmp_path, capsys, monkeypatch):
    root = tmp_path / "ckpt"
    stale = saved_checkpoint(root, tmp_path / "a", "1.0+old", monkeypatch)
    current = saved_checkpoint(root, tmp_path / "b", runtime.code_version(), monkeypatch)
    capsys.readouterr()
    assert main(["checkpoints", "--checkpoint-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"{root}: 2 checkpoints, 1 stale (--clean removes them)" in out, out
    assert f"{tmp_path / 'a'}  (stale: saved by code 1.0+old, now " in out, out
    assert f"{tmp_path / 'b'}  (resumable)" in out, out
    assert main(["checkpoints", "--checkpoint-dir", str(root), "--clean"]) == 0
    assert not stale.exists() and current.exists()


def test_store_that_fills_mid_run_gives_one_warning_and_stops_tracking(
    small_disk, capsys, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # it would win over the store under test
    disk = small_disk("8m")
    run = MlflowRun(resolve_tracking_uri(f"sqlite:///{disk}/mlflow.db"), "e", "r", {}, {"a": 1})
    assert run.error is None
    fill(disk)
    for step in range(200):
        run.log({f"metric{i}": float(i) for i in range(50)}, step)
    run.finish()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ombrl: warning: tracking stopped"), err
    assert "database or disk is full" in run.error, run.error
