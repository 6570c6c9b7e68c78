"""TD3+BC (Fujimoto & Gu 2021, "A Minimalist Approach to Offline Reinforcement Learning").

TD3 (twin critics, target policy smoothing, delayed actor and target updates) whose actor
maximises `lambda Q1(s, pi(s)) - (pi(s) - a)^2` (actions in half-ranges of the bounds, the
paper's [-1, 1]), with `lambda = alpha / mean |Q1(s, pi(s))|`
(not differentiated): the Q term's scale no longer depends on the reward's. States are
normalised with the dataset's mean and std (`agents/offline.py`).

Per update, as the authors' code (github.com/sfujim/TD3_BC, TD3_BC.py): critics toward
`r + gamma (1 - terminal) min_k Q'_k(s', clip(pi'(s') + clip(noise), bounds))`, with
noise ~ N(0, (policy_noise * half-range)^2) clipped at noise_clip * half-range; every
`policy_delay`-th update also the actor step, then a polyak step of the actor and critic
targets. The actor is deterministic, `center + half-range * tanh(net(s))`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ombrl.agents.base import action_scale, fused_adam
from ombrl.agents.buffer import Batch
from ombrl.agents.networks import StackedMLP
from ombrl.agents.offline import OfflineAgent, frozen_copy, polyak


@dataclass
class TD3BCConfig:
    """TD3+BC hyperparameters (the `td3_bc` schema section; sources in docs/methods)."""

    hidden_size: list[int]  # hidden widths of the actor and of each critic
    gamma: float  # discount
    tau: float  # polyak rate of the targets, at every actor step
    lr: float  # Adam learning rate of actor and critics
    batch_size: int  # transitions per update
    alpha: float  # weight of the Q term against the behaviour-cloning term
    policy_noise: float  # std of the target policy smoothing noise, in half-ranges
    noise_clip: float  # its clip, in half-ranges
    policy_delay: int  # critic updates per actor (and target) update
    normalize_states: bool  # networks see the dataset-standardised state


class TD3BC(OfflineAgent):
    """The TD3+BC learner (same construction and API as `SAC`, see `agents/base.py`)."""

    kind = "td3-bc"
    tensors = ("obs_mean", "obs_std", "last_actor")

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        action_low: float | np.ndarray,
        action_high: float | np.ndarray,
        cfg: TD3BCConfig,
        device: torch.device,
        seed: int,
    ) -> None:
        super().__init__(obs_dim, act_dim, action_low, action_high, cfg, device)
        init = self._start(seed)
        self.center, self.scale = action_scale(self.action_low, self.action_high, act_dim, device)
        self.actor = StackedMLP(1, obs_dim, cfg.hidden_size, act_dim, init).to(self.device)
        self.critic = StackedMLP(2, obs_dim + act_dim, cfg.hidden_size, 1, init).to(self.device)
        self.target_actor = frozen_copy(self.actor)
        self.target_critic = frozen_copy(self.critic)
        self.actor_optim = fused_adam(self.actor.parameters(), cfg.lr, self.device)
        self.critic_optim = fused_adam(self.critic.parameters(), cfg.lr, self.device)
        self.modules = {
            "actor": self.actor,
            "critic": self.critic,
            "target_actor": self.target_actor,
            "target_critic": self.target_critic,
        }
        self.optimizers = {"actor_optim": self.actor_optim, "critic_optim": self.critic_optim}
        # actor_loss, lambda and bc_mse of the latest actor step, reported by every update.
        self.last_actor = torch.zeros(3, device=self.device)

    def pi(self, actor: StackedMLP, obs: Tensor) -> Tensor:
        """The deterministic action of `actor` (online or target) at normalised states."""
        return self.center + self.scale * torch.tanh(actor(obs[None])[0][0])

    def q(self, critic: StackedMLP, obs: Tensor, act: Tensor) -> Tensor:
        """Both critics' Q, 2 x B."""
        return critic(torch.cat([obs, act], -1).expand(2, -1, -1))[0].squeeze(-1)

    def _policy(self, obs: Tensor, deterministic: bool) -> Tensor:
        return self.pi(self.actor, obs)

    def target_noise(self, batch_size: int) -> Tensor:
        """Standard normal noise for the target policy smoothing, B x act_dim."""
        return torch.randn((batch_size, self.act_dim), generator=self.generator, device=self.device)

    def critic_loss(self, batch: Batch, noise: Tensor) -> tuple[Tensor, Tensor]:
        """sum_k mean_b (Q_k(s, a) - y)^2, y the smoothed clipped double-Q target.

        Args:
            batch: transitions with normalised states.
            noise: standard normal, B x act_dim.

        Returns:
            The loss and the batch's mean Q (both critics).
        """
        cfg = self.cfg
        with torch.no_grad():
            smoothing = (noise * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            low, high = self.center - self.scale, self.center + self.scale
            next_act = self.pi(self.target_actor, batch.next_obs) + smoothing * self.scale
            next_act = torch.maximum(torch.minimum(next_act, high), low)
            next_q = self.q(self.target_critic, batch.next_obs, next_act).amin(0)
            target = batch.rew + cfg.gamma * (1.0 - batch.terminal) * next_q
        q = self.q(self.critic, batch.obs, batch.act)
        return (q - target).square().mean(1).sum(), q.detach().mean()

    def actor_loss(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """-lambda mean_b Q1(s, pi(s)) + mean ((pi(s) - a) / half-range)^2, lambda = alpha /
        mean |Q1|.

        Returns:
            The loss, lambda and the behaviour-cloning mean squared error.
        """
        act = self.pi(self.actor, batch.obs)
        q1 = self.q(self.critic, batch.obs, act)[0]
        lmbda = self.cfg.alpha / q1.abs().mean().detach()
        # In action half-ranges: the paper's actions lie in [-1, 1], and alpha balances the
        # Q term against the squared error in those units.
        bc_mse = ((act - batch.act) / self.scale).square().mean()
        return -lmbda * q1.mean() + bc_mse, lmbda, bc_mse

    def update(self, batch: Batch) -> dict[str, float]:
        """One critic step; every `policy_delay`-th update also an actor step and the
        targets' polyak step.

        Returns:
            critic_loss, q_mean, and actor_loss, lambda, bc_mse of the latest actor step.
        """
        batch = Batch(
            self.normalize(batch.obs),
            batch.act,
            batch.rew,
            self.normalize(batch.next_obs),
            batch.terminal,
        )
        critic_loss, q_mean = self.critic_loss(batch, self.target_noise(len(batch)))
        self.critic_optim.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optim.step()
        self.step += 1
        if self.step % self.cfg.policy_delay == 0:
            actor_loss, lmbda, bc_mse = self.actor_loss(batch)
            self.actor_optim.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_optim.step()
            # The actor loss differentiated through the critic: leave no stale gradients.
            self.critic_optim.zero_grad(set_to_none=True)
            polyak(self.target_actor, self.actor, self.cfg.tau)
            polyak(self.target_critic, self.critic, self.cfg.tau)
            self.last_actor = torch.stack([actor_loss.detach(), lmbda, bc_mse.detach()])
        values = torch.cat([torch.stack([critic_loss.detach(), q_mean]), self.last_actor])
        names = ("critic_loss", "q_mean", "actor_loss", "lambda", "bc_mse")
        return dict(zip(names, values.tolist(), strict=True))
