"""The thesis's survival and offline exploration modes on hand-built model transitions.

Two elites: member 0 predicts `s' = s`, member 1 `s' = s + s[1] e_0`, so the epistemic
uncertainty of a transition is exactly `|s[1]|`, written into the start states. The task
reward is 5 everywhere, so any other reward comes from the objective.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from ombrl.models.ensemble import Prediction
from ombrl.models.model_env import Pessimism, rollout
from ombrl.models.uncertainty import threshold

U = torch.tensor([0.2, 0.8, 1.6, 3.0])  # below and above the threshold 1.0 and lambda 0.5
THRESHOLD, LAMBDA, TASK_REWARD = 1.0, 0.5, 5.0


def predict(obs: Tensor, act: Tensor) -> Prediction:
    mean = obs.expand(2, -1, -1).clone()
    mean[1, :, 0] += obs[:, 1]
    return Prediction(mean, None, None, None)


def constant_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    return torch.full((obs.shape[0],), TASK_REWARD)


def never(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    return torch.zeros(obs.shape[0], dtype=torch.bool)


def zero_policy(obs: Tensor) -> Tensor:
    return torch.zeros(obs.shape[0], 1)


def one_step(kind: str, length: int = 1):
    start = torch.stack([torch.zeros_like(U), U], dim=1)
    pessimism = Pessimism(kind, "epistemic", penalty_lambda=LAMBDA, threshold=THRESHOLD)
    return rollout(
        predict,
        [0, 1],
        zero_policy,
        start,
        length,
        constant_reward,
        never,
        pessimism,
        "sampled",
        torch.Generator().manual_seed(0),
    )


OUT = torch.tensor([0.0, 0.0, 1.0, 1.0])  # u > 1.0: out of distribution


def test_survival_pays_one_per_step_and_zero_with_termination_out_of_distribution() -> None:
    batch, stats = one_step("survival")
    torch.testing.assert_close(batch.rew, torch.tensor([1.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(batch.terminal, OUT)
    assert stats["rollout_halted"] == 0.5


def test_exploration_penalty_pays_lambda_u_and_ends_out_of_distribution() -> None:
    batch, _ = one_step("exploration-penalty")
    torch.testing.assert_close(batch.rew, torch.tensor([0.1, 0.4, 0.8, 1.5]))
    torch.testing.assert_close(batch.terminal, OUT)


def test_exploration_partitioning_pays_one_for_novelty_and_zero_out_of_distribution() -> None:
    batch, _ = one_step("exploration-partitioning")
    # 0.2 < lambda keeps the task reward; 0.8 is novel and in distribution; the rest are out.
    torch.testing.assert_close(batch.rew, torch.tensor([TASK_REWARD, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(batch.terminal, OUT)


def test_paths_continue_only_while_in_distribution() -> None:
    # Member 1 moves s[0] but not s[1], so each path keeps its u: in-distribution paths run
    # the whole horizon, the others stop at their first step.
    batch, stats = one_step("survival", length=3)
    assert len(batch) == 2 * 3 + 2
    assert stats["rollout_length"] == 2.0 and stats["rollout_terminal"] == 0.5
    assert batch.rew.sum() == 6.0


def test_fraction_rule_is_between_the_datasets_mean_and_max() -> None:
    values = np.array([1.0, 2.0, 3.0, 10.0])  # mean 4, max 10
    assert threshold(values, "fraction", 0.0) == pytest.approx(4.0)
    assert threshold(values, "fraction", 0.5) == pytest.approx(7.0)
    assert threshold(values, "fraction", 1.0) == pytest.approx(10.0)
