"""`ombrl render`: real MuJoCo offscreen frames (OSMesa, Debian's libosmesa6, which .ci/run
installs) written as MP4 and GIF, and the one-line error without GL."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest

from ombrl.cli import main
from ombrl.data.collect import collect
from ombrl.errors import OmbrlError
from ombrl.render import render_episode

ENV = "InvertedPendulum-v5"
GAIN = np.array([2.0, 10.0, 1.0, 1.0])  # a = K s balances InvertedPendulum-v5


def balance(obs: np.ndarray) -> np.ndarray:
    return np.array([GAIN @ obs])


@pytest.fixture
def renderer() -> None:
    """Skip a test that draws frames where OSMesa (the default MUJOCO_GL) is missing, saying
    how to install it; in CI (CI=true) a missing renderer is a failure, not a skip."""
    if os.environ.get("MUJOCO_GL", "osmesa") != "osmesa" or ctypes.util.find_library("OSMesa"):
        return
    reason = "OSMesa not found: install it with `sudo apt-get install libosmesa6` (Debian/Ubuntu)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.mark.usefixtures("renderer")
def test_an_episode_is_written_frame_by_frame_as_mp4_and_gif(tmp_path):
    mp4 = render_episode(
        lambda: balance, ENV, tmp_path / "e.mp4", seed=0, max_steps=7, width=64, height=48
    )
    assert (mp4.frames, mp4.steps, mp4.total, mp4.terminated) == (8, 7, 7.0, False)
    reader = imageio_ffmpeg.read_frames(str(mp4.path))
    assert next(reader)["size"] == (64, 48)  # width, height
    assert sum(1 for _ in reader) == 8  # the reset state and one frame per step
    gif = render_episode(
        lambda: balance, ENV, tmp_path / "e.gif", seed=0, max_steps=4, width=64, height=48
    )
    pictures = iio.imread(gif.path, index=None)
    assert pictures.shape[:3] == (5, 48, 64)
    # Frames show the scene (not a blank buffer) and the pole moves between them.
    assert pictures[0].max() > 50 and np.abs(pictures[0].astype(int) - pictures[-1]).sum() > 0
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_a_bad_output_is_refused_before_any_episode(tmp_path):
    with pytest.raises(OmbrlError, match=r"must end in \.mp4 or \.gif"):
        render_episode(lambda: balance, ENV, tmp_path / "e.avi", seed=0)
    with pytest.raises(OmbrlError, match="does not exist"):
        render_episode(lambda: balance, ENV, tmp_path / "missing" / "e.gif", seed=0)


def test_the_command_needs_a_policy_or_an_ensemble(tmp_path, capsys):
    code = main(["render", "--output", str(tmp_path / "e.gif")])
    assert code == 2 and "give --policy DIR" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.usefixtures("renderer")
def test_a_trained_policy_folder_renders_as_its_job_evaluated_it(tmp_path, capsys):
    data = collect(ENV, "medium", 300, 0, tmp_path / "d.hdf5", ref_episodes=1)
    code = main(
        ["train-policy", "--dataset", str(data), "--mode", "bc", "--params", "steps=20",
         "hidden_size=16", "--output", str(tmp_path / "bc"), "--tracking-uri", "none", "--quiet"]
    )  # fmt: skip
    assert code == 0
    out = tmp_path / "bc.gif"
    code = main(
        ["render", "--policy", str(tmp_path / "bc"), "--output", str(out), "--max-steps", "5",
         "--width", "32", "--height", "32", "--seed", "100000"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and f"{out}: 6 frames of {ENV}, 5 steps" in printed
    assert iio.imread(out, index=None).shape[:3] == (6, 32, 32)


@pytest.mark.slow
def test_without_opengl_the_command_is_one_line_that_says_so(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env["MUJOCO_GL"] = "glfw"  # needs a display: there is none
    policy = tmp_path / "ens"
    result = subprocess.run(
        [sys.executable, "-m", "ombrl.cli", "render", "--ensemble", str(policy), "--env", ENV,
         "--output", str(tmp_path / "e.gif")],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("ombrl: error: "), result.stderr
    assert "no OpenGL for offscreen rendering with MUJOCO_GL=glfw" in lines[0]
