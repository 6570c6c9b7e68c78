"""Collect D4RL-format datasets by running a behaviour policy in a gymnasium MuJoCo env.

The file has D4RL's keys (observations, actions, rewards, next_observations, terminals,
timeouts; float32 and bool) plus `metadata/*`: env_id, policy, seed, reference scores and
the code version, so `read_hdf5` needs nothing else to normalise returns.

Episodes end by termination (terminal) or the env's time limit (timeout). The dataset holds
exactly `num_transitions` rows: when the budget ends inside an episode, its last row is
marked as a timeout (the episode is cut like a time limit would cut it; its next
observation is real, so nothing is dropped when it is read back).

Reference scores are the same for every dataset of an environment: ref_min_score is the
mean return of the uniform random policy over `ref_episodes` episodes and ref_max_score the
mean return of the scripted expert over REF_EXPERT_EPISODES, each from its own fixed seed.
Environments without a scripted expert take D4RL's expert score for their family (recorded
as `ref_max_source`) or store none.
"""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np

from ombrl import __version__
from ombrl.data.controllers import SCRIPTED, Policy, make_policy, policy_names
from ombrl.data.scores import D4RL_REF_SCORES, d4rl_family
from ombrl.errors import OmbrlError
from ombrl.tracking import atomic_file, check_output_dir

REF_RANDOM_SEED = 10_000
REF_EXPERT_SEED = 20_000
REF_EXPERT_EPISODES = 10


@functools.cache
def mujoco_env_ids() -> tuple[str, ...]:
    """Gymnasium MuJoCo `-v5` environment ids (the ones this module can collect from)."""
    return tuple(
        sorted(
            env_id
            for env_id, spec in gym.registry.items()
            if env_id.endswith("-v5")
            and isinstance(spec.entry_point, str)
            and spec.entry_point.startswith("gymnasium.envs.mujoco")
        )
    )


def collect_problems(datasets: dict, source: str) -> list[str]:
    """What `collect` would refuse in a study's `datasets:` (an env it cannot collect from,
    a behaviour policy the env has no controller for), one line each, before any job runs.

    Called through `ombrl.preflight`, not by `ombrl.config.load_study`: a stage that loads
    configs must not import this module (its code fingerprint would grow).
    """
    problems = []
    for name, spec in datasets.items():
        if spec["source"] != "collect":
            continue
        where = f"{source}: datasets.{name}"
        if spec["env"] not in mujoco_env_ids():
            problems.append(f"{where}.env: {spec['env']!r} is not a gymnasium MuJoCo -v5 env")
        elif spec["policy"] not in policy_names(spec["env"]):
            choices = ", ".join(policy_names(spec["env"]))
            problems.append(
                f"{where}.policy: {spec['env']} has no {spec['policy']!r} controller ({choices})"
            )
    return problems


def collect(
    env_id: str,
    policy: str,
    num_transitions: int,
    seed: int,
    path: Path,
    action_noise: float | None = None,
    ref_episodes: int = 100,
) -> Path:
    """Run `policy` in `env_id` for `num_transitions` steps and write a D4RL-format HDF5 file.

    Args:
        env_id: a gymnasium MuJoCo `-v5` id, e.g. "InvertedPendulum-v5".
        policy: "random", or "expert" / "medium" where a scripted controller exists.
        num_transitions: rows in the file (N).
        seed: seeds the policy's numpy Generator and the env's first reset; the same seed
            gives identical arrays.
        path: output file; written to a temporary file beside it, then renamed.
        action_noise: Gaussian action noise std replacing the policy's default.
        ref_episodes: random-policy episodes behind ref_min_score.

    Returns:
        `path`.

    Raises:
        OmbrlError: unknown env or policy, or non-positive counts.
    """
    if Path(path).is_dir():
        raise OmbrlError(f"--output {path}: is a folder, not a file")
    check_output_dir(Path(path).parent, "--output")
    if env_id not in mujoco_env_ids():
        raise OmbrlError(f"unknown env {env_id!r}; valid: {', '.join(mujoco_env_ids())}")
    if num_transitions < 1 or ref_episodes < 1:
        raise OmbrlError(
            f"num_transitions and ref_episodes must be >= 1, got {num_transitions}, {ref_episodes}"
        )
    env = gym.make(env_id)
    behaviour = make_policy(
        env_id, policy, env.action_space.low, env.action_space.high, action_noise
    )
    arrays = rollout(env, behaviour, num_transitions, seed)
    ref_min, ref_max, ref_max_source = reference_scores(env_id, ref_episodes)
    metadata = {
        "env_id": env_id,
        "policy": policy,
        "seed": seed,
        "action_noise": action_noise,
        "ref_min_score": ref_min,
        "ref_max_score": ref_max,
        "ref_max_source": ref_max_source,
        "ref_episodes": ref_episodes,
        "code_version": __version__,
    }
    write_hdf5(Path(path), arrays, {k: v for k, v in metadata.items() if v is not None})
    return Path(path)


