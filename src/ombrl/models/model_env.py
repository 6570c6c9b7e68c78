"""The learned MDP: batched branched rollouts, and the pessimism that makes them safe offline.

Rollouts start from dataset states and run h steps of the current policy in the model, all
samples in one batch (tens of thousands per call). Each step draws a random member among the
rollout's members (the elites or all networks), either one per sample (`per_sample`, MOPO /
MBPO) or one for the whole batch (`per_step`, offline-model-based-rl's `get_prediction`), and
for a probabilistic ensemble samples the next state from that member's Gaussian. The reward
comes from the task function (or the model's reward head), either of the sampled member's
transition (MOPO; offline-model-based-rl's partitioning modes) or averaged over the members
(offline-model-based-rl's penalty modes).

Pessimism (`Pessimism`) uses the uncertainty `u(s, a)` of the same members:
- `penalty`: `r - lambda * u` (MOPO with aleatoric u; epistemic-penalty with disagreement).
- `partitioning` (MOReL's HALT): where `u > threshold` the transition is terminal, so SAC
  never bootstraps through it, and its reward is replaced by (or has added) `halt_penalty`,
  or set to 0 (`truncate`, what mjrl's MOReL code does instead of the paper's penalty).
- `none`: MBPO.

Three kinds optimise something other than the task's return (the thesis's survival and offline
exploration modes). Each ends a path as `partitioning` does where `u > threshold` (epistemic):
- `survival`: reward 1 per model step; 0 on the out-of-distribution one.
- `exploration-penalty`: reward `lambda * u` (kept on the out-of-distribution step).
- `exploration-partitioning`: reward 1 where `u > lambda`, the model's reward elsewhere (as
  upstream has it), 0 on the out-of-distribution step.

Samples that reach a terminal (or HALT) state stop there; a transition whose prediction is not
finite is dropped, because a NaN target would poison every Q value it touches even when masked
by `1 - terminal`.

Only a `predict(obs, act) -> Prediction` callable and the elite list are needed, so this module
is testable with hand-written predictions and does not depend on how the model was trained.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ombrl.agents.buffer import Batch
from ombrl.errors import OmbrlError
from ombrl.models.ensemble import Prediction
from ombrl.models.uncertainty import UNCERTAINTY_KINDS, uncertainty
from ombrl.tasks import RewardFn, TerminalFn

#: Kinds that end a path where `u > threshold`; all but `partitioning` change the objective.
HALTING_KINDS = ("partitioning", "survival", "exploration-penalty", "exploration-partitioning")
PESSIMISM_KINDS = ("none", "penalty", *HALTING_KINDS)
REWARD_SOURCES = ("sampled", "mean")
MEMBER_DRAWS = ("per_sample", "per_step")
HALT_REWARDS = ("replace", "add", "truncate")


@dataclass(frozen=True)
class Pessimism:
    """How a rollout treats uncertain transitions (resolved numbers, not rules).

    Attributes:
        kind: one of `PESSIMISM_KINDS`: `none` (MBPO), `penalty`, `partitioning`, or an
            objective other than the task's (`survival`, `exploration-*`).
        uncertainty: `epistemic`, `max_norm` or `max_var` (`ombrl.models.uncertainty`).
        scale: obs_dim weights given to `uncertainty` (None: raw units).
        penalty_lambda: lambda of `penalty` and `exploration-penalty`; the novelty level of
            `exploration-partitioning`.
        threshold: the halting kinds end a path at transitions with `u > threshold`.
        halt_reward: `replace` (MOReL paper, offline-model-based-rl), `add` (J-MOReL) or
            `truncate` (mjrl's code, its issue #45: reward 0, `halt_penalty` unused).
        halt_penalty: the reward of a HALT transition (`replace`) or what is added to it.
    """

    kind: str = "none"
    uncertainty: str = "max_norm"
    scale: Tensor | None = None
    penalty_lambda: float = 0.0
    threshold: float = math.inf
    halt_reward: str = "replace"
    halt_penalty: float = 0.0

    def __post_init__(self) -> None:
        for name, value, choices in (
            ("pessimism", self.kind, PESSIMISM_KINDS),
            ("uncertainty", self.uncertainty, UNCERTAINTY_KINDS),
            ("halt_reward", self.halt_reward, HALT_REWARDS),
        ):
            if value not in choices:
                raise OmbrlError(f"{name}: {value!r} is not one of {', '.join(choices)}")


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
    pessimism: Pessimism,
    reward_source: str,
    generator: torch.Generator,
    member_draw: str = "per_sample",
) -> tuple[Batch, dict[str, float]]:
    """Roll the policy out in the model from `start_obs` for up to `length` steps.

    Args:
        predict: `(obs B x obs_dim, act B x act_dim) -> Prediction` with E x B tensors.
        elites: member indices to sample the next state from and to measure `u` over (the
            elites, or every member).
        policy: `obs B x obs_dim -> act B x act_dim` (stochastic for exploration).
        start_obs: B x obs_dim start states.
        length: h, the rollout horizon.
        reward_fn: `(s, a, s') -> B` task reward, or None to use the model's reward head.
        terminal_fn: `(s, a, s') -> B` bool, the task's termination.
        pessimism: penalty, partitioning or none, with resolved numbers.
        reward_source: `sampled` (the sampled member's transition) or `mean` (the mean over
            `elites` of each one's mean prediction).
        generator: source of the member choice and the Gaussian noise.
        member_draw: `per_sample` (each sample its own random member each step) or
            `per_step` (one random member per step for the whole batch).

    Returns:
        The N <= B * h transitions (pessimistic rewards, terminal flags) and statistics:
        `rollout_reward` (mean reward after pessimism), `rollout_uncertainty` (mean u; absent
        without pessimism), `rollout_length` (mean steps per start state), `rollout_terminal`
        (share of start states that terminated, HALT included), `rollout_halted` (share of
        start states stopped by HALT; partitioning only).
    """
    if not elites:
        raise OmbrlError("rollout: the ensemble has no elite members")
    if member_draw not in MEMBER_DRAWS:
        raise OmbrlError(f"member_draw: {member_draw!r} is not one of {', '.join(MEMBER_DRAWS)}")
    if reward_source not in REWARD_SOURCES:
        raise OmbrlError(
            f"reward_source: {reward_source!r} is not one of {', '.join(REWARD_SOURCES)}"
        )
    device = start_obs.device
    elite_index = torch.as_tensor(elites, dtype=torch.long, device=device)
    obs = start_obs
    parts: list[Batch] = []
    u_sum, terminated, halted = 0.0, 0, 0
    for _ in range(length):
        step = model_step(
            predict,
            elite_index,
            obs,
            policy(obs),
            reward_fn,
            terminal_fn,
            pessimism,
            reward_source,
            generator,
            member_draw,
        )
        valid, terminal = step.valid, step.batch.terminal.bool()
        if step.u is not None:
            u_sum += float(step.u[valid].sum())
        parts.append(step.batch.select(valid))
        terminated += int((valid & terminal).sum())
        halted += int((valid & step.halt).sum())
        obs = step.batch.next_obs[valid & ~terminal]
        if obs.shape[0] == 0:
            break
    batch = Batch.cat(parts)
    b, count = start_obs.shape[0], len(batch)
    stats = {
        "rollout_reward": float(batch.rew.mean()) if count else 0.0,
        "rollout_length": count / b,
        "rollout_terminal": terminated / b,
    }
    if pessimism.kind != "none":
        stats["rollout_uncertainty"] = u_sum / count if count else 0.0
    if pessimism.kind in HALTING_KINDS:
        stats["rollout_halted"] = halted / b
    return batch, stats


class Step(NamedTuple):
    """One model step of B samples, every row kept (see `valid`)."""

    batch: Batch  # B transitions; terminal includes HALT
    valid: Tensor  # B bool: the prediction and reward are finite (the others are dropped)
    halt: Tensor  # B bool: ended by HALT (u > threshold)
    u: Tensor | None  # B uncertainty; None without pessimism


def model_step(
    predict: PredictFn,
    members: Tensor,
    obs: Tensor,
    act: Tensor,
    reward_fn: RewardFn | None,
    terminal_fn: TerminalFn,
    pessimism: Pessimism,
    reward_source: str,
    generator: torch.Generator,
    member_draw: str,
) -> Step:
    """Advance B samples by one model step under `act`; the arguments are `rollout`'s
    (`members` as a tensor of indices)."""
    n, device = obs.shape[0], obs.device
    with torch.no_grad():
        pred = predict(obs, act)
    draws = n if member_draw == "per_sample" else 1
    pick = torch.randint(len(members), (draws,), generator=generator, device=device)
    member = members[pick].expand(n)
    rows = torch.arange(n, device=device)
    next_obs = pred.next_obs_mean[member, rows]
    if pred.next_obs_var is not None:
        noise = torch.randn(next_obs.shape, generator=generator, device=device)
        next_obs = next_obs + pred.next_obs_var[member, rows].sqrt() * noise
    if reward_source == "sampled":
        rew = _sampled_reward(pred, member, rows, obs, act, next_obs, reward_fn, generator)
    else:
        rew = _mean_reward(pred, members, obs, act, reward_fn)
    terminal = terminal_fn(obs, act, next_obs)
    halt = torch.zeros_like(terminal)
    u = None
    if pessimism.kind != "none":
        u = uncertainty(pred, pessimism.uncertainty, pessimism.scale, members.tolist())
    if pessimism.kind == "penalty":
        rew = rew - pessimism.penalty_lambda * u
    elif pessimism.kind in HALTING_KINDS:
        halt = u > pessimism.threshold
        rew = halting_reward(rew, u, halt, pessimism)
        terminal = terminal | halt
    valid = torch.isfinite(next_obs).all(dim=-1) & torch.isfinite(rew)
    return Step(Batch(obs, act, rew, next_obs, terminal.float()), valid, halt, u)


def halting_reward(rew: Tensor, u: Tensor, halt: Tensor, pessimism: Pessimism) -> Tensor:
    """The reward of a halting kind's transitions (B), from the model's reward `rew`, the
    uncertainty `u` and where the path halts (`u > threshold`)."""
    zero, one = torch.zeros_like(rew), torch.ones_like(rew)
    if pessimism.kind == "survival":
        return torch.where(halt, zero, one)
    if pessimism.kind == "exploration-penalty":
        return pessimism.penalty_lambda * u
    if pessimism.kind == "exploration-partitioning":
        return torch.where(halt, zero, torch.where(u > pessimism.penalty_lambda, one, rew))
    return torch.where(halt, halt_reward(rew, pessimism), rew)


def halt_reward(rew: Tensor, pessimism: Pessimism) -> Tensor:
    """The reward a HALT transition gets instead of `rew` (B), by `pessimism.halt_reward`:
    `halt_penalty` (`replace`), `rew + halt_penalty` (`add`) or 0 (`truncate`)."""
    if pessimism.halt_reward == "add":
        return rew + pessimism.halt_penalty
    if pessimism.halt_reward == "replace":
        return torch.full_like(rew, pessimism.halt_penalty)
    return torch.zeros_like(rew)


def _sampled_reward(
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
    _check_reward_head(pred)
    rew = pred.reward_mean[member, rows]
    if pred.reward_var is not None:
        noise = torch.randn(rew.shape, generator=generator, device=rew.device)
        rew = rew + pred.reward_var[member, rows].sqrt() * noise
    return rew


def _mean_reward(
    pred: Prediction, elites: Tensor, obs: Tensor, act: Tensor, reward_fn: RewardFn | None
) -> Tensor:
    """The reward averaged over the elites: of each one's mean next state (task reward) or
    of each one's mean reward head; no sampling noise."""
    if reward_fn is None:
        _check_reward_head(pred)
        return pred.reward_mean[elites].mean(dim=0)
    means = pred.next_obs_mean[elites]
    k, n = means.shape[:2]
    per_member = reward_fn(obs.repeat(k, 1), act.repeat(k, 1), means.reshape(k * n, -1)).view(k, n)
    return per_member.mean(dim=0)


def _check_reward_head(pred: Prediction) -> None:
    if pred.reward_mean is None:
        raise OmbrlError("rollout: no task reward function and the ensemble predicts no reward")
