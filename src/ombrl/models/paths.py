"""Whole policy paths in the learned model, for on-policy learners (MOReL / J-MOReL's NPG).

Unlike the short branched rollouts of `model_env.rollout` (SAC), an NPG iteration rolls the
current policy out for up to `horizon` steps (1000 for HalfCheetah) from a fixed pool of start
states, and keeps each path whole: the learner needs every path's steps in order, whether it
ended in a terminal state or at the horizon, and the state to bootstrap from.

All N paths step through the ensemble together: one batched `predict` call per time step on
the paths still alive (never a loop over members or paths). Each path draws a random elite per
step and, for a probabilistic ensemble, samples that member's Gaussian, as `rollout` does; the
reward is the task function of the sampled transition (or the sampled member's reward head).
Uncertainty and thresholds are `ombrl.models.uncertainty` through `Pessimism`, as for SAC.

HALT (`pessimism.kind == "partitioning"`): a transition with `u > threshold` is a violation.
`truncation` says where a path that violated ends:
- `first`: at its first violation. That transition is the path's last step, it is terminal
  (its value is 0: nothing is bootstrapped through it) and its reward becomes
  `halt_reward(rew, pessimism)` (replace / add / truncate, see `model_env.halt_reward`).
- `j-morel`: J-MOReL's (and mjrl's) upstream rule, which cuts a fully rolled-out path to
  `T = max(4, v + 1)` steps, v the 0-based index of its first violating step. So a path whose
  first violation is at step 3 or later ends exactly as under `first`; one that violates at
  step 0, 1 or 2 keeps stepping (later violations ignored) until it has 4 steps. Its last kept
  step, not the violating one, gets the HALT reward, and the path is terminal. A path that ends
  earlier for another reason after violating (a task termination, the horizon < 4, or a
  non-finite prediction) gets the HALT reward on its last kept step instead, as upstream
  (`rewards[-1] += penalty` after the cut). Two upstream defects are not copied: upstream never
  marks the truncated path terminal (it compares T with the already-cut length), and it never
  checks the last step of a path (its disagreement covers only observations[:-1]).

A task termination ends a path as terminal. A transition whose prediction (or reward) is not
finite is not used: the path ends before it, not terminal (it bootstraps from its last finite
state), except under `j-morel` after a violation (above).

Only a `predict(obs, act) -> Prediction` callable and the elite list are needed, so the module
is testable with hand-written dynamics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ombrl.errors import OmbrlError
from ombrl.models.model_env import Pessimism, PolicyFn, PredictFn, _sampled_reward, halt_reward
from ombrl.models.uncertainty import uncertainty
from ombrl.tasks import RewardFn, TerminalFn

TRUNCATIONS = ("first", "j-morel")
# J-MOReL / mjrl never cut a path below this many steps ("corner cases of very short truncation").
J_MOREL_MIN_STEPS = 4


@dataclass
class Paths:
    """N padded paths of up to T = horizon steps; step t of path n is valid iff t < lengths[n].

    Attributes:
        obs: N x T x obs_dim, s_t (zeros past the end).
        act: N x T x act_dim, the policy's actions as sampled (before any clipping to bounds:
            what its log-likelihood is of).
        rew: N x T, r_t after pessimism (zeros past the end).
        mask: N x T bool, valid steps.
        terminal: N bool, the path ended in a terminal transition (task or HALT): the value
            after its last step is 0. Otherwise it stopped at the horizon (or before a
            non-finite prediction) and bootstraps V(last_obs).
        last_obs: N x obs_dim, the next state of the last valid step (the start state for an
            empty path).
        lengths: N int64, valid steps per path.
        halted: N bool, ended by HALT.
        horizon: T, the horizon the paths were rolled out with (the time feature's scale).
    """

    obs: Tensor
    act: Tensor
    rew: Tensor
    mask: Tensor
    terminal: Tensor
    last_obs: Tensor
    lengths: Tensor
    halted: Tensor
    horizon: int

    def __len__(self) -> int:
        return self.obs.shape[0]

    def returns(self) -> Tensor:
        """Undiscounted return of every path in the model, N."""
        return (self.rew * self.mask).sum(dim=1)

    def statistics(self) -> dict[str, float]:
        """`paths_truncated` (share ended by HALT), `paths_terminal` (share ended terminal,
        HALT included), `path_length` (mean steps), `path_return` (mean undiscounted return in
        the model: the train score)."""
        return {
            "paths_truncated": self.halted.float().mean().item(),
            "paths_terminal": self.terminal.float().mean().item(),
            "path_length": self.lengths.float().mean().item(),
            "path_return": self.returns().mean().item(),
        }


def model_paths(
    predict: PredictFn,
    elites: list[int],
    policy: PolicyFn,
    start_obs: Tensor,
    horizon: int,
    reward_fn: RewardFn | None,
    terminal_fn: TerminalFn,
    pessimism: Pessimism,
    truncation: str,
    generator: torch.Generator,
    action_low: float | Tensor | None = None,
    action_high: float | Tensor | None = None,
) -> Paths:
    """Roll `policy` out in the model from every start state for up to `horizon` steps.

    Args:
        predict: `(obs B x obs_dim, act B x act_dim) -> Prediction` with E x B tensors.
        elites: member indices to sample the next state from and to measure u over.
        policy: `obs B x obs_dim -> act B x act_dim`, stochastic (it draws its own noise).
        start_obs: N x obs_dim, one path per row.
        horizon: T, the most steps of a path.
        reward_fn: `(s, a, s') -> B` task reward, or None to use the model's reward head.
        terminal_fn: `(s, a, s') -> B` bool, the task's termination.
        pessimism: `none`, `penalty` (`r - lambda u`) or `partitioning` (HALT).
        truncation: `first` or `j-morel` (module docstring); read only under partitioning.
        generator: source of the member choice and the model's Gaussian noise.
        action_low, action_high: bounds the model, reward and termination see the actions
            clipped to, as an environment would (the stored actions stay unclipped); None
            leaves actions as they are.

    Returns:
        The padded `Paths`.
    """
    if not elites:
        raise OmbrlError("model paths: the ensemble has no elite members")
    if truncation not in TRUNCATIONS:
        raise OmbrlError(f"truncation: {truncation!r} is not one of {', '.join(TRUNCATIONS)}")
    if horizon < 1:
        raise OmbrlError(f"horizon: {horizon} must be at least 1")
    device = start_obs.device
    n, obs_dim = start_obs.shape
    elite_index = torch.as_tensor(elites, dtype=torch.long, device=device)
    partitioning = pessimism.kind == "partitioning"
    j_morel = partitioning and truncation == "j-morel"

    obs_buf = start_obs.new_zeros(n, horizon, obs_dim)
    act_buf: Tensor | None = None
    rew_buf = start_obs.new_zeros(n, horizon)
    lengths = torch.zeros(n, dtype=torch.long, device=device)
    terminal = torch.zeros(n, dtype=torch.bool, device=device)
    halted = torch.zeros(n, dtype=torch.bool, device=device)
    violated = torch.zeros(n, dtype=torch.bool, device=device)  # j-morel: seen a violation
    last_obs = start_obs.clone()

    alive = torch.arange(n, device=device)  # indices of the paths still running
    obs = start_obs
    for t in range(horizon):
        m = alive.shape[0]
        act = policy(obs)
        if act_buf is None:
            act_buf = act.new_zeros(n, horizon, act.shape[-1])
        model_act = act
        if action_low is not None or action_high is not None:
            low = None if action_low is None else torch.as_tensor(action_low, device=device)
            high = None if action_high is None else torch.as_tensor(action_high, device=device)
            model_act = act.clamp(low, high)
        with torch.no_grad():
            pred = predict(obs, model_act)
            rows = torch.arange(m, device=device)
            member = elite_index[
                torch.randint(len(elites), (m,), generator=generator, device=device)
            ]
            next_obs = pred.next_obs_mean[member, rows]
            if pred.next_obs_var is not None:
                noise = torch.randn(next_obs.shape, generator=generator, device=device)
                next_obs = next_obs + pred.next_obs_var[member, rows].sqrt() * noise
            rew = _sampled_reward(
                pred, member, rows, obs, model_act, next_obs, reward_fn, generator
            )
            done = terminal_fn(obs, model_act, next_obs)
            valid = torch.isfinite(next_obs).all(dim=-1) & torch.isfinite(rew)
            halt = torch.zeros_like(done)
            if pessimism.kind != "none":
                u = uncertainty(pred, pessimism.uncertainty, pessimism.scale, elites)
                if pessimism.kind == "penalty":
                    rew = rew - pessimism.penalty_lambda * u
                    valid &= torch.isfinite(rew)
                elif j_morel:
                    seen = violated[alive] | (u > pessimism.threshold)
                    violated[alive] = seen
                    ends = done | (t >= J_MOREL_MIN_STEPS - 1) | (t == horizon - 1)
                    halt = seen & ends
                else:
                    halt = u > pessimism.threshold
            halt &= valid
            done &= valid
            if partitioning:
                rew = torch.where(halt, halt_reward(rew, pessimism), rew)

            kept = alive[valid]
            obs_buf[kept, t] = obs[valid]
            act_buf[kept, t] = act[valid]
            rew_buf[kept, t] = rew[valid]
            lengths[kept] = t + 1
            last_obs[kept] = next_obs[valid]
            terminal[alive[done | halt]] = True
            halted[alive[halt]] = True
            if j_morel:
                # A violated path that loses its next step to a non-finite prediction ends at
                # its previous step, which gets the HALT reward (upstream's `rewards[-1]`).
                cut = alive[~valid & violated[alive] & (lengths[alive] > 0)]
                if cut.numel():
                    last = lengths[cut] - 1
                    rew_buf[cut, last] = halt_reward(rew_buf[cut, last], pessimism)
                    terminal[cut] = True
                    halted[cut] = True
            keep = valid & ~done & ~halt
            alive, obs = alive[keep], next_obs[keep]
        if alive.numel() == 0:
            break

    if act_buf is None:  # unreachable: horizon >= 1 calls the policy once
        raise AssertionError("model_paths: the policy was never called")
    mask = torch.arange(horizon, device=device) < lengths.unsqueeze(1)
    return Paths(obs_buf, act_buf, rew_buf, mask, terminal, last_obs, lengths, halted, horizon)
