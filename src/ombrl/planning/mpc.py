"""The PETS model-predictive controller: plan a horizon, act its first step, replan.

The cost of a candidate action sequence is minus the task reward summed along each
particle's predicted trajectory, averaged over the candidate's particles (upstream
handful-of-trials `MPC._compile_cost`). A particle that reaches a terminal state stops
earning (terminal states are absorbing: the environment would have ended the episode), and a
non-finite particle cost counts as 1e6, as upstream's NaN guard.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ombrl.planning.cem import CEMOptimizer, RandomOptimizer
from ombrl.planning.propagation import Propagator
from ombrl.tasks import Task

# Cost of a particle whose predicted return is not finite (upstream).
NON_FINITE_COST = 1e6


def trajectory_costs(propagator: Propagator, task: Task, obs: Tensor, actions: Tensor) -> Tensor:
    """Cost of each candidate action sequence from the current observation.

    Args:
        propagator: moves the particles (one ensemble call per step).
        task: reward and termination functions.
        obs: obs_dim, the current observation (every particle starts there).
        actions: P x H x act candidate sequences.

    Returns:
        P costs: `-sum_t r_t` per particle (0 after its first terminal state; 1e6 when not
        finite), averaged over the candidate's particles.
    """
    p, horizon, a = actions.shape
    n = propagator.num_particles
    states = obs.to(actions).expand(p, n, obs.shape[-1])
    returns = torch.zeros(p, n, dtype=actions.dtype, device=actions.device)
    alive = torch.ones(p, n, dtype=torch.bool, device=actions.device)
    for t in range(horizon):
        act_t = actions[:, t]
        next_states = propagator.step(states, act_t)
        flat = (states.reshape(p * n, -1), act_t.repeat_interleave(n, dim=0))
        next_flat = next_states.reshape(p * n, -1)
        reward = task.reward(*flat, next_flat).view(p, n)
        done = task.terminal(*flat, next_flat).view(p, n)
        returns += torch.where(alive, reward, torch.zeros_like(reward))
        alive &= ~done
        states = next_states
    costs = -returns
    costs = torch.where(torch.isfinite(costs), costs, torch.full_like(costs, NON_FINITE_COST))
    return costs.mean(dim=1)


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

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """Plan H steps from `obs` (obs_dim) and return the plan's first action (act_dim)."""
        device = self.propagator.model.input_mean.device
        obs_t = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=device)

        def cost(actions: Tensor) -> Tensor:
            return trajectory_costs(self.propagator, self.task, obs_t, actions.to(device)).cpu()

        solution = self.optimizer.optimize(cost, self.plan, self.init_var)
        # Warm start: drop the step taken, append the middle of the bounds.
        self.plan = torch.cat([solution[1:], self.middle[:1]])
        return solution[0].numpy().astype(np.float32)
