"""Task functions against the real gymnasium environments."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from ombrl.errors import OmbrlError
from ombrl.tasks import get_task, model_functions

# -v4 ids are what D4RL data is evaluated on; gymnasium warns that they are old.
pytestmark = pytest.mark.filterwarnings("ignore:.*out of date:DeprecationWarning")


def random_transitions(env_id: str, steps: int, seed: int) -> dict[str, np.ndarray]:
    """`steps` random-action transitions (resetting after each episode end) with env rewards."""
    env = gym.make(env_id)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    rows: dict[str, list] = {k: [] for k in ("obs", "act", "next_obs", "rew", "term", "vel")}
    for i in range(steps):
        act = env.action_space.sample()
        next_obs, rew, term, trunc, info = env.step(act)
        for key, value in zip(
            rows, (obs, act, next_obs, rew, term, info.get("x_velocity", 0.0)), strict=True
        ):
            rows[key].append(value)
        obs = next_obs
        if term or trunc:
            obs, _ = env.reset(seed=seed + i + 1)
    env.close()
    return {k: np.asarray(v) for k, v in rows.items()}


def task_outputs(env_id: str, data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    task = get_task(env_id)
    obs, act, next_obs = (
        torch.as_tensor(data[k], dtype=torch.float32) for k in ("obs", "act", "next_obs")
    )
    return task.reward(obs, act, next_obs).numpy(), task.terminal(obs, act, next_obs).numpy()


@pytest.mark.parametrize(
    "env_id",
    ["InvertedPendulum-v5", "InvertedPendulum-v4", "Hopper-v5", "Hopper-v4", "Walker2d-v5"],
)
def test_termination_identical_and_reward_close(env_id: str) -> None:
    data = random_transitions(env_id, 400, seed=0)
    reward, terminal = task_outputs(env_id, data)
    assert data["term"].sum() >= 5  # random actions end many episodes: the check is not vacuous
    np.testing.assert_array_equal(terminal, data["term"])
    # Only the velocity approximation differs from the env's reward.
    np.testing.assert_allclose(reward, data["rew"], atol=0.15)
    assert np.abs(reward - data["rew"]).mean() < 0.02


def test_v4_pays_the_bonus_on_the_terminal_step_v5_does_not() -> None:
    """gymnasium's -v4 pays the healthy bonus (InvertedPendulum: its 1) on the terminating
    step too; -v5 pays nothing for it. The env comparison above holds for both versions."""
    for family in ("Hopper", "Walker2d", "InvertedPendulum"):
        data = random_transitions(f"{family}-v5", 200, seed=1)
        reward_v4, terminal = task_outputs(f"{family}-v4", data)
        reward_v5, _ = task_outputs(f"{family}-v5", data)
        assert terminal.any() and not terminal.all()
        np.testing.assert_allclose(reward_v4 - reward_v5, terminal.astype(np.float32), atol=1e-6)


@pytest.mark.parametrize(
    ("env_id", "index", "min_gain"),
    [("Hopper-v5", 5, 10.0), ("Walker2d-v5", 8, 5.0), ("HalfCheetah-v5", 8, 1.2)],
)
def test_mean_velocity_beats_next_velocity(env_id: str, index: int, min_gain: float) -> None:
    """The mean of v(s) and v(s') tracks the env's finite-difference velocity far better than
    v(s') alone (hopper ~20x, walker2d ~14x; halfcheetah only ~1.5x under random actions)."""
    data = random_transitions(env_id, 300, seed=2)
    mean_error = np.abs(0.5 * (data["obs"][:, index] + data["next_obs"][:, index]) - data["vel"])
    next_error = np.abs(data["next_obs"][:, index] - data["vel"])
    assert next_error.mean() > min_gain * mean_error.mean()


def test_halfcheetah_never_terminates_and_reward_tracks_env() -> None:
    data = random_transitions("HalfCheetah-v5", 300, seed=3)
    reward, terminal = task_outputs("HalfCheetah-v5", data)
    assert not terminal.any()
    assert np.corrcoef(reward, data["rew"])[0, 1] > 0.9


def test_non_finite_states_terminate() -> None:
    for env_id in ("InvertedPendulum-v5", "Hopper-v5", "Walker2d-v5"):
        task = get_task(env_id)
        data = random_transitions(env_id, 1, seed=0)
        obs = torch.as_tensor(data["obs"], dtype=torch.float32)
        bad = obs.clone()
        bad[0, -1] = float("nan")
        act = torch.zeros(1, task.act_dim)
        assert not task.terminal(obs, act, obs).item()
        assert task.terminal(obs, act, bad).item()


def test_bounds_and_dims_match_the_envs() -> None:
    for env_id in ("InvertedPendulum-v5", "Hopper-v4", "Walker2d-v5", "HalfCheetah-v4"):
        task = get_task(env_id)
        env = gym.make(env_id)
        assert task.env_id == env_id
        assert (task.obs_dim, task.act_dim) == (
            env.observation_space.shape[0],
            env.action_space.shape[0],
        )
        np.testing.assert_array_equal(env.action_space.low, task.action_low)
        np.testing.assert_array_equal(env.action_space.high, task.action_high)
        env.close()


@pytest.mark.parametrize("env_id", ["Hopper-v3", "Ant-v5", "hopper", "Pendulum-v1"])
def test_unknown_env_is_a_user_error(env_id: str) -> None:
    with pytest.raises(OmbrlError, match=env_id):
        get_task(env_id)


# Hopper states (raw) and actions; expected values from upstream's own functions, run once in
# a scratch venv (numpy 2.4.6, `tests/upstream/morel_values.py`): mjrl v2
# 15bf3c0 projects/model_based_npg/utils/reward_functions/gym_hopper.py on `raw * obs_mask`,
# J-MOReL 03bdf559 reward_functions/gym_hopper.py on `raw` (as next_observations).
HOPPER_STATES = [
    [1.25, 0.05, -0.1, 0.2, 0.3, 1.5, -0.4, 2.0, -3.0, 0.5, 1.0],
    [1.20, 0.17, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.65, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [1.30, -0.12, 0.0, 0.0, 0.0, 700.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [1.30, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 300.0, 0.0],
]
HOPPER_ACTIONS = [[0.5, -2.0, 0.1], [0, 0, 0], [1, 1, 1], [0.2, 0.2, 0.2], [-0.3, 0.0, 0.9]]
MJRL_REWARD = [2.49874, 3.0, -1.003, 500.99988, 1.4991]  # of s_t
MJRL_TERMINATED = [False, True, True, True, False]  # angle 0.15, height 0.7, |0.02 * 700| >= 10
J_MOREL_REWARD = [2.49874, 3.0, -1.003, 10.99988, 1.4991]  # of s_{t+1}, clipped to +-10
J_MOREL_TERMINATED = [False, False, True, False, False]  # angle limit 0.2


@pytest.mark.parametrize(
    ("code", "reward", "terminated", "of_next"),
    [
        ("mjrl", MJRL_REWARD, MJRL_TERMINATED, False),
        ("j-morel", J_MOREL_REWARD, J_MOREL_TERMINATED, True),
    ],
)
def test_morels_hopper_functions_are_upstreams(code, reward, terminated, of_next) -> None:
    task = get_task("Hopper-v4")
    rew_fn, term_fn = model_functions(task, code, "upstream")
    states = torch.tensor(HOPPER_STATES, dtype=torch.float64)
    act = torch.tensor(HOPPER_ACTIONS, dtype=torch.float64)
    other = torch.zeros_like(states)  # the state the reward must not read
    obs, nxt = (other, states) if of_next else (states, other)
    np.testing.assert_allclose(rew_fn(obs, act, nxt).numpy(), reward, rtol=1e-9)
    assert term_fn(other, act, states).tolist() == terminated
    assert model_functions(task, code, "task") == (task.reward, task.terminal)
    pendulum = get_task("InvertedPendulum-v5")  # no upstream functions: the task's
    assert model_functions(pendulum, code, "upstream") == (pendulum.reward, pendulum.terminal)
