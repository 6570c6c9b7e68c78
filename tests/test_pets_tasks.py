"""Reacher-v5 and Pusher-v5 task functions against the real gymnasium environments."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from ombrl.errors import OmbrlError
from ombrl.tasks import get_task


def random_transitions(env_id: str, steps: int, seed: int) -> dict[str, np.ndarray]:
    env = gym.make(env_id)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    rows: dict[str, list] = {k: [] for k in ("obs", "act", "next_obs", "rew", "term")}
    for i in range(steps):
        act = env.action_space.sample()
        next_obs, rew, term, trunc, _ = env.step(act)
        for key, value in zip(rows, (obs, act, next_obs, rew, term), strict=True):
            rows[key].append(value)
        obs = next_obs
        if term or trunc:
            obs, _ = env.reset(seed=seed + i + 1)
    env.close()
    return {k: np.asarray(v) for k, v in rows.items()}


@pytest.mark.parametrize("env_id", ["Reacher-v5", "Pusher-v5"])
def test_reward_is_the_envs_and_never_terminal(env_id: str) -> None:
    """Both pay distances at s' that the observation holds exactly: equal to float32
    rounding, over several episodes (time-limit resets included)."""
    data = random_transitions(env_id, 300, seed=0)
    task = get_task(env_id)
    obs, act, next_obs = (
        torch.as_tensor(data[k], dtype=torch.float64) for k in ("obs", "act", "next_obs")
    )
    np.testing.assert_allclose(task.reward(obs, act, next_obs).numpy(), data["rew"], atol=1e-6)
    reward32 = task.reward(obs.float(), act.float(), next_obs.float()).numpy()
    np.testing.assert_allclose(reward32, data["rew"], atol=1e-5)
    assert not task.terminal(obs, act, next_obs).any() and not data["term"].any()


@pytest.mark.parametrize("env_id", ["Reacher-v5", "Pusher-v5"])
def test_bounds_and_dims_match_the_envs(env_id: str) -> None:
    task = get_task(env_id)
    env = gym.make(env_id)
    assert (task.obs_dim, task.act_dim) == (
        env.observation_space.shape[0],
        env.action_space.shape[0],
    )
    np.testing.assert_array_equal(env.action_space.low, task.action_low)
    np.testing.assert_array_equal(env.action_space.high, task.action_high)
    env.close()


@pytest.mark.parametrize("env_id", ["Reacher-v4", "Pusher-v4"])
def test_v4_is_not_supported(env_id: str) -> None:
    """-v4 pays the distances before the step (at s): another function, not provided."""
    with pytest.raises(OmbrlError, match=env_id):
        get_task(env_id)
