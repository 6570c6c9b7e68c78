"""IQL (Kostrikov, Nair & Levine 2021, "Offline Reinforcement Learning with Implicit
Q-Learning").

No action outside the dataset is ever evaluated: a state value V is fitted by expectile
regression to the target critics' `min_k Q'_k(s, a)` of dataset actions (expectile `tau`
above 0.5 leans toward the better actions), the twin critics regress on
`r + gamma (1 - terminal) V(s')`, and the policy is extracted by advantage-weighted
regression: maximise `exp(beta (Q'(s, a) - V(s)))` (capped at `max_weight`) times
`log pi(a | s)` of the dataset action.

Per update, in the order of CORL's iql.py (github.com/tinkoff-ai/CORL, algorithms/offline):
V(s') for the critic target before V's step; V's step; the critics' step; the actor's
step with the advantage of V before its step; a polyak step of the target critics. The actor
is a Gaussian with a state-independent log std, its mean `center + half-range * tanh(net)`
(CORL's `GaussianPolicy`); its learning rate follows a cosine schedule over the run's
`steps` down to 0 (CORL's `CosineAnnealingLR`), or stays constant.

Rewards are scaled by `1000 / (max - min episode return of the dataset)` (the paper's
locomotion setting, CORL's `normalize_reward`) when `normalize_rewards` is set, and states
normalised as in `agents/offline.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ombrl.agents.base import action_scale, fused_adam
from ombrl.agents.buffer import Batch
from ombrl.agents.networks import StackedMLP
from ombrl.agents.offline import OfflineAgent, frozen_copy, polyak
from ombrl.data.dataset import Dataset
from ombrl.errors import OmbrlError

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


@dataclass
class IQLConfig:
    """IQL hyperparameters (the `iql` schema section; sources in docs/methods)."""

    steps: int  # updates of the run: the length of the actor's cosine schedule
    hidden_size: list[int]  # hidden widths of actor, value and each critic
    gamma: float  # discount
    tau: float  # polyak rate of the target critics
    lr: float  # Adam learning rate of actor, value and critics
    batch_size: int  # transitions per update
    expectile: float  # the value's expectile of the target Q (0.5: the mean)
    beta: float  # inverse temperature of the advantage weights
    max_weight: float  # cap of exp(beta * advantage)
    actor_schedule: str  # "cosine" (to 0 over `steps`) or "constant"
    normalize_states: bool  # networks see the dataset-standardised state
    normalize_rewards: bool  # rewards times 1000 / (max - min episode return)


class IQL(OfflineAgent):
    """The IQL learner (same construction and API as `SAC`, see `agents/base.py`)."""

    kind = "iql"
    tensors = ("obs_mean", "obs_std", "reward_scale")

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        action_low: float | np.ndarray,
        action_high: float | np.ndarray,
        cfg: IQLConfig,
        device: torch.device,
        seed: int,
    ) -> None:
        super().__init__(obs_dim, act_dim, action_low, action_high, cfg, device)
        init = self._start(seed)
        self.reward_scale = torch.ones((), device=self.device)
        self.center, self.scale = action_scale(self.action_low, self.action_high, act_dim, device)
        self.actor = StackedMLP(1, obs_dim, cfg.hidden_size, act_dim, init).to(self.device)
        self.log_std = nn.Parameter(torch.zeros(act_dim, device=self.device))
        self.value = StackedMLP(1, obs_dim, cfg.hidden_size, 1, init).to(self.device)
        self.critic = StackedMLP(2, obs_dim + act_dim, cfg.hidden_size, 1, init).to(self.device)
        self.target_critic = frozen_copy(self.critic)
        self.actor_optim = fused_adam([*self.actor.parameters(), self.log_std], cfg.lr, device)
        self.value_optim = fused_adam(self.value.parameters(), cfg.lr, self.device)
        self.critic_optim = fused_adam(self.critic.parameters(), cfg.lr, self.device)
        self.modules = {
            "actor": self.actor,
            "value": self.value,
            "critic": self.critic,
            "target_critic": self.target_critic,
        }
        self.optimizers = {
            "actor_optim": self.actor_optim,
            "value_optim": self.value_optim,
            "critic_optim": self.critic_optim,
        }

    def prepare(self, dataset: Dataset) -> None:
        """State statistics, and the reward scale from the dataset's episode returns.

        Raises:
            OmbrlError: reward normalisation of a dataset whose episodes all return the same.
        """
        super().prepare(dataset)
        if not self.cfg.normalize_rewards:
            return
        returns = dataset.episode_returns()
        spread = float(returns.max() - returns.min()) if len(returns) else 0.0
        if not spread > 0:
            raise OmbrlError(
                "normalize_rewards: the dataset's episode returns do not differ (max - min "
                f"= {spread}); set normalize_rewards: false"
            )
        self.reward_scale = torch.tensor(1000.0 / spread, device=self.device)

    def state_dict(self) -> dict[str, Tensor]:
        return {**super().state_dict(), "log_std": self.log_std.detach()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.log_std.copy_(state["log_std"])

    def mean(self, obs: Tensor) -> Tensor:
        """The policy's mean action at normalised states."""
        return self.center + self.scale * torch.tanh(self.actor(obs[None])[0][0])

    def std(self) -> Tensor:
        return self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()

    def _policy(self, obs: Tensor, deterministic: bool) -> Tensor:
        mean = self.mean(obs)
        if deterministic:
            return mean
        noise = torch.randn(mean.shape, generator=self.generator, device=self.device)
        return torch.maximum(
            torch.minimum(mean + noise * self.std(), self.center + self.scale),
            self.center - self.scale,
        )

    def q(self, critic: StackedMLP, obs: Tensor, act: Tensor) -> Tensor:
        """Both critics' Q, 2 x B."""
        return critic(torch.cat([obs, act], -1).expand(2, -1, -1))[0].squeeze(-1)

    def v(self, obs: Tensor) -> Tensor:
        """V, B."""
        return self.value(obs[None])[0][0, :, 0]

    def value_loss(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """mean_b |expectile - 1(u < 0)| u^2, u = min_k Q'_k(s, a) - V(s).

        Returns:
            The loss and the advantages u (not differentiated), for the actor.
        """
        with torch.no_grad():
            target_q = self.q(self.target_critic, batch.obs, batch.act).amin(0)
        u = target_q - self.v(batch.obs)
        weight = torch.where(u < 0, 1.0 - self.cfg.expectile, self.cfg.expectile)
        return (weight * u.square()).mean(), u.detach()

    def critic_loss(self, batch: Batch, next_v: Tensor) -> Tensor:
        """mean_k mean_b (Q_k(s, a) - (r + gamma (1 - terminal) V(s')))^2 (CORL averages the
        two critics' losses)."""
        target = batch.rew + self.cfg.gamma * (1.0 - batch.terminal) * next_v
        return (self.q(self.critic, batch.obs, batch.act) - target).square().mean()

    def actor_loss(self, batch: Batch, advantage: Tensor) -> tuple[Tensor, Tensor]:
        """-mean_b min(exp(beta A), max_weight) log pi(a | s).

        Returns:
            The loss and the mean weight.
        """
        weight = torch.exp(self.cfg.beta * advantage).clamp(max=self.cfg.max_weight)
        log_std = self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        z = (batch.act - self.mean(batch.obs)) / log_std.exp()
        log_prob = (-0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return -(weight * log_prob).mean(), weight.mean()

    def actor_lr(self, update: int) -> float:
        """The actor's learning rate at update `update` (0-based)."""
        if self.cfg.actor_schedule == "constant":
            return self.cfg.lr
        return self.cfg.lr * 0.5 * (1.0 + math.cos(math.pi * update / self.cfg.steps))

    def update(self, batch: Batch) -> dict[str, float]:
        """V, critics and actor steps, then the target critics' polyak step.

        Returns:
            value_loss, critic_loss, actor_loss, weight (mean advantage weight), q_mean.
        """
        batch = Batch(
            self.normalize(batch.obs),
            batch.act,
            batch.rew * self.reward_scale,
            self.normalize(batch.next_obs),
            batch.terminal,
        )
        with torch.no_grad():
            next_v = self.v(batch.next_obs)
        value_loss, advantage = self.value_loss(batch)
        self.value_optim.zero_grad(set_to_none=True)
        value_loss.backward()
        self.value_optim.step()
        critic_loss = self.critic_loss(batch, next_v)
        self.critic_optim.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optim.step()
        actor_loss, weight = self.actor_loss(batch, advantage)
        for group in self.actor_optim.param_groups:
            group["lr"] = self.actor_lr(self.step)
        self.actor_optim.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optim.step()
        polyak(self.target_critic, self.critic, self.cfg.tau)
        self.step += 1
        values = torch.stack([value_loss, critic_loss, actor_loss, weight, advantage.mean()])
        names = ("value_loss", "critic_loss", "actor_loss", "weight", "advantage")
        return dict(zip(names, values.detach().tolist(), strict=True))
