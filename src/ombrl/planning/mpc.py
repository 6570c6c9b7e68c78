"""The PETS model-predictive controller: plan a horizon, act its first step, replan.

The cost of a candidate action sequence is minus the task's planning reward
(`Task.plan_reward`: the environment's reward unless the task plans with a cost of its own, as
upstream's cartpole did) summed along each particle's predicted trajectory, averaged over the
candidate's particles (upstream handful-of-trials `MPC._compile_cost`). A particle that
reaches a terminal state stops earning (terminal states are absorbing: the environment would
have ended the episode). A particle whose cost is NaN counts as 1e6, as upstream's guard
(`MPC.py:316`); so does one whose predicted state stops being finite while it is alive (upstream's
cost of such a state is NaN; here the task's termination would otherwise end its earnings).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ombrl.planning.cem import CEMOptimizer, RandomOptimizer
from ombrl.planning.propagation import Propagator
from ombrl.tasks import Task

# Cost of a particle whose predicted return is NaN (upstream `MPC._compile_cost`).
NON_FINITE_COST = 1e6


def trajectory_costs(propagator: Propagator, task: Task, obs: Tensor, actions: Tensor) -> Tensor:
    """Cost of each candidate action sequence from the current observation.

    Args:
        propagator: moves the particles (one ensemble call per step).
        task: planning reward and termination functions.
        obs: obs_dim, the current observation (every particle starts there).
        actions: P x H x act candidate sequences.

    Returns:
        P costs: `-sum_t r_t` per particle (0 after its first terminal state; 1e6 when NaN
        or when a predicted state is not finite), averaged over the candidate's particles.
    """
    p, horizon, a = actions.shape
    acts = propagator.actions(actions)  # H x G x R x act (layout of `Propagator.start`)
    states = [propagator.start(obs.to(actions), p)]
    for t in range(horizon):
        states.append(propagator.advance(states[-1], acts[t]))
    # Rewards and ends of the whole horizon, one call each: (H+1) x G x R x obs states.
    path = torch.stack(states)
    d = path.shape[-1]
    flat = (path[:-1].reshape(-1, d), acts.reshape(-1, a), path[1:].reshape(-1, d))
    reward = task.plan_reward(*flat).view(acts.shape[:-1])
    done = task.terminal(*flat).view(acts.shape[:-1])
    # A particle earns at step t while no earlier step ended its episode.
    alive = done.cumsum(dim=0) == done.long()
    costs = -torch.where(alive, reward, 0.0).sum(dim=0)
    blown = (alive & ~torch.isfinite(path[1:]).all(dim=-1)).any(dim=0)
    costs = torch.where(torch.isnan(costs) | blown, NON_FINITE_COST, costs)
    return propagator.candidate_mean(costs)


class MPCAgent:
    """Replans every step from the previous plan shifted by one step (upstream `MPC`).

    Args:
        optimizer: `CEMOptimizer` or `RandomOptimizer`.
        propagator: the particle model.
        task: reward, termination and action bounds.
        horizon: H, planning horizon in steps.
    """

    def __init__(
        self,
        optimizer: CEMOptimizer | RandomOptimizer,
        propagator: Propagator,
        task: Task,
        horizon: int,
    ) -> None:
        self.optimizer, self.propagator, self.task = optimizer, propagator, task
        self.horizon = horizon
        shape = (horizon, task.act_dim)
        self.lower = torch.full(shape, float(task.action_low))
        self.upper = torch.full(shape, float(task.action_high))
        self.middle = (self.lower + self.upper) / 2
        # Upstream's initial variance (ub - lb)^2 / 16: two standard deviations from the
        # middle reach the bounds.
        self.init_var = (self.upper - self.lower).square() / 16
        self.plan = self.middle.clone()

    def reset(self) -> None:
        """Forget the previous plan (call at the start of every episode)."""
        self.plan = self.middle.clone()

    @torch.inference_mode()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """Plan H steps from `obs` (obs_dim) and return the plan's first action (act_dim)."""
        device = self.propagator.model.input_mean.device
        obs_t = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=device)

        def cost(actions: Tensor) -> Tensor:
            return trajectory_costs(self.propagator, self.task, obs_t, actions.to(device)).cpu()

        # Every step starts from the initial variance (upstream `MPC.act`, MPC.py:214).
        solution = self.optimizer.optimize(cost, self.plan, self.init_var)
        # Warm start: drop the step taken, append zeros (upstream MPC.py:215; the middle of
        # the bounds only at an episode's start, `reset`).
        self.plan = torch.cat([solution[1:], torch.zeros_like(solution[:1])])
        return solution[0].numpy().astype(np.float32)
