"""Rerun fingerprints are read from the imports: checked against what real jobs import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import TINY_ENSEMBLE

from ombrl.fingerprint import PACKAGE_DIR, dynamic_imports, job_files, module_file

pytestmark = pytest.mark.slow

# Runs `ombrl ARGS` in-process and, at exit, writes the `ombrl` modules it imported.
PROBE = """
import atexit, json, sys
out = sys.argv[1]
atexit.register(lambda: json.dump(sorted(m for m in sys.modules if m.startswith("ombrl")),
                                  open(out, "w")))
from ombrl.cli import main

sys.exit(main(sys.argv[2:]))
"""


def imported_by(tmp_path: Path, *args: str) -> list[str]:
    """The `ombrl` modules in `sys.modules` when `ombrl ARGS` ends (it must succeed)."""
    out = tmp_path / "modules.json"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE,
            str(out),
            *args,
            *(["--quiet"] if args[0] != "scores" else []),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        # PYTHONPATH kept: a worktree's sources must win over an editable install elsewhere.
        env={"MLFLOW_TRACKING_URI": "none", "PATH": "/usr/bin:/bin"}
        | {k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(out.read_text())


def assert_covered(modules: list[str], stage: str, method: str | None = None) -> None:
    files = set(job_files(stage, method))
    missing = [m for m in modules if module_file(m) not in files]
    assert not missing, f"{stage} {method}: imported but not fingerprinted: {missing}"


def test_every_module_a_real_job_imports_is_in_its_stage_fingerprint(tmp_path):
    data = tmp_path / "data.hdf5"
    collect = ["collect", "--env", "InvertedPendulum-v5", "--policy", "random",
               "--transitions", "600", "--output", str(data)]  # fmt: skip
    assert_covered(imported_by(tmp_path, *collect), "collect")
    ensemble = ["train-ensemble", "--dataset", str(data), "--config",
                str(Path("config/ensembles/pnn.yaml").resolve()), "--params", *TINY_ENSEMBLE,
                "--output", str(tmp_path / "ens"), "--tracking-uri", "none"]  # fmt: skip
    assert_covered(imported_by(tmp_path, *ensemble), "ensemble")
    settings = {
        "bc": ["steps=2", "hidden_size=8"],
        "aleatoric-partitioning": ["steps=2", "hidden_size=8"],
        "j-morel": ["iterations=1", "update_paths=1", "horizon=5", "hidden_size=8", "bc_steps=2"],
        "pets": [],
    }
    for method, params in settings.items():
        policy = ["train-policy", "--dataset", str(data), "--mode", method, "--ensemble",
                  str(tmp_path / "ens"), "--params", *params, "--eval-episodes", "1",
                  "--output", str(tmp_path / method), "--tracking-uri", "none"]  # fmt: skip
        if method == "bc":
            policy.remove("--ensemble")
            policy.remove(str(tmp_path / "ens"))
        assert_covered(imported_by(tmp_path, *policy), "policy", method)
    scores = ["scores", *(str(tmp_path / m / "progress.csv") for m in settings),
              "--output", str(tmp_path / "s.csv"), "--final", str(tmp_path / "f.csv")]  # fmt: skip
    assert_covered(imported_by(tmp_path, *scores), "scores")
    pets = ["pets", "--env", "InvertedPendulum-v5", "--preset", "small", "-ca", "prop-type", "E",
            "-o", "iterations", "1", "-o", "init_episodes", "1", "-o", "fit_epochs", "1",
            "-o", "popsize", "10", "-o", "num_elites", "2", "-o", "horizon", "3",
            "--output", str(tmp_path / "pets"), "--checkpoint-every", "0",
            "--tracking-uri", "none"]  # fmt: skip
    assert_covered(imported_by(tmp_path, *pets), "pets")


def test_each_method_fingerprints_its_own_code_only():
    relative = {
        method: {p.relative_to(PACKAGE_DIR).as_posix() for p in job_files("policy", method)}
        for method in ("bc", "sac", "mbpo", "morel")
    }
    assert "agents/networks.py" in relative["bc"] and "agents/networks.py" in relative["sac"]
    assert "agents/sac.py" not in relative["bc"] and "agents/npg.py" not in relative["mbpo"]
    assert "models/paths.py" in relative["morel"] and "models/paths.py" not in relative["sac"]
    assert all("models/convert.py" not in files for files in relative.values())


def test_no_import_escapes_the_reader():
    """A dynamic import would be a silent gap in the fingerprints: only the registry's."""
    assert dynamic_imports() == []


@pytest.mark.parametrize("stage", ["nope"])
def test_an_unknown_stage_is_an_error(stage):
    from ombrl.errors import OmbrlError

    with pytest.raises(OmbrlError, match="stage: 'nope' is not one of"):
        job_files(stage)


def test_behaviour_and_generate_jobs_are_in_their_stage_fingerprints(tmp_path):
    run = tmp_path / "run"
    behaviour = ["behaviour", "--env", "InvertedPendulum-v5", "--params", "env_steps=200",
                 "warmup=64", "batch_size=64", "snapshot_every=100", "hidden_size=8",
                 "eval_episodes=1", "--output", str(run), "--checkpoint-every", "0"]  # fmt: skip
    assert_covered(imported_by(tmp_path, *behaviour), "behaviour")
    generate = ["generate", "--behaviour", str(run), "--quality", "random", "--transitions",
                "50", "--output", str(tmp_path / "r.hdf5")]  # fmt: skip
    assert_covered(imported_by(tmp_path, *generate), "generate")
