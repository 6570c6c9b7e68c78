"""CQL (Kumar, Zhou, Tucker & Levine 2020, "Conservative Q-Learning for Offline
Reinforcement Learning"), the CQL(H) variant with importance-sampled log-sum-exp and a fixed
conservative weight (no Lagrange dual), as the paper ran it on the D4RL locomotion tasks.

SAC (tanh-Gaussian actor, twin critics, learned temperature toward entropy `-act_dim`) whose
critics each add
`min_q_weight * (temperature * logsumexp_j(Q(s, a_j) / temperature - log p(a_j)) - Q(s, a))`
to their TD loss: the log-sum-exp over actions is estimated with `n_actions` uniform actions
(density `2^-act_dim` in the tanh space), `n_actions` policy actions at s and `n_actions`
policy actions at s' (all evaluated at s, each with its own log-probability), as the authors'
code (github.com/aviralkumar2907/CQL, `min_q_version=3`). The conservative term pushes Q
down on actions the policy would take and up on the dataset's.

For the first `bc_fraction` of the `steps` updates the actor maximises the dataset action's
log-probability instead of Q: the authors' warm start (`policy_eval_start`, 40000 updates in
their mujoco script), 0.04 by default (40000 of 1M) so that a shorter run keeps its share.
CORL and d3rlpy run without it by default.

The TD target has no entropy term by default (the authors' `deterministic_backup`, CORL's
`backup_entropy: False`). The actor, temperature and critic losses of one update are
computed on the same parameters and temperature, then all are stepped (as `agents/sac.py`);
then a polyak step of the target critics. Log-probabilities are those of the squashed sample
in the [-1, 1] space, the space of the uniform density.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ombrl.agents.base import action_scale, fused_adam
from ombrl.agents.buffer import Batch
from ombrl.agents.networks import StackedMLP
from ombrl.agents.offline import OfflineAgent, frozen_copy, polyak
from ombrl.agents.sac import LOG_STD_MAX, GaussianActor

#: The authors' policy bounds (rlkit's `TanhGaussianPolicy`, d4rl/rlkit/torch/sac/policies.py:
#: 10-13): log std in [-5, 2] (SAC's floor is -20), and in `log_prob` the mean in [-9, 9].
LOG_STD_MIN, MEAN_BOUND = -5.0, 9.0


@dataclass
class CQLConfig:
    """CQL hyperparameters (the `cql` schema section; sources in docs/methods)."""

    hidden_size: list[int]  # hidden widths of the actor and of each critic
    gamma: float  # discount
    tau: float  # polyak rate of the target critics
    actor_lr: float  # Adam learning rate of the actor and the temperature
    critic_lr: float  # Adam learning rate of the critics
    batch_size: int  # transitions per update
    min_q_weight: float  # weight of the conservative term
    n_actions: int  # actions of each kind (uniform, pi(s), pi(s')) in the log-sum-exp
    temperature: float  # temperature of the log-sum-exp
    backup_entropy: bool  # subtract alpha log pi(a'|s') in the TD target
    steps: int  # updates of the run (the warm start is a share of them)
    bc_fraction: float  # share of the first updates whose actor maximises log pi(a_data|s)
    normalize_states: bool  # networks see the dataset-standardised state


class CQLNoise(NamedTuple):
    """The random numbers of one update.

    Attributes:
        normal: (2 + 2 n_actions) B x act_dim standard normal: the actor's samples at s
            (rows 0..B-1), at s' (B..2B-1), then n_actions at s and n_actions at s'.
        uniform: n_actions B x act_dim, uniform in [-1, 1].
    """

    normal: Tensor
    uniform: Tensor


class CQL(OfflineAgent):
    """The CQL learner (same construction and API as `SAC`, see `agents/base.py`)."""

    kind = "cql"

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        action_low: float | np.ndarray,
        action_high: float | np.ndarray,
        cfg: CQLConfig,
        device: torch.device,
        seed: int,
    ) -> None:
        super().__init__(obs_dim, act_dim, action_low, action_high, cfg, device)
        init = self._start(seed)
        center, scale = action_scale(
            self.action_low, self.action_high, act_dim, torch.device("cpu")
        )
        self.actor = GaussianActor(
            obs_dim, act_dim, cfg.hidden_size, center, scale, init, LOG_STD_MIN
        )
        self.critic = StackedMLP(2, obs_dim + act_dim, cfg.hidden_size, 1, init)
        self.actor.to(self.device)
        self.critic.to(self.device)
        self.target_critic = frozen_copy(self.critic)
        self.log_alpha = torch.zeros((), device=self.device, requires_grad=True)
        self.target_entropy = -float(act_dim)
        self.bc_steps = round(cfg.bc_fraction * cfg.steps)
        self.actor_optim = fused_adam(
            [*self.actor.parameters(), self.log_alpha], cfg.actor_lr, self.device
        )
        self.critic_optim = fused_adam(self.critic.parameters(), cfg.critic_lr, self.device)
        self.modules = {
            "actor": self.actor,
            "critic": self.critic,
            "target_critic": self.target_critic,
        }
        self.optimizers = {"actor_optim": self.actor_optim, "critic_optim": self.critic_optim}

    def state_dict(self) -> dict[str, Tensor]:
        return {**super().state_dict(), "log_alpha": self.log_alpha.detach()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])

    def _policy(self, obs: Tensor, deterministic: bool) -> Tensor:
        shape = (obs.shape[0], self.act_dim)
        if deterministic:
            eps = torch.zeros(shape, device=self.device)
        else:
            eps = torch.randn(shape, generator=self.generator, device=self.device)
        return self.actor(obs, eps).act

    def q(self, critic: StackedMLP, obs: Tensor, act: Tensor) -> Tensor:
        """Both critics' Q, 2 x rows."""
        return critic(torch.cat([obs, act], -1).expand(2, -1, -1))[0].squeeze(-1)

    def data_log_prob(self, obs: Tensor, act: Tensor) -> Tensor:
        """log pi(a|s) of given actions, in the [-1, 1] space: the pre-tanh value of the
        action (clamped inside the bounds) under the Gaussian (mean clamped to +-9), minus
        log(1 - a^2 + 1e-6), as the authors' code (rlkit's `TanhGaussianPolicy.log_prob`)."""
        out = self.actor.net(obs[None])[0][0]
        mean, log_std = out.chunk(2, dim=-1)
        mean = mean.clamp(-MEAN_BOUND, MEAN_BOUND)
        log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        a = ((act - self.actor.center) / self.actor.scale).clamp(-1 + 1e-6, 1 - 1e-6)
        z = (torch.atanh(a) - mean) / log_std.exp()
        per_dim = -0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)
        return (per_dim - torch.log(1 - a.square() + 1e-6)).sum(-1)

    def noise(self, batch_size: int) -> CQLNoise:
        """The random numbers of one update of `batch_size` transitions."""
        n, shape = self.cfg.n_actions, (batch_size, self.act_dim)
        g, device = self.generator, self.device
        normal = torch.randn(((2 + 2 * n) * shape[0], shape[1]), generator=g, device=device)
        uniform = torch.rand((n * shape[0], shape[1]), generator=g, device=device) * 2 - 1
        return CQLNoise(normal, uniform)

    def losses(self, batch: Batch, noise: CQLNoise) -> dict[str, Tensor]:
        """Every loss of one update, on the current parameters (batch states normalised).

        Returns:
            critic_loss (TD + conservative, summed over the critics), td_loss, conservative
            (both summed over the critics, before the weight), actor_loss, alpha_loss, and
            log_pi (mean log-probability of the actor's sample at s).
        """
        cfg, b, n = self.cfg, len(batch), self.cfg.n_actions
        obs, next_obs = batch.obs, batch.next_obs
        # One actor pass over the 2B distinct states; the noise broadcasts over a leading
        # axis of 1 + n draws: draw 0 is the actor's sample at s and the target's at s',
        # draws 1..n the log-sum-exp's (rows k B + i of `noise.normal`'s blocks are draw
        # k + 1 at state i).
        first, at_s, at_next = noise.normal.split([2 * b, n * b, n * b])
        draws = torch.stack([at_s.reshape(n, b, -1), at_next.reshape(n, b, -1)], 1)
        eps = torch.cat([first.reshape(1, 2 * b, -1), draws.reshape(n, 2 * b, -1)])
        sample = self.actor(torch.cat([obs, next_obs]), eps)
        pi, log_pi = sample.act[0, :b], sample.log_prob[0, :b]
        alpha = self.log_alpha.detach().exp()
        if self.step < self.bc_steps:  # the authors' warm start (`policy_eval_start`)
            objective = self.data_log_prob(obs, batch.act)
        else:
            objective = self.q(self.critic, obs, pi).amin(0)
        actor_loss = (alpha * log_pi - objective).mean()
        alpha_loss = -(self.log_alpha * (log_pi.detach() + self.target_entropy)).mean()
        with torch.no_grad():
            next_q = self.q(self.target_critic, next_obs, sample.act[0, b:]).amin(0)
            if cfg.backup_entropy:
                next_q = next_q - alpha * sample.log_prob[0, b:]
            target = batch.rew + cfg.gamma * (1.0 - batch.terminal) * next_q
            uniform = self.actor.center + self.actor.scale * noise.uniform
            drawn = sample.act[1:].reshape(n, 2, b, -1).transpose(0, 1).reshape(2 * n * b, -1)
            # The dataset's actions, then the sampled ones: n uniform, n pi(s), n pi(s').
            acts = torch.cat([batch.act, uniform, drawn])
            # log p of each sampled action: the uniform density 2^-act_dim, then pi's.
            log_p = torch.cat(
                [
                    torch.full((n * b,), -self.act_dim * math.log(2.0), device=obs.device),
                    sample.log_prob[1:].reshape(n, 2, b).transpose(0, 1).reshape(-1),
                ]
            )
        q_all = self.q(self.critic, obs.repeat(1 + 3 * n, 1), acts)  # 2 x (1 + 3n)B, one pass
        q_data, q_sampled = q_all[:, :b], q_all[:, b:]
        # 2 x B x 3n: row b holds the 3n actions sampled for state b.
        logits = (q_sampled - log_p).reshape(2, 3 * n, b).transpose(1, 2) / cfg.temperature
        logsumexp = cfg.temperature * torch.logsumexp(logits, dim=-1)
        td_loss = (q_data - target).square().mean(1).sum()
        conservative = (logsumexp.mean(1) - q_data.mean(1)).sum()
        return {
            "critic_loss": td_loss + cfg.min_q_weight * conservative,
            "td_loss": td_loss,
            "conservative": conservative,
            "actor_loss": actor_loss,
            "alpha_loss": alpha_loss,
            "log_pi": log_pi.detach().mean(),
        }

    def update(self, batch: Batch) -> dict[str, float]:
        """One step of the critics, actor and temperature, then the targets' polyak step.

        Returns:
            critic_loss, td_loss, conservative, actor_loss, alpha, entropy (-log pi).
        """
        batch = Batch(
            self.normalize(batch.obs),
            batch.act,
            batch.rew,
            self.normalize(batch.next_obs),
            batch.terminal,
        )
        alpha = self.log_alpha.detach().exp()
        losses = self.losses(batch, self.noise(len(batch)))
        self.critic_optim.zero_grad(set_to_none=True)
        self.actor_optim.zero_grad(set_to_none=True)
        losses["critic_loss"].backward(inputs=list(self.critic.parameters()))
        actor_params = [*self.actor.parameters(), self.log_alpha]
        (losses["actor_loss"] + losses["alpha_loss"]).backward(inputs=actor_params)
        self.critic_optim.step()
        self.actor_optim.step()
        polyak(self.target_critic, self.critic, self.cfg.tau)
        self.step += 1
        values = torch.stack(
            [
                losses["critic_loss"].detach(),
                losses["td_loss"].detach(),
                losses["conservative"].detach(),
                losses["actor_loss"].detach(),
                alpha,
                -losses["log_pi"],
            ]
        ).tolist()
        names = ("critic_loss", "td_loss", "conservative", "actor_loss", "alpha", "entropy")
        return dict(zip(names, values, strict=True))
