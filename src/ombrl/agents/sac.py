"""Soft actor-critic (Haarnoja et al. 2018) with both critics in one batched module.

The twin critics are an ensemble of two: each layer is one `2 x in x out` weight and one
`baddbmm`, so a critic step costs the kernels of one network. The policy is a tanh-squashed
Gaussian scaled to the task's action bounds; the temperature is fixed or learned toward the
target entropy `-act_dim`. Terminal transitions do not bootstrap; timeouts do (the buffer only
stores terminals). All randomness (initial weights, policy noise) comes from one
`torch.Generator` seeded by the caller, so the same seed gives the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ombrl.agents.base import Agent
from ombrl.agents.buffer import Batch
from ombrl.checkpoint import load_optimizer_tensors, optimizer_tensors
from ombrl.errors import OmbrlError
from ombrl.models.ensemble import EnsembleLinear

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


@dataclass
class SACConfig:
    """SAC hyperparameters (the config keys of the `aleatoric-penalty` mode)."""

    hidden_size: list[int]  # widths of the hidden layers of the actor and of each critic
    gamma: float  # discount factor
    tau: float  # polyak rate: target <- (1 - tau) * target + tau * online, every update
    lr: float  # Adam learning rate of actor, critics and temperature
    batch_size: int  # transitions per update
    alpha: float | None  # fixed entropy temperature; None learns it (from 1.0)


def init_linear_(layer: nn.Linear, generator: torch.Generator) -> None:
    """PyTorch's default Linear init (U(+-1/sqrt(in)) for weights and biases), but seeded."""
    bound = 1.0 / math.sqrt(layer.in_features)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)


