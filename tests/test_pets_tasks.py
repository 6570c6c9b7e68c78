"""Reacher-v5 and Pusher-v5 task functions against the real gymnasium environments."""

from __future__ import annotations

import gymnasium as gym
import mujoco
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


def test_inverted_pendulum_plans_with_the_pole_tips_distance_while_alive() -> None:
    """The planning reward is upstream's cartpole cost on gymnasium's pendulum: the pole tip,
    taken from MuJoCo's own geometry, near the upright pole above x = 0; 0 on a fall."""
    env = gym.make("InvertedPendulum-v5").unwrapped
    env.reset(seed=0)
    model, data = env.model, env.data
    rng = np.random.default_rng(0)
    states = np.column_stack([rng.uniform(-0.9, 0.9, 50), rng.uniform(-0.3, 0.3, 50)])
    expected = []
    for qpos in states:
        data.qpos[:] = qpos
        mujoco.mj_forward(model, data)
        cart, pole = data.geom("cart").xpos, data.geom("cpole").xpos
        tip = cart + 2 * (pole - cart)  # the capsule's centre is half way up the pole
        length = 2 * np.linalg.norm(pole - cart)
        distance2 = tip[0] ** 2 + (tip[2] - cart[2] - length) ** 2
        expected.append(np.exp(-distance2 / length**2) if abs(qpos[1]) <= 0.2 else 0.0)
    env.close()
    task = get_task("InvertedPendulum-v5")
    next_obs = torch.as_tensor(np.column_stack([states, np.zeros((50, 2))]))
    act = torch.full((50, 1), 2.0, dtype=torch.float64)
    got = task.plan_reward(torch.zeros_like(next_obs), act, next_obs).numpy()
    # atol: the XML's pole leans 1 mm (fromto 0 0 0 0.001 0 0.6), the cost takes it upright.
    np.testing.assert_allclose(got, np.asarray(expected) - 0.01 * 4.0, atol=3e-3)
    assert (np.asarray(expected)[np.abs(states[:, 1]) > 0.2] == 0).all()
    # The centred upright pole is the best state; other tasks plan with their reward.
    upright = torch.zeros(1, 4, dtype=torch.float64)
    assert task.plan_reward(upright, act[:1] * 0, upright).item() == pytest.approx(1.0)
    reacher = get_task("Reacher-v5")
    obs = torch.randn(5, 10)
    torch.testing.assert_close(
        reacher.plan_reward(obs, obs[:, :2], obs), reacher.reward(obs, obs[:, :2], obs)
    )


def test_inverted_pendulum_plans_with_upstreams_cartpole_cost_on_hand_made_states() -> None:
    """Upstream's cartpole cost (handful-of-trials dmbrl/config/cartpole.py:58-73, 102-107),
    written here in numpy: `-exp(-|ee - (0, 0.6)|^2 / 0.6^2) + 0.01 |a|^2` with the pole tip
    `ee = (x - 0.6 sin t, -0.6 cos t)`, t = pi upright there (t = angle + pi here). While the
    pole is up the planning reward is minus that cost."""
    x = np.array([0.0, 0.3, -0.5, 0.0, 0.9, 0.1])
    angle = np.array([0.0, 0.0, 0.1, -0.15, 0.05, 0.19])
    act = np.array([0.0, 1.0, -2.0, 0.5, 3.0, -0.1])
    t = angle + np.pi
    ee = np.column_stack([x - 0.6 * np.sin(t), -0.6 * np.cos(t)])
    cost = -np.exp(-np.square(ee - [0.0, 0.6]).sum(axis=1) / 0.6**2) + 0.01 * act**2
    next_obs = torch.as_tensor(np.column_stack([x, angle, np.zeros((6, 2))]))
    acts = torch.as_tensor(act[:, None])
    task = get_task("InvertedPendulum-v5")
    got = task.plan_reward(torch.zeros_like(next_obs), acts, next_obs).numpy()
    np.testing.assert_allclose(got, -cost, rtol=1e-12, atol=1e-12)
