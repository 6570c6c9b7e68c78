"""Behaviour cloning on InvertedPendulum-v5 data from a linear expert."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from ombrl.agents.bc import BC, BCConfig
from ombrl.agents.buffer import ReplayBuffer
from ombrl.data.dataset import Dataset
from ombrl.errors import OmbrlError
from ombrl.evaluate import evaluate

CPU = torch.device("cpu")
GAIN = np.array([2.0, 10.0, 1.0, 1.0])  # a = K s balances InvertedPendulum-v5


def expert_dataset(transitions: int, seed: int) -> Dataset:
    """States visited by the expert with exploration noise, labelled with the expert's action."""
    env = gym.make("InvertedPendulum-v5")
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("obs", "act", "rew", "next", "term", "trunc", "ep")}
    obs, _ = env.reset(seed=seed)
    episode = 0
    for _ in range(transitions):
        label = np.clip(GAIN @ obs, -3, 3)
        next_obs, rew, term, trunc, _ = env.step(np.clip([label + rng.normal(0, 0.5)], -3, 3))
        for key, value in zip(
            rows, (obs, [label], rew, next_obs, term, trunc, episode), strict=True
        ):
            rows[key].append(value)
        obs = next_obs
        if term or trunc or rng.random() < 0.01:  # short episodes: many start states
            obs, _ = env.reset(seed=seed + 1 + episode)
            rows["trunc"][-1] = not term
            episode += 1
    env.close()
    arr = {k: np.asarray(v) for k, v in rows.items()}
    return Dataset(
        observations=arr["obs"].astype(np.float32),
        actions=arr["act"].astype(np.float32),
        rewards=arr["rew"].astype(np.float32),
        next_observations=arr["next"].astype(np.float32),
        terminals=arr["term"],
        timeouts=arr["trunc"],
        episode_ids=arr["ep"].astype(np.int64),
        env_id="InvertedPendulum-v5",
    )


def config() -> BCConfig:
    return BCConfig(hidden_size=[64, 64], lr=1e-3, batch_size=128)


def fit(agent: BC, data: Dataset, updates: int, seed: int) -> list[float]:
    buffer = ReplayBuffer.from_dataset(data, CPU)
    g = torch.Generator().manual_seed(seed)
    return [agent.update(buffer.sample(128, g))["bc_loss"] for _ in range(updates)]


def test_reproduces_a_linear_expert_on_held_out_states() -> None:
    train_set, test_set = expert_dataset(4000, seed=0), expert_dataset(1000, seed=100)
    agent = BC(4, 1, -3.0, 3.0, config(), CPU, seed=0)
    before = np.mean((agent.act(test_set.observations, True) - test_set.actions) ** 2)
    fit(agent, train_set, 1500, seed=0)
    after = np.mean((agent.act(test_set.observations, True) - test_set.actions) ** 2)
    assert after < 0.02 * test_set.actions.var() and after < before / 50
    returns = evaluate(lambda o: agent.act(o, deterministic=True), "InvertedPendulum-v5", 3, 7)
    assert min(returns) == 1000.0


def test_actions_stay_within_bounds_even_for_out_of_bound_labels() -> None:
    data = expert_dataset(500, seed=1)
    data.actions = data.actions * 10  # labels up to +-30 with bounds +-3
    agent = BC(4, 1, -3.0, 3.0, config(), CPU, seed=0)
    losses = fit(agent, data, 200, seed=0)
    assert np.isfinite(losses).all()
    act = agent.act(np.random.default_rng(0).normal(0, 50, (1000, 4)), True)
    assert act.min() >= -3.0 and act.max() <= 3.0 and np.abs(act).max() > 2.9


def test_same_seed_same_numbers_and_checkpoint_resumes() -> None:
    data = expert_dataset(500, seed=2)
    first, second, other = (BC(4, 1, -3.0, 3.0, config(), CPU, seed=s) for s in (5, 5, 6))
    losses = [fit(agent, data, 20, seed=0) for agent in (first, second, other)]
    assert losses[0] == losses[1] and losses[0] != losses[2]
    resumed = BC(4, 1, -3.0, 3.0, config(), CPU, seed=9)
    resumed.load_state_dict({k: v.clone() for k, v in first.state_dict().items()})
    assert resumed.step == 20
    assert fit(resumed, data, 10, seed=3) == fit(first, data, 10, seed=3)
    with pytest.raises(OmbrlError, match="BC state"):
        BC(4, 1, -3.0, 3.0, BCConfig([8], 1e-3, 128), CPU, seed=0).load_state_dict(
            first.state_dict()
        )
