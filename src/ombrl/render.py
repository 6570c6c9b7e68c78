"""Render one episode of a trained policy or a planner as an MP4 or GIF.

A score says how well a method does; an episode shows how. MuJoCo renders offscreen through
the OpenGL platform named by `MUJOCO_GL`: `osmesa` (software, Debian's libosmesa6; the
default here, since it needs no display and no GPU) or `egl` (a GPU's, or Mesa's). Where
neither can make a context the command stops with one line that says so, before any
episode runs. Frames are the reset state and the state after every step, written by imageio
(MP4 through imageio-ffmpeg's bundled ffmpeg, GIF through Pillow), atomically.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ombrl.errors import OmbrlError

#: File types `render_episode` writes, by suffix.
FORMATS = (".mp4", ".gif")
#: The OpenGL platform used when MUJOCO_GL is not set: software rendering, no display needed.
DEFAULT_GL = "osmesa"

ActFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class Rendered:
    """What `render_episode` wrote.

    Attributes:
        path: the video file.
        frames: frames written (steps + 1: the reset state first).
        steps: environment steps taken.
        total: the episode's undiscounted return.
        terminated: the episode ended in a terminal state (not the step limit).
    """

    path: Path
    frames: int
    steps: int
    total: float
    terminated: bool


def check_output(path: Path) -> None:
    """Refuse an output the episode could not be written to, before any work.

    Raises:
        OmbrlError: an unknown suffix, a folder, or a missing or unwritable parent folder.
    """
    if path.suffix.lower() not in FORMATS:
        raise OmbrlError(f"--output {path}: must end in {' or '.join(FORMATS)}")
    if path.is_dir():
        raise OmbrlError(f"--output {path}: is a folder, not a file")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OmbrlError(f"--output {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OmbrlError(f"--output {path}: folder {parent} is not writable")


def offscreen_env(env_id: str, width: int, height: int, max_steps: int | None):
    """`env_id` rendering RGB frames offscreen, its first frame already drawn.

    Raises:
        OmbrlError: no OpenGL context can be made (the platform and the cause, one line).
    """
    import gymnasium as gym

    os.environ.setdefault("MUJOCO_GL", DEFAULT_GL)
    platform = os.environ["MUJOCO_GL"]
    kwargs = {} if max_steps is None else {"max_episode_steps": max_steps}
    try:
        env = gym.make(env_id, render_mode="rgb_array", width=width, height=height, **kwargs)
    except gym.error.Error as err:
        raise OmbrlError(f"env: cannot make {env_id!r} for rendering ({err})") from err
    try:
        with warnings.catch_warnings():  # GLFW warns before failing: the error says it all
            warnings.simplefilter("ignore")
            env.reset(seed=0)
            env.render()
    # The GL libraries fail in many ways (ImportError, OSError, mujoco.FatalError, PyOpenGL's
    # errors); each means the same thing to the user.
    except Exception as err:  # noqa: BLE001
        cause = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise OmbrlError(
            f"no OpenGL for offscreen rendering with MUJOCO_GL={platform} ({cause}); install "
            "Debian's libosmesa6 and use MUJOCO_GL=osmesa, or MUJOCO_GL=egl where EGL works"
        ) from None
    return env


def render_episode(
    make_act: Callable[[], ActFn],
    env_id: str,
    output: Path,
    seed: int,
    max_steps: int | None = None,
    width: int = 320,
    height: int = 240,
    fps: int = 30,
) -> Rendered:
    """Run one episode of a policy in `env_id` (reset with `seed`) and write its frames.

    Args:
        make_act: returns the deterministic policy or planner, `obs_dim -> act_dim` (actions
            are clipped to the environment's bounds); called once the environment renders,
            so a missing OpenGL is said before any policy or model loads.
        env_id: a gymnasium MuJoCo id.
        output: `.mp4` or `.gif` file.
        seed: the reset seed.
        max_steps: end the episode after this many steps (None: the environment's limit).
        width, height: frame size in pixels (MP4: multiples of 16 keep it exact).
        fps: frames per second of the video.

    Raises:
        OmbrlError: a bad output, no OpenGL, a non-finite action.
    """
    import imageio.v2 as imageio

    check_output(output)
    env = offscreen_env(env_id, width, height, max_steps)
    low, high = env.action_space.low, env.action_space.high
    try:
        act = make_act()
        obs, _ = env.reset(seed=seed)
        frames = [env.render()]
        total, steps, terminated, truncated = 0.0, 0, False, False
        while not (terminated or truncated):
            action = np.asarray(act(obs), dtype=np.float32)
            if not np.all(np.isfinite(action)):
                raise OmbrlError(f"render: the policy's action at step {steps} is not finite")
            obs, reward, terminated, truncated, _ = env.step(np.clip(action, low, high))
            total += float(reward)
            steps += 1
            frames.append(env.render())
    finally:
        env.close()
    tmp = output.with_name(f".{output.stem}.tmp{output.suffix}")
    try:
        if output.suffix.lower() == ".mp4":
            imageio.mimwrite(tmp, frames, format="FFMPEG", fps=fps)
        else:
            imageio.mimwrite(tmp, frames, format="GIF", duration=1000 / fps, loop=0)
        os.replace(tmp, output)
    except OSError as err:
        raise OmbrlError(f"--output {output}: cannot write ({err.strerror or err})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return Rendered(output, len(frames), steps, total, bool(terminated))


def policy_actor(folder: Path, device: str, seed: int) -> tuple[Callable[[], ActFn], str]:
    """The policy a policies-stage job wrote to `folder` (any method, `pets` included), to
    be made by the returned function, and the environment it acts in.

    Raises:
        OmbrlError: missing or corrupted policy files.
    """
    import torch

    from ombrl.io import load_model
    from ombrl.methods import method_module, method_spec

    tensors, meta = load_model(folder, name="policy")
    module = method_module(method_spec(meta.get("method", "")).name)
    return lambda: module.load_policy(meta, tensors, torch.device(device), seed), meta["env_id"]


def planner_actor(
    ensemble_dir: Path, env_id: str, settings: dict, device: str, seed: int
) -> Callable[[], ActFn]:
    """PETS planning in `env_id` with the ensemble in `ensemble_dir` (its elites), to be made
    by the returned function.

    Args:
        settings: `preset` and the `ENTRY_KEYS` (ombrl.planning.settings), as a `pets`
            study entry's (None keeps the preset's).

    Raises:
        OmbrlError (when called): a missing ensemble, one of another task, a bad setting.
    """

    def make() -> ActFn:
        from ombrl.methods.pets import make_planner
        from ombrl.models.ensemble import load_ensemble

        ensemble, _ = load_ensemble(ensemble_dir, device)
        return make_planner(ensemble, env_id, settings).agent(env_id, seed).act

    return make