def rollout(env: gym.Env, policy: Policy, num_transitions: int, seed: int) -> dict[str, np.ndarray]:
    """Step `env` with `policy` for exactly `num_transitions` steps.

    Returns:
        D4RL arrays: observations and next_observations N x obs_dim, actions N x act_dim
        (float32), rewards N float32, terminals and timeouts N bool; the last row is a
        timeout unless it is a terminal.
    """
    n = num_transitions
    obs_dim = env.observation_space.shape[0]
    act_dim = env.action_space.shape[0]
    observations = np.empty((n, obs_dim), np.float32)
    actions = np.empty((n, act_dim), env.action_space.dtype)
    rewards = np.empty(n, np.float32)
    next_observations = np.empty((n, obs_dim), np.float32)
    terminals = np.zeros(n, bool)
    timeouts = np.zeros(n, bool)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    for i in range(n):
        actions[i] = policy(obs, rng)
        next_obs, reward, terminated, truncated, _ = env.step(actions[i])
        observations[i] = obs
        rewards[i] = reward
        next_observations[i] = next_obs
        if terminated or truncated:
            terminals[i] = terminated
            timeouts[i] = not terminated
            obs, _ = env.reset()
        else:
            obs = next_obs
    timeouts[-1] = not terminals[-1]
    return {
        "observations": observations,
        "actions": actions,
        "rewards": rewards,
        "next_observations": next_observations,
        "terminals": terminals,
        "timeouts": timeouts,
    }


def episode_returns(env: gym.Env, policy: Policy, episodes: int, seed: int) -> np.ndarray:
    """Undiscounted returns of `episodes` full episodes (env reset with `seed` first).

    Returns:
        episodes float64.
    """
    rng = np.random.default_rng(seed)
    returns = np.zeros(episodes)
    obs, _ = env.reset(seed=seed)
    for episode in range(episodes):
        if episode:
            obs, _ = env.reset()
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(
                policy(obs, rng).astype(env.action_space.dtype)
            )
            returns[episode] += reward
            done = terminated or truncated
    return returns


@functools.cache
def reference_scores(env_id: str, ref_episodes: int) -> tuple[float, float | None, str | None]:
    """(ref_min_score, ref_max_score, source of ref_max_score) for `env_id`.

    Deterministic (fixed seeds), so cached per process.
    """
    env = gym.make(env_id)
    low, high = env.action_space.low, env.action_space.high
    ref_min = float(
        episode_returns(
            env, make_policy(env_id, "random", low, high), ref_episodes, REF_RANDOM_SEED
        ).mean()
    )
    if env_id in SCRIPTED:
        expert = make_policy(env_id, "expert", low, high)
        returns = episode_returns(env, expert, REF_EXPERT_EPISODES, REF_EXPERT_SEED)
        return ref_min, float(returns.mean()), "expert controller"
    family = d4rl_family(env_id)
    if family:
        return ref_min, D4RL_REF_SCORES[family][1], "d4rl"
    return ref_min, None, None


def write_hdf5(path: Path, arrays: dict[str, np.ndarray], metadata: dict) -> None:
    """Build the file in memory, then write it under a temporary name in the same folder and
    rename it into place. HDF5 writing straight to a full disk can crash the process
    (a segfault, no cleanup); a plain write fails with ENOSPC, and the temporary is removed.

    Raises:
        OmbrlError: the file cannot be written (naming the cause, e.g. no space left).
    """
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        for key, array in arrays.items():
            handle.create_dataset(key, data=array)
        group = handle.create_group("metadata")
        for key, value in metadata.items():
            group.create_dataset(key, data=value)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(path, "wb") as out:
            out.write(buffer.getbuffer())
            out.flush()
            os.fsync(out.fileno())
    except OSError as err:
        raise OmbrlError(f"--output {path}: cannot write ({err.strerror}); nothing left") from None