def mlp(in_dim: int, hidden: list[int], out_dim: int, generator: torch.Generator) -> nn.Sequential:
    """ReLU MLP `in -> hidden... -> out` initialised from `generator`."""
    widths = [in_dim, *hidden, out_dim]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        linear = nn.Linear(a, b)
        init_linear_(linear, generator)
        layers.append(linear)
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def action_scale(
    low: float | np.ndarray, high: float | np.ndarray, act_dim: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Centre and half-width (act_dim each) that map tanh outputs in [-1, 1] to [low, high]."""
    low_t = torch.as_tensor(low, dtype=torch.float32, device=device).expand(act_dim)
    high_t = torch.as_tensor(high, dtype=torch.float32, device=device).expand(act_dim)
    return (high_t + low_t) / 2, (high_t - low_t) / 2


def check_keys(
    expected: set[str], given: dict[str, Tensor], what: str, optimizers: tuple[str, ...]
) -> None:
    """Raise OmbrlError naming missing or unexpected keys of a stored state.

    Optimiser slots (keys under `optimizers` prefixes) may be present or absent: an optimiser
    has none before its first step.
    """
    optional = {k for k in set(expected) | set(given) if k.split(".", 1)[0] in optimizers}
    missing = sorted(expected - set(given) - optional)
    extra = sorted(set(given) - expected - optional)
    if missing or extra:
        raise OmbrlError(
            f"{what} state does not match: missing {missing[:5]}, unexpected {extra[:5]}"
        )


class TwinCritic(nn.Module):
    """Two Q networks `Q_k(s, a)` evaluated with one batched matmul per layer."""

    def __init__(
        self, obs_dim: int, act_dim: int, hidden: list[int], generator: torch.Generator
    ) -> None:
        super().__init__()
        widths = [obs_dim + act_dim, *hidden, 1]
        self.layers = nn.ModuleList(
            EnsembleLinear(2, a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        for layer in self.layers:
            bound = 1.0 / math.sqrt(layer.in_features)
            with torch.no_grad():
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, obs: Tensor, act: Tensor) -> Tensor:
        """Q values of both critics.

        Args:
            obs: B x obs_dim.
            act: B x act_dim.

        Returns:
            2 x B.
        """
        h = torch.cat([obs, act], dim=-1).expand(2, -1, -1)
        for layer in self.layers[:-1]:
            h = F.relu(layer(h))
        return self.layers[-1](h).squeeze(-1)


class GaussianActor(nn.Module):
    """A tanh-squashed diagonal Gaussian policy scaled to the action bounds."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: list[int],
        center: Tensor,
        scale: Tensor,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.net = mlp(obs_dim, hidden, 2 * act_dim, generator)
        self.register_buffer("center", center)
        self.register_buffer("scale", scale)

    def forward(
        self, obs: Tensor, deterministic: bool, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """Actions and their log-probabilities.

        Args:
            obs: B x obs_dim.
            deterministic: take tanh(mean) instead of sampling.
            generator: source of the Gaussian noise (unused when deterministic).

        Returns:
            actions B x act_dim within the bounds, log-probability B of the squashed sample
            (in the [-1, 1] space, where the target entropy is set).
        """
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        if deterministic:
            eps = torch.zeros_like(mean)
        else:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device)
        u = mean + eps * log_std.exp()
        log_prob = (-0.5 * eps.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log |d tanh(u) / du| = 2 (log 2 - u - softplus(-2u)), the numerically stable form.
        log_prob = log_prob - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
        return self.center + self.scale * torch.tanh(u), log_prob


class SAC(Agent):
    """Soft actor-critic agent.

    Args:
        obs_dim: observation size.
        act_dim: action size.
        action_low: lower bound(s) of the action space.
        action_high: upper bound(s).
        cfg: hyperparameters.
        device: where networks and tensors live.
        seed: seeds the initial weights and all policy noise.
    """

    kind = "sac"

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        action_low: float | np.ndarray,
        action_high: float | np.ndarray,
        cfg: SACConfig,
        device: torch.device,
        seed: int,
    ) -> None:
        super().__init__(obs_dim, act_dim, action_low, action_high, cfg, device)
        self.generator = torch.Generator(self.device).manual_seed(seed)
        init = torch.Generator().manual_seed(seed)  # CPU: weights are drawn before moving
        center, scale = action_scale(
            self.action_low, self.action_high, act_dim, torch.device("cpu")
        )
        self.actor = GaussianActor(obs_dim, act_dim, cfg.hidden_size, center, scale, init)
        self.critic = TwinCritic(obs_dim, act_dim, cfg.hidden_size, init)
        self.actor.to(self.device)
        self.critic.to(self.device)
        self.target_critic = TwinCritic(obs_dim, act_dim, cfg.hidden_size, init).to(self.device)
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.target_critic.requires_grad_(False)
        self.log_alpha = torch.zeros((), device=self.device)
        if cfg.alpha is not None:
            self.log_alpha.fill_(math.log(cfg.alpha) if cfg.alpha > 0 else -math.inf)
        self.log_alpha.requires_grad_(cfg.alpha is None)
        self.target_entropy = -float(act_dim)
        self.actor_optim = _adam(self.actor.parameters(), cfg.lr, self.device)
        self.critic_optim = _adam(self.critic.parameters(), cfg.lr, self.device)
        self.alpha_optim = (
            _adam([self.log_alpha], cfg.lr, self.device) if cfg.alpha is None else None
        )
        self.step = 0

    def policy(self, obs: Tensor, deterministic: bool) -> Tensor:
        """Actions for a batch of observations, without gradients.

        Args:
            obs: B x obs_dim on this agent's device.
            deterministic: the mean action (evaluation) or a sample (exploration, rollouts).

        Returns:
            B x act_dim.
        """
        with torch.no_grad():
            return self.actor(obs, deterministic, self.generator)[0]

    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step of critics, actor and temperature, then the target update.

        Args:
            batch: B transitions on this agent's device.

        Returns:
            critic_loss, actor_loss, alpha, q_mean (online Q of the batch), entropy (-log pi).
        """
        alpha = self.log_alpha.detach().exp()
        with torch.no_grad():
            next_act, next_log_prob = self.actor(batch.next_obs, False, self.generator)
            next_q = self.target_critic(batch.next_obs, next_act).min(dim=0).values
            soft_value = next_q - alpha * next_log_prob
            target = batch.rew + self.cfg.gamma * (1.0 - batch.terminal) * soft_value
        q = self.critic(batch.obs, batch.act)
        critic_loss = (q - target).square().mean(dim=1).sum()
        self.critic_optim.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optim.step()

        self.critic.requires_grad_(False)  # the actor step needs dQ/da only
        act, log_prob = self.actor(batch.obs, False, self.generator)
        q_pi = self.critic(batch.obs, act).min(dim=0).values
        actor_loss = (alpha * log_prob - q_pi).mean()
        self.actor_optim.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optim.step()
        self.critic.requires_grad_(True)

        if self.alpha_optim is not None:
            alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
            self.alpha_optim.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optim.step()

        with torch.no_grad():
            online = list(self.critic.parameters())
            torch._foreach_lerp_(list(self.target_critic.parameters()), online, self.cfg.tau)
        self.step += 1
        values = torch.stack(
            [critic_loss.detach(), actor_loss.detach(), alpha, q.detach().mean(), -log_prob.mean()]
        ).tolist()
        return dict(
            zip(("critic_loss", "actor_loss", "alpha", "q_mean", "entropy"), values, strict=True)
        )

    def state_dict(self) -> dict[str, Tensor]:
        """Every tensor needed to resume: networks, temperature, optimisers, step, RNG state."""
        state = {
            **{f"actor.{k}": v for k, v in self.actor.state_dict().items()},
            **{f"critic.{k}": v for k, v in self.critic.state_dict().items()},
            **{f"target_critic.{k}": v for k, v in self.target_critic.state_dict().items()},
            "log_alpha": self.log_alpha.detach(),
            "step": torch.tensor(self.step, dtype=torch.int64),
            "generator": self.generator.get_state(),
            **optimizer_tensors("actor_optim", self.actor_optim),
            **optimizer_tensors("critic_optim", self.critic_optim),
        }
        if self.alpha_optim is not None:
            state.update(optimizer_tensors("alpha_optim", self.alpha_optim))
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what `state_dict` returned (tensors may be on any device).

        Raises:
            OmbrlError: the state belongs to a different architecture or config.
        """
        check_keys(
            set(self.state_dict()), state, "SAC", ("actor_optim", "critic_optim", "alpha_optim")
        )
        for name, module in (
            ("actor", self.actor),
            ("critic", self.critic),
            ("target_critic", self.target_critic),
        ):
            part = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
            try:
                module.load_state_dict(part)
            except RuntimeError as err:
                raise OmbrlError(f"SAC state does not match the {name}: {err}") from err
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.step = int(state["step"])
        self.generator.set_state(state["generator"].cpu())
        load_optimizer_tensors("actor_optim", self.actor_optim, state)
        load_optimizer_tensors("critic_optim", self.critic_optim, state)
        if self.alpha_optim is not None:
            load_optimizer_tensors("alpha_optim", self.alpha_optim, state)


def _adam(params, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam with the fused kernel (one kernel for all parameters; CPU and CUDA)."""
    return torch.optim.Adam(params, lr=lr, fused=device.type in ("cpu", "cuda"))
