"""Per-environment reward and termination functions, as batched torch code.

Model rollouts need the reward and the end of an episode for states the simulator never
visited, so each supported environment family gets the formulas its gymnasium source uses,
written for batches: `reward(s, a, s') -> B` and `terminal(s, a, s') -> B bool`.

The locomotion tasks pay the finite-difference x-velocity over the step, but x is not in the
observation; the mean of the velocity at s and at s' approximates it 10-20x better than the
velocity at s' alone. Versions differ where gymnasium's do: `-v4` pays the healthy bonus (and
InvertedPendulum its 1) on the terminating step too, `-v5` does not.

Reacher-v5 and Pusher-v5 (the PETS manipulation tasks) pay distances measured after the step,
and their observations carry exactly what those distances need, so their rewards are exact
functions of (a, s'): Reacher's `fingertip - target` is obs[8:10] (both bodies move in the
plane z = 0.01, so the dropped z difference is always 0), Pusher's arm tip, object and goal
positions are obs[14:17], obs[17:20], obs[20:23]. Neither ever terminates. Only `-v5` is
supported for them: `-v4` pays the distances before the step (at s) and loads another model.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from ombrl.errors import OmbrlError

RewardFn = Callable[[Tensor, Tensor, Tensor], Tensor]
TerminalFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Task:
    """What a learned MDP needs from the real one.

    Attributes:
        name: family name, e.g. "hopper".
        env_id: the gymnasium id to evaluate in, e.g. "Hopper-v4".
        obs_dim: observation size.
        act_dim: action size.
        action_low: lower action bound (the same for every dimension).
        action_high: upper action bound.
        reward: `(obs B x obs, act B x act, next_obs B x obs) -> B` float reward.
        terminal: `(obs, act, next_obs) -> B` bool, true when the episode ends (no bootstrap).
        planning_reward: what a planner maximises instead of `reward`, where the reward gives it
            too little to rank candidates by (None: the reward itself); see `plan_reward`.
        angle_dims: observation columns that are angles of a free joint, which upstream PETS
            gives its model as sine and cosine (`obs_preproc`: the pole's angle of its
            cartpole, the root's pitch of its half-cheetah); `ombrl.models.ensemble.
            angle_features`.
    """

    name: str
    env_id: str
    obs_dim: int
    act_dim: int
    action_low: float
    action_high: float
    reward: RewardFn
    terminal: TerminalFn
    planning_reward: RewardFn | None = None
    angle_dims: tuple[int, ...] = ()

    def plan_reward(self, obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
        """The reward a planner (PETS) maximises: `planning_reward` if the task has one, else
        the environment's `reward`. Upstream PETS plans each task with a cost function of its
        own (its cartpole: a smooth distance of the pole tip), which need not be the reward the
        returns are measured in."""
        return (self.planning_reward or self.reward)(obs, act, next_obs)


def _not_finite(x: Tensor) -> Tensor:
    return ~torch.isfinite(x).all(dim=-1)


def _pendulum_terminal(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    return _not_finite(next_obs) | (next_obs[:, 1].abs() > 0.2)


def _pendulum_reward(obs: Tensor, act: Tensor, next_obs: Tensor, paid_on_terminal: bool) -> Tensor:
    if paid_on_terminal:
        return torch.ones(next_obs.shape[0], dtype=next_obs.dtype, device=next_obs.device)
    return (~_pendulum_terminal(obs, act, next_obs)).to(next_obs.dtype)


# The pole's length in gymnasium's inverted_pendulum.xml (and in upstream PETS's cartpole).
POLE_LENGTH = 0.6


def _pendulum_planning_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """InvertedPendulum's planning reward: upstream PETS's cartpole cost, paid while alive.

    The environment pays 1 per step upright, which leaves a planner nothing to choose between
    candidates that all survive the horizon, so the cart drifts towards the end of its rail
    (|x| = 1) and the pole falls near it. Upstream PETS planned its cartpole with
    `exp(-|tip - (0, L)|^2 / L^2) - 0.01 |a|^2`: the pole tip's distance to the upright pole
    above x = 0, one smooth term for the cart's position and the pole's angle. The distance
    term is paid only on steps that do not terminate: falling ends a particle's earnings.
    """
    x, angle = next_obs[:, 0], next_obs[:, 1]
    tip_x = x + POLE_LENGTH * torch.sin(angle)
    tip_drop = POLE_LENGTH * (1 - torch.cos(angle))
    closeness = torch.exp(-(tip_x.square() + tip_drop.square()) / POLE_LENGTH**2)
    alive = ~_pendulum_terminal(obs, act, next_obs)
    return torch.where(alive, closeness, 0.0) - 0.01 * act.square().sum(dim=-1)


def _hopper_terminal(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    height, angle = next_obs[:, 0], next_obs[:, 1]
    healthy = (height > 0.7) & (angle.abs() < 0.2) & (next_obs[:, 1:].abs() < 100.0).all(dim=-1)
    return ~healthy | _not_finite(next_obs)


def _walker_terminal(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    height, angle = next_obs[:, 0], next_obs[:, 1]
    healthy = (height > 0.8) & (height < 2.0) & (angle.abs() < 1.0)
    return ~healthy | _not_finite(next_obs)


def _never_terminal(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    return torch.zeros(next_obs.shape[0], dtype=torch.bool, device=next_obs.device)


def _locomotion_reward(
    obs: Tensor,
    act: Tensor,
    next_obs: Tensor,
    velocity_index: int,
    ctrl_cost: float,
    terminal: TerminalFn | None,
    bonus_on_terminal: bool,
) -> Tensor:
    """`v - ctrl_cost |a|^2` (+ 1 while healthy when `terminal` is given)."""
    velocity = 0.5 * (obs[:, velocity_index] + next_obs[:, velocity_index])
    reward = velocity - ctrl_cost * act.square().sum(dim=-1)
    if terminal is not None:
        if bonus_on_terminal:
            reward = reward + 1.0
        else:
            reward = reward + (~terminal(obs, act, next_obs)).to(reward.dtype)
    return reward


def _reacher_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Reacher-v5: `-|fingertip - target| - |a|^2`, the distance at s' (obs[8:10])."""
    return -next_obs[:, 8:10].norm(dim=-1) - act.square().sum(dim=-1)


def _pusher_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Pusher-v5: `-0.5 |object - tip| - |object - goal| - 0.1 |a|^2`, positions at s'."""
    tip, item, goal = next_obs[:, 14:17], next_obs[:, 17:20], next_obs[:, 20:23]
    return (
        -0.5 * (item - tip).norm(dim=-1)
        - (item - goal).norm(dim=-1)
        - 0.1 * act.square().sum(dim=-1)
    )


@dataclass(frozen=True)
class _Family:
    name: str
    obs_dim: int
    act_dim: int
    action_bound: float
    make_reward: Callable[[bool], RewardFn]  # argument: paid on the terminating step (-v4)
    terminal: TerminalFn
    planning_reward: RewardFn | None = None  # Task.planning_reward
    angle_dims: tuple[int, ...] = ()  # Task.angle_dims
    versions: tuple[str, ...] = ("4", "5")  # gymnasium versions whose reward this is


_FAMILIES = {
    "InvertedPendulum": _Family(
        "inverted_pendulum",
        4,
        1,
        3.0,
        lambda v4: partial(_pendulum_reward, paid_on_terminal=v4),
        _pendulum_terminal,
        planning_reward=_pendulum_planning_reward,
        angle_dims=(1,),  # obs = (cart x, pole angle, their velocities): cartpole.py:43-47
    ),
    "Hopper": _Family(
        "hopper",
        11,
        3,
        1.0,
        lambda v4: partial(
            _locomotion_reward,
            velocity_index=5,
            ctrl_cost=1e-3,
            terminal=_hopper_terminal,
            bonus_on_terminal=v4,
        ),
        _hopper_terminal,
    ),
    "Walker2d": _Family(
        "walker2d",
        17,
        6,
        1.0,
        lambda v4: partial(
            _locomotion_reward,
            velocity_index=8,
            ctrl_cost=1e-3,
            terminal=_walker_terminal,
            bonus_on_terminal=v4,
        ),
        _walker_terminal,
    ),
    "HalfCheetah": _Family(
        "halfcheetah",
        17,
        6,
        1.0,
        lambda v4: partial(
            _locomotion_reward,
            velocity_index=8,
            ctrl_cost=0.1,
            terminal=None,
            bonus_on_terminal=False,
        ),
        _never_terminal,
        # obs = (rootz, root pitch, joints, velocities): upstream's observation from its obs[1]
        # on (halfcheetah.py:43-47 feeds obs[1], sin and cos of obs[2], obs[3:]).
        angle_dims=(1,),
    ),
    "Reacher": _Family(
        "reacher", 10, 2, 1.0, lambda v4: _reacher_reward, _never_terminal, versions=("5",)
    ),
    "Pusher": _Family(
        "pusher", 23, 7, 2.0, lambda v4: _pusher_reward, _never_terminal, versions=("5",)
    ),
}


# ------------------------------------------------ the model functions MOReL's code ships
# mjrl (v2, projects/model_based_npg/utils/reward_functions/gym_hopper.py) works on masked
# observations o = mask * s (1 positions, 0.02 velocities); written here on raw s, which is
# the same function: its x-velocity o[5] / 0.02 is s[5] clipped to +-500, its limit
# |o| < 10 is |s| < 10 for positions and < 500 for velocities. It pays the reward of the
# state s_t (a path's step t is (s_t, a_t)); J-MOReL pays that of s_{t+1}.
MJRL_MASK_VELOCITY = 0.02


def _mjrl_hopper_mask(obs: Tensor) -> Tensor:
    mask = torch.full((obs.shape[-1],), MJRL_MASK_VELOCITY, device=obs.device, dtype=obs.dtype)
    mask[:5] = 1.0
    return mask


def _mjrl_hopper_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """mjrl gym_hopper.py reward_function: of s_t, `v + 1[h > 0.7, |ang| <= 0.2] - 1e-3 |a|^2`
    on masked observations clipped to +-10, actions clipped to +-1."""
    o = (obs * _mjrl_hopper_mask(obs)).clamp(-10.0, 10.0)
    alive = (o[:, 0] > 0.7) & (o[:, 1].abs() <= 0.2)
    power = act.clamp(-1.0, 1.0).square().sum(dim=-1)
    return o[:, 5] / MJRL_MASK_VELOCITY + alive.to(obs.dtype) - 1e-3 * power


def _mjrl_hopper_terminal(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """mjrl gym_hopper.py termination_function on s': not (|masked s'| < 10 everywhere,
    height > 0.7 and |angle| < 0.15)."""
    o = next_obs * _mjrl_hopper_mask(next_obs)
    healthy = (o.abs() < 10.0).all(dim=-1) & (o[:, 0] > 0.7) & (o[:, 1].abs() < 0.15)
    return ~healthy | _not_finite(next_obs)


def _j_morel_hopper_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """J-MOReL reward_functions/gym_hopper.py reward_fn: of s' clipped to +-10,
    `v + 1[h > 0.7, |ang| < 0.2] - 1e-3 |a|^2`, actions clipped to +-1."""
    o = next_obs.clamp(-10.0, 10.0)
    alive = (o[:, 0] > 0.7) & (o[:, 1].abs() < 0.2)
    power = act.clamp(-1.0, 1.0).square().sum(dim=-1)
    return o[:, 5] + alive.to(obs.dtype) - 1e-3 * power


def _j_morel_hopper_terminal(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """J-MOReL gym_hopper.py termination_fn on s': not (finite, h > 0.7 and |angle| < 0.2)."""
    healthy = (next_obs[:, 0] > 0.7) & (next_obs[:, 1].abs() < 0.2)
    return ~healthy | _not_finite(next_obs)


def _j_morel_halfcheetah_reward(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """J-MOReL gym_halfcheetah.py reward_fn: of s' clipped to +-100, `v - 0.1 |a|^2`."""
    power = act.clamp(-1.0, 1.0).square().sum(dim=-1)
    return next_obs[:, 8].clamp(-100.0, 100.0) - 0.1 * power


#: (code, task name) -> the reward and termination that code's MOReL uses in the model.
UPSTREAM_MODEL_FUNCTIONS: dict[tuple[str, str], tuple[RewardFn, TerminalFn]] = {
    ("mjrl", "hopper"): (_mjrl_hopper_reward, _mjrl_hopper_terminal),
    ("j-morel", "hopper"): (_j_morel_hopper_reward, _j_morel_hopper_terminal),
    ("j-morel", "halfcheetah"): (_j_morel_halfcheetah_reward, _never_terminal),
}
MODEL_FUNCTIONS = ("upstream", "task")


def model_functions(task: Task, code: str, which: str) -> tuple[RewardFn, TerminalFn]:
    """The reward and termination a MOReL run uses in the model.

    Args:
        task: the task.
        code: `mjrl` (MOReL) or `j-morel`, whose functions `upstream` means.
        which: `upstream` (that code's own functions where it ships them for this task, the
            task's elsewhere) or `task` (the gymnasium formulas of `Task`).
    """
    if which not in MODEL_FUNCTIONS:
        raise OmbrlError(f"model_functions: {which!r} is not one of {', '.join(MODEL_FUNCTIONS)}")
    if which == "upstream" and (code, task.name) in UPSTREAM_MODEL_FUNCTIONS:
        return UPSTREAM_MODEL_FUNCTIONS[(code, task.name)]
    return task.reward, task.terminal


def get_task(env_id: str) -> Task:
    """The task functions of a gymnasium MuJoCo id.

    Args:
        env_id: "{Family}-v4" or "{Family}-v5", Family one of InvertedPendulum, Hopper,
            Walker2d, HalfCheetah; or "Reacher-v5", "Pusher-v5".

    Raises:
        OmbrlError: an unknown family or version.
    """
    match = re.fullmatch(r"(\w+)-v([45])", env_id)
    family = _FAMILIES.get(match.group(1)) if match else None
    if family is None or match.group(2) not in family.versions:
        known = ", ".join(
            f"{name}-" + "/".join(f"v{v}" for v in f.versions) for name, f in _FAMILIES.items()
        )
        raise OmbrlError(f"env: {env_id!r} has no task functions (known: {known})")
    v4 = match.group(2) == "4"
    return Task(
        name=family.name,
        env_id=env_id,
        obs_dim=family.obs_dim,
        act_dim=family.act_dim,
        action_low=-family.action_bound,
        action_high=family.action_bound,
        reward=family.make_reward(v4),
        terminal=family.terminal,
        planning_reward=family.planning_reward,
        angle_dims=family.angle_dims,
    )
