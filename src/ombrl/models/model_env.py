"""The learned MDP: batched branched rollouts with MOPO's aleatoric penalty.

Rollouts start from dataset states and run h steps of the current policy in the model, all
samples in one batch (tens of thousands per call). Each sample draws a random elite member per
step and, for a probabilistic ensemble, samples the next state from that member's Gaussian
(MOPO / MBPO). The reward comes from the task function of the sampled next state (or from the
model's reward head), minus `lambda * u` where `u` is the aleatoric uncertainty of the whole
ensemble at (s, a). Samples that reach a terminal state stop there; a transition whose
prediction is not finite is dropped, because a NaN target would poison every Q value it
touches even when masked by `1 - terminal`.

Only a `predict(obs, act) -> Prediction` callable and the elite list are needed, so this module
is testable with hand-written predictions and does not depend on how the model was trained.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ombrl.agents.buffer import Batch
from ombrl.errors import OmbrlError
from ombrl.models.ensemble import Prediction
from ombrl.models.uncertainty import aleatoric
from ombrl.tasks import RewardFn, TerminalFn

PredictFn = Callable[[Tensor, Tensor], Prediction]
PolicyFn = Callable[[Tensor], Tensor]


def rollout(
    predict: PredictFn,
    elites: list[int],
    policy: PolicyFn,
    start_obs: Tensor,
    length: int,
    reward_fn: RewardFn | None,
    terminal_fn: TerminalFn,
    penalty_lambda: float,
    uncertainty: str,
    generator: torch.Generator,
) -> tuple[Batch, dict[str, float]]:
    """Roll the policy out in the model from `start_obs` for up to `length` steps.

    Args:
        predict: `(obs B x obs_dim, act B x act_dim) -> Prediction` with E x B tensors.
        elites: member indices to sample the next state from.
        policy: `obs B x obs_dim -> act B x act_dim` (stochastic for exploration).
        start_obs: B x obs_dim start states.
        length: h, the rollout horizon.
        reward_fn: `(s, a, s') -> B` task reward, or None to use the model's reward head.
        terminal_fn: `(s, a, s') -> B` bool, the task's termination.
        penalty_lambda: lambda in `r - lambda * u` (0 disables the penalty).
        uncertainty: `max_norm` or `max_var` (see `ombrl.models.uncertainty.aleatoric`).
        generator: source of the member choice and the Gaussian noise.

    Returns:
        The N <= B * h transitions (penalised rewards, terminal flags) and statistics:
        `rollout_reward` (mean penalised reward), `rollout_uncertainty` (mean u),
        `rollout_length` (mean steps per start state), `rollout_terminal` (share of start
        states that terminated).
    """
    if not elites:
        raise OmbrlError("rollout: the ensemble has no elite members")
    device = start_obs.device
    elite_index = torch.as_tensor(elites, dtype=torch.long, device=device)
    obs = start_obs
    parts: list[Batch] = []
    u_sum, terminated = 0.0, 0
    for _ in range(length):
        n = obs.shape[0]
        act = policy(obs)
        with torch.no_grad():
            pred = predict(obs, act)
        member = elite_index[torch.randint(len(elites), (n,), generator=generator, device=device)]
        rows = torch.arange(n, device=device)
        next_obs = pred.next_obs_mean[member, rows]
        if pred.next_obs_var is not None:
            noise = torch.randn(next_obs.shape, generator=generator, device=device)
            next_obs = next_obs + pred.next_obs_var[member, rows].sqrt() * noise
        rew = _reward(pred, member, rows, obs, act, next_obs, reward_fn, generator)
        u = None
        if penalty_lambda or pred.next_obs_var is not None:
            u = aleatoric(pred, uncertainty)
            rew = rew - penalty_lambda * u
        terminal = terminal_fn(obs, act, next_obs)
        valid = torch.isfinite(next_obs).all(dim=-1) & torch.isfinite(rew)
        if u is not None:
            u_sum += float(u[valid].sum())
        parts.append(
            Batch(obs[valid], act[valid], rew[valid], next_obs[valid], terminal[valid].float())
        )
        alive = valid & ~terminal
        terminated += int((valid & terminal).sum())
        obs = next_obs[alive]
        if obs.shape[0] == 0:
            break
    batch = Batch.cat(parts)
    b, count = start_obs.shape[0], len(batch)
    stats = {
        "rollout_reward": float(batch.rew.mean()) if count else 0.0,
        "rollout_uncertainty": u_sum / count if count else 0.0,
        "rollout_length": count / b,
        "rollout_terminal": terminated / b,
    }
    return batch, stats


def _reward(
    pred: Prediction,
    member: Tensor,
    rows: Tensor,
    obs: Tensor,
    act: Tensor,
    next_obs: Tensor,
    reward_fn: RewardFn | None,
    generator: torch.Generator,
) -> Tensor:
    """The task reward of the sampled transition, or the sampled member's reward head."""
    if reward_fn is not None:
        return reward_fn(obs, act, next_obs)
    if pred.reward_mean is None:
        raise OmbrlError("rollout: no task reward function and the ensemble predicts no reward")
    rew = pred.reward_mean[member, rows]
    if pred.reward_var is not None:
        noise = torch.randn(rew.shape, generator=generator, device=rew.device)
        rew = rew + pred.reward_var[member, rows].sqrt() * noise
    return rew
