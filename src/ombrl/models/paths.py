"""Whole policy paths in the learned model, for on-policy learners (MOReL / J-MOReL's NPG).

Unlike the short branched rollouts of `model_env.rollout` (SAC), an NPG iteration rolls the
current policy out for up to `horizon` steps (1000 for HalfCheetah) from a fixed pool of start
states, and keeps each path whole: the learner needs every path's steps in order, whether it
ended in a terminal state or at the horizon, and the state to bootstrap from.

All N paths step through the ensemble together: one batched `predict` call per time step on
the paths still alive (never a loop over members or paths). With `path_member` (mjrl's and
J-MOReL's scheme, `per-model`) path n follows the mean prediction of one member for its whole
length and the reward is the task function of that transition (or the member's mean reward
head); without it (`sampled`) each step draws a random elite and, for a probabilistic
ensemble, samples its Gaussian, as `rollout` does. Uncertainty and thresholds are
`ombrl.models.uncertainty` through `Pessimism`, as for SAC, measured over `halt_members`.

HALT (`pessimism.kind == "partitioning"`): a transition with `u > threshold` is a violation.
`truncation` says where a path that violated ends:
- `first`: at its first violation; that transition is the path's last step and its reward
  becomes `halt_reward(rew, pessimism)` (replace / add / truncate, `model_env.halt_reward`).
- `j-morel`: mjrl's and J-MOReL's rule, which cuts a fully rolled-out path to
  `T = max(4, v + 1)` steps, v the 0-based index of its first violating step. So a path whose
  first violation is at step 3 or later ends exactly as under `first`; one that violates at
  step 0, 1 or 2 keeps stepping (later violations ignored) until it has 4 steps. Its last kept
  step, not the violating one, gets the HALT reward. A path that ends earlier for another
  reason after violating (a task termination, the horizon < 4, or a non-finite prediction)
  gets the HALT reward on its last kept step instead, as upstream (`rewards[-1] += penalty`
  after the cut). Upstream never checks a path's last transition (its disagreement covers
  only observations[:-1]); here every transition is checked.

What follows the last step (`halt_value`): `bootstrap` is upstream's: both set `terminated`
after the HALT cut, comparing T with the already-cut length, so under HALT no path is
terminal (a task termination included) and each bootstraps from the value of its last kept
state (`last_obs` is that state, at `last_time = length - 1`: mjrl's `b[-1]`); without HALT a
task termination is terminal. `absorbing` is the MOReL paper's: HALT and task terminations are
terminal (value 0), and a path cut by the horizon bootstraps from its next state.

A transition whose prediction (or reward) is not finite is not used: the path ends before it,
not terminal (it bootstraps from its last finite state), except under `j-morel` after a
violation (above). Paths shorter than `min_steps` observations (upstream: 5, counting the
state a task termination or HALT ended in) are dropped and counted in `Paths.dropped`.

Only a `predict(obs, act) -> Prediction` callable and the member lists are needed, so the
module is testable with hand-written dynamics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ombrl.errors import OmbrlError
from ombrl.models.ensemble import Prediction
from ombrl.models.model_env import Pessimism, PolicyFn, PredictFn, _sampled_reward, halt_reward
from ombrl.models.uncertainty import uncertainty
from ombrl.tasks import RewardFn, TerminalFn

TRUNCATIONS = ("first", "j-morel")
#: `per-model`: each path follows one member's mean for its whole length (mjrl, J-MOReL);
#: `sampled`: a random elite per step, its Gaussian sampled (ombrl's earlier paths, MOPO-like).
PATH_SCHEMES = ("per-model", "sampled")
#: What follows a path's last step: `bootstrap` (mjrl / J-MOReL: under HALT no path is
#: terminal, each bootstraps from the value of its last kept state) or `absorbing` (the MOReL
#: paper: HALT and task terminations are absorbing, value 0; a path cut by the horizon
#: bootstraps from the value of its next state).
HALT_VALUES = ("bootstrap", "absorbing")
#: mjrl and J-MOReL drop model paths shorter than this many observations.
UPSTREAM_MIN_PATH_STEPS = 5
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
        terminal: N bool, the value after the path's last step is 0. Otherwise the path
            bootstraps V(last_obs, last_time).
        last_obs: N x obs_dim, the state whose value follows the last step: the next state of
            the last valid step (`absorbing`; the start state for an empty path) or the last
            kept state itself (`bootstrap`, mjrl's `b[-1]`).
        lengths: N int64, valid steps per path.
        halted: N bool, ended by HALT.
        horizon: T, the horizon the paths were rolled out with.
        last_time: N int64, the time index of `last_obs` (its value's time feature).
        dropped: paths rolled out but dropped for being short (not among the N).
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
    last_time: Tensor
    dropped: int = 0

    def __len__(self) -> int:
        return self.obs.shape[0]

    def returns(self) -> Tensor:
        """Undiscounted return of every path in the model, N."""
        return (self.rew * self.mask).sum(dim=1)

    def statistics(self) -> dict[str, float]:
        """`paths_truncated` (share ended by HALT), `paths_terminal` (share ended terminal,
        HALT included), `path_length` (mean steps), `path_return` (mean undiscounted return in
        the model: the train score), `paths_dropped` (share of the rolled-out paths dropped
        as too short)."""
        return {
            "paths_dropped": self.dropped / max(1, len(self) + self.dropped),
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
    *,
    path_member: Tensor | None = None,
    halt_members: list[int] | None = None,
    halt_value: str = "absorbing",
    min_steps: int = 0,
) -> Paths:
    """Roll `policy` out in the model from every start state for up to `horizon` steps.

    Args:
        predict: `(obs B x obs_dim, act B x act_dim) -> Prediction` with E x B tensors.
        elites: members the `sampled` scheme draws from (and u's members by default).
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
        path_member: N member indices: path n follows the mean prediction of member
            `path_member[n]` at every step (`per-model`); None: the `sampled` scheme.
        halt_members: the members u is measured over (None: `elites`).
        halt_value: `bootstrap` or `absorbing` (`HALT_VALUES`).
        min_steps: paths shorter than this are dropped, counted as upstream counts them
            (observations: a path that ended by task termination or HALT counts the state it
            ended in); 0 keeps every path.

    Returns:
        The padded `Paths`.
    """
    if not elites:
        raise OmbrlError("model paths: the ensemble has no elite members")
    if truncation not in TRUNCATIONS:
        raise OmbrlError(f"truncation: {truncation!r} is not one of {', '.join(TRUNCATIONS)}")
    if halt_value not in HALT_VALUES:
        raise OmbrlError(f"halt_value: {halt_value!r} is not one of {', '.join(HALT_VALUES)}")
    if horizon < 1:
        raise OmbrlError(f"horizon: {horizon} must be at least 1")
    device = start_obs.device
    n, obs_dim = start_obs.shape
    if path_member is not None and path_member.shape != (n,):
        raise OmbrlError(
            f"model paths: path_member has shape {tuple(path_member.shape)}, not ({n},)"
        )
    elite_index = torch.as_tensor(elites, dtype=torch.long, device=device)
    measured = elites if halt_members is None else halt_members
    partitioning = pessimism.kind == "partitioning"
    j_morel = partitioning and truncation == "j-morel"

    obs_buf = start_obs.new_zeros(n, horizon, obs_dim)
    act_buf: Tensor | None = None
    rew_buf = start_obs.new_zeros(n, horizon)
    lengths = torch.zeros(n, dtype=torch.long, device=device)
    terminal = torch.zeros(n, dtype=torch.bool, device=device)
    failed = torch.zeros(n, dtype=torch.bool, device=device)  # ended by task termination
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
            if path_member is not None:
                member = path_member[alive]
                next_obs = pred.next_obs_mean[member, rows]
                rew = _mean_member_reward(pred, member, rows, obs, model_act, next_obs, reward_fn)
            else:
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
                u = uncertainty(pred, pessimism.uncertainty, pessimism.scale, measured)
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
            failed[alive[done]] = True
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
    last_time = lengths.clone()
    if halt_value == "bootstrap":
        # mjrl / J-MOReL: `terminated` is set after the HALT cut, so under HALT it is always
        # False; without HALT only a task termination is terminal. Every other path
        # bootstraps from the baseline's value of its last kept state, b[-1].
        terminal = failed.clone() if not partitioning else torch.zeros_like(terminal)
        some = lengths > 0
        last_time = (lengths - 1).clamp_min(0)
        last_obs = torch.where(some.unsqueeze(1), obs_buf[torch.arange(n), last_time], start_obs)
    dropped = 0
    if min_steps > 0:
        observations = lengths + (failed | halted).long()
        keep_rows = torch.nonzero(observations >= min_steps).squeeze(1)
        dropped = n - keep_rows.numel()
        obs_buf, act_buf, rew_buf = obs_buf[keep_rows], act_buf[keep_rows], rew_buf[keep_rows]
        terminal, last_obs, lengths = terminal[keep_rows], last_obs[keep_rows], lengths[keep_rows]
        halted, last_time = halted[keep_rows], last_time[keep_rows]
    mask = torch.arange(horizon, device=device) < lengths.unsqueeze(1)
    return Paths(
        obs_buf,
        act_buf,
        rew_buf,
        mask,
        terminal,
        last_obs,
        lengths,
        halted,
        horizon,
        last_time,
        dropped,
    )


def _mean_member_reward(
    pred: Prediction,
    member: Tensor,
    rows: Tensor,
    obs: Tensor,
    act: Tensor,
    next_obs: Tensor,
    reward_fn: RewardFn | None,
) -> Tensor:
    """The task reward of the member's mean transition, or its reward head's mean."""
    if reward_fn is not None:
        return reward_fn(obs, act, next_obs)
    if pred.reward_mean is None:
        raise OmbrlError("model paths: no task reward function and the ensemble predicts no reward")
    return pred.reward_mean[member, rows]
