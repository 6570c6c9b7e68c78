"""Soft actor-critic (Haarnoja et al. 2018) with hand-written gradients.

Standard SAC: twin critics trained toward `r + gamma (1 - terminal) (min Q_target(s', a') -
alpha log pi(a'|s'))`, then the actor on the updated critics' `min Q`, with the temperature
fixed or learned toward the target entropy `-act_dim`, then a polyak step of the target
critics. Terminal transitions do not bootstrap; timeouts do (the buffer only stores terminals).
The policy is a tanh-squashed Gaussian scaled to the task's action bounds. Observations may
be standardised before the actor and the critics see them (`obs_norm: dataset`, the dataset's
mean and std, as offline-model-based-rl's SAC does with its preprocessing function); the
statistics are part of the agent's state, so a finetuned or reloaded policy keeps them.

Why gradients by hand: at SAC's sizes (batch 256, 256-wide layers) a CPU update is a few dozen
small matmuls, and autograd's per-op bookkeeping, the slow kernels `bmm` takes when one side has
width 1, and unused work (critic weight gradients in the actor step) cost as much again. Each
network is a `StackedMLP` (`agents/networks.py`: actor n=1, twin critics n=2 with one
`baddbmm` per layer for both) whose `param_grads` and `input_grad` are the chain rule of a ReLU
MLP written out; `SAC._actor_grads` differentiates the tanh-Gaussian log-probability. Fused
Adam then steps the parameters as after `loss.backward()`; tests/test_sac.py checks every
gradient against autograd. benchmarks/sac.py measures the gain.

The two gradient computations of an update (`_critic_grads`, `_actor_grads`) are functions of
the parameters, the batch and the noise, with no data-dependent shape, so `compile: true`
hands each to `torch.compile` as one graph: their element-wise work fuses into a few kernels.

All randomness (initial weights, policy noise) comes from one `torch.Generator` seeded by the
caller, so the same seed gives the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ombrl.agents.base import Agent, action_scale, check_keys, fused_adam
from ombrl.agents.buffer import Batch
from ombrl.agents.networks import StackedMLP
from ombrl.checkpoint import load_optimizer_tensors, optimizer_tensors
from ombrl.errors import OmbrlError

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


@dataclass
class SACConfig:
    """SAC hyperparameters (config keys shared by every mode but `bc`)."""

    hidden_size: list[int]  # widths of the hidden layers of the actor and of each critic
    gamma: float  # discount factor
    tau: float  # polyak rate: target <- (1 - tau) * target + tau * online, every update
    lr: float  # Adam learning rate of actor, critics and temperature
    batch_size: int  # transitions per update
    alpha: float | None  # fixed entropy temperature; None learns it (from 1.0)
    obs_norm: str = "none"  # dataset: standardise observations by the dataset's mean and std
    compile: bool = False  # torch.compile the two gradient computations of each update


class ActorSample(NamedTuple):
    """An action sample and the intermediate values the actor's backward pass needs."""

    act: Tensor  # B x act_dim, within the bounds
    log_prob: Tensor  # B, of the squashed sample in the [-1, 1] space
    tanh_u: Tensor  # B x act_dim, the squashed sample in [-1, 1]
    eps: Tensor  # B x act_dim, the standard normal noise
    std: Tensor  # B x act_dim
    unclamped: Tensor  # B x act_dim, True where log_std is inside [LOG_STD_MIN, LOG_STD_MAX]
    inputs: list[Tensor]  # the network's layer inputs, for StackedMLP.param_grads

    def rows(self, start: int, stop: int) -> ActorSample:
        """The sample of observations start..stop-1 (views, no copies)."""
        return ActorSample(
            *(x[start:stop] for x in self[:-1]), [x[:, start:stop] for x in self.inputs]
        )


def _set_grads(params: Iterable[Tensor], grads: list[Tensor | None]) -> None:
    """Give each parameter its gradient, as `loss.backward()` would before an optimiser step."""
    for param, grad in zip(params, grads, strict=True):
        param.grad = grad


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
        log_std_min: float = LOG_STD_MIN,
    ) -> None:
        super().__init__()
        self.log_std_min = log_std_min  # lower clamp of log std (CQL's authors: -5)
        self.net = StackedMLP(1, obs_dim, hidden, 2 * act_dim, generator)
        self.register_buffer("center", center)
        self.register_buffer("scale", scale)

    def forward(self, obs: Tensor, eps: Tensor) -> ActorSample:
        """Actions, their log-probabilities and the values needed to differentiate them.

        The noise comes in rather than from a generator, so that the update, which calls
        this, can be compiled (a graph cannot hold a `torch.Generator`).

        Args:
            obs: B x obs_dim.
            eps: B x act_dim standard normal noise (or ... x B x act_dim: draws that broadcast
                over the leading axes); zeros give the deterministic tanh(mean).
        """
        out, inputs = self.net(obs.unsqueeze(0))
        mean, raw_log_std = out[0].chunk(2, dim=-1)
        log_std = raw_log_std.clamp(self.log_std_min, LOG_STD_MAX)
        std = log_std.exp()
        u = torch.addcmul(mean, eps, std)
        tanh_u = torch.tanh(u)
        # log N(u; mean, std) - log |d tanh(u) / du|, with log |d tanh / du| in the numerically
        # stable form 2 (log 2 - u - softplus(-2u)).
        per_dim = (
            0.5 * eps.square()
            + log_std
            + 2 * (math.log(2) - u - torch.nn.functional.softplus(-2 * u))
        )
        log_prob = -per_dim.sum(-1) - 0.5 * math.log(2 * math.pi) * mean.shape[-1]
        act = torch.addcmul(self.center, self.scale, tanh_u)
        # clamp's gradient is 1 where the value passed unchanged (bounds included), as autograd.
        return ActorSample(act, log_prob, tanh_u, eps, std, log_std == raw_log_std, inputs)


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
        self.critic = StackedMLP(2, obs_dim + act_dim, cfg.hidden_size, 1, init)
        self.actor.to(self.device)
        self.critic.to(self.device)
        self.target_critic = StackedMLP(2, obs_dim + act_dim, cfg.hidden_size, 1, init)
        self.target_critic.to(self.device).requires_grad_(False)
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.obs_mean = torch.zeros(obs_dim, device=self.device)
        self.obs_std = torch.ones(obs_dim, device=self.device)
        self.log_alpha = torch.zeros((), device=self.device)
        if cfg.alpha is not None:
            self.log_alpha.fill_(math.log(cfg.alpha) if cfg.alpha > 0 else -math.inf)
        self.log_alpha.requires_grad_(cfg.alpha is None)
        self.target_entropy = -float(act_dim)
        # The temperature's gradient comes from the actor step's log-probabilities, before
        # either changes, so one Adam (per-parameter state, same lr) steps both at once.
        learned = [self.log_alpha] if cfg.alpha is None else []
        self.actor_optim = fused_adam([*self.actor.parameters(), *learned], cfg.lr, self.device)
        self.critic_optim = fused_adam(self.critic.parameters(), cfg.lr, self.device)
        self.step = 0
        if cfg.compile:
            self._critic_grads = torch.compile(self._critic_grads, fullgraph=True, dynamic=False)
            self._actor_grads = torch.compile(self._actor_grads, fullgraph=True, dynamic=False)

    def set_obs_statistics(self, observations: np.ndarray) -> None:
        """Standardise every observation the networks see by the mean and sample std (n - 1)
        of `observations` (N x obs_dim); a constant dimension keeps std 1."""
        obs = np.asarray(observations, dtype=np.float64)
        std = obs.std(axis=0, ddof=1)
        std = np.where(std > 0, std, 1.0)
        self.obs_mean = torch.as_tensor(obs.mean(axis=0), dtype=torch.float32, device=self.device)
        self.obs_std = torch.as_tensor(std, dtype=torch.float32, device=self.device)

    def _norm(self, obs: Tensor) -> Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def policy(self, obs: Tensor, deterministic: bool) -> Tensor:
        """Actions for a batch of observations, without gradients.

        Args:
            obs: B x obs_dim on this agent's device.
            deterministic: the mean action (evaluation) or a sample (exploration, rollouts).

        Returns:
            B x act_dim.
        """
        with torch.no_grad():
            shape = (obs.shape[0], self.act_dim)
            if deterministic:
                eps = torch.zeros(shape, device=self.device)
            else:
                eps = torch.randn(shape, generator=self.generator, device=self.device)
            return self.actor(self._norm(obs), eps).act

    def _q(self, critic: StackedMLP, obs: Tensor, act: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Both critics' Q (2 x B) and their layer inputs."""
        q, inputs = critic(torch.cat([obs, act], dim=-1).expand(2, -1, -1))
        return q.squeeze(-1), inputs

    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step of critics, actor and temperature, then the target update.

        Args:
            batch: B transitions on this agent's device.

        Returns:
            critic_loss, actor_loss, alpha, q_mean (online Q of the batch), entropy (-log pi).
        """
        batch = Batch(
            self._norm(batch.obs),
            batch.act,
            batch.rew,
            self._norm(batch.next_obs),
            batch.terminal,
        )
        with torch.no_grad():
            alpha = self.log_alpha.exp()  # the temperature this update uses
            # One actor pass samples a' ~ pi(s') for the target and a ~ pi(s) for the actor
            # step: the actor does not change in between, and one 2B-row pass is cheaper.
            eps = torch.randn(
                (2 * len(batch.obs), self.act_dim), generator=self.generator, device=self.device
            )
            grads, critic_loss, q_mean, pi = self._critic_grads(batch, eps)
            _set_grads(self.critic.parameters(), grads)
            self.critic_optim.step()
            grads, actor_loss = self._actor_grads(batch.obs, pi)
            _set_grads([*self.actor.parameters(), self.log_alpha], grads)
            self.actor_optim.step()
            online = list(self.critic.parameters())
            torch._foreach_lerp_(list(self.target_critic.parameters()), online, self.cfg.tau)
        self.step += 1
        values = torch.stack([critic_loss, actor_loss, alpha, q_mean, -pi.log_prob.mean()]).tolist()
        return dict(
            zip(("critic_loss", "actor_loss", "alpha", "q_mean", "entropy"), values, strict=True)
        )

    def _critic_grads(
        self, batch: Batch, eps: Tensor
    ) -> tuple[list[Tensor], Tensor, Tensor, ActorSample]:
        """d critic_loss / d critic parameters, with critic_loss = sum_k mean_b (Q_k - target)^2.

        Args:
            batch: B transitions.
            eps: 2B x act_dim noise, for a' ~ pi(s') (rows 0..B-1) and a ~ pi(s) (the rest).

        Returns:
            The gradients (in `critic.parameters()` order), critic_loss, the batch's mean
            online Q, and the actor's sample at s for the actor step.
        """
        n = len(batch.obs)
        both = self.actor(torch.cat([batch.next_obs, batch.obs]), eps)
        next_pi, pi = both.rows(0, n), both.rows(n, 2 * n)
        next_q = self._q(self.target_critic, batch.next_obs, next_pi.act)[0].amin(dim=0)
        soft_value = next_q - self.log_alpha.exp() * next_pi.log_prob
        target = batch.rew + self.cfg.gamma * (1.0 - batch.terminal) * soft_value
        q, inputs = self._q(self.critic, batch.obs, batch.act)
        error = q - target
        grads = self.critic.param_grads(inputs, (error * (2.0 / n)).unsqueeze(-1))
        return grads, error.square().mean(dim=1).sum(), q.mean(), pi

    def _actor_grads(self, obs: Tensor, pi: ActorSample) -> tuple[list[Tensor], Tensor]:
        """d/d actor parameters of actor_loss = mean_b (alpha log pi(a|s) - min_k Q_k(s, a))
        (the updated critics), and of the temperature loss
        -mean_b log_alpha (log pi(a|s) + target entropy) when the temperature is learned.

        With u = mean + eps std (eps fixed), a = center + scale tanh(u) and
        log pi = sum(-eps^2/2 - log_std - log(2 pi)/2 - log(1 - tanh(u)^2)):
        d/du = dQ/da scale (1 - tanh^2) terms plus alpha/B * 2 tanh(u) from the squash term;
        d/dmean = d/du; d/dlog_std = d/du eps std - alpha/B where log_std is not clamped.

        Returns:
            The gradients (`actor.parameters()` order, then log_alpha's: None when fixed)
            and actor_loss.
        """
        n = len(obs)
        alpha = self.log_alpha.exp()
        q_pi, inputs = self._q(self.critic, obs, pi.act)
        min_q, argmin = q_pi.min(dim=0)
        actor_loss = (alpha * pi.log_prob - min_q).mean()
        # dL/dQ_k is -1/B on the rows where critic k is the minimum, 0 on the others.
        members = torch.arange(self.critic.n, device=obs.device).unsqueeze(-1)
        dl_dq = (argmin == members).to(q_pi.dtype) * (-1.0 / n)
        dq_da = self.critic.input_grad(inputs, dl_dq.unsqueeze(-1), self.obs_dim)
        t = pi.tanh_u
        d_u = torch.addcmul(dq_da * self.actor.scale * (1 - t.square()), t, 2 * alpha / n)
        d_log_std = (d_u * pi.eps * pi.std - alpha / n) * pi.unclamped
        grads = self.actor.net.param_grads(pi.inputs, torch.cat([d_u, d_log_std], dim=-1)[None])
        alpha_grad = -(pi.log_prob.mean() + self.target_entropy) if self.cfg.alpha is None else None
        return [*grads, alpha_grad], actor_loss

    def state_dict(self) -> dict[str, Tensor]:
        """Every tensor needed to resume: networks, temperature, optimisers, step, RNG state."""
        return {
            **{f"actor.{k}": v for k, v in self.actor.state_dict().items()},
            **{f"critic.{k}": v for k, v in self.critic.state_dict().items()},
            **{f"target_critic.{k}": v for k, v in self.target_critic.state_dict().items()},
            "log_alpha": self.log_alpha.detach(),
            "obs_mean": self.obs_mean,
            "obs_std": self.obs_std,
            "step": torch.tensor(self.step, dtype=torch.int64),
            "generator": self.generator.get_state(),
            **optimizer_tensors("actor_optim", self.actor_optim),
            **optimizer_tensors("critic_optim", self.critic_optim),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what `state_dict` returned (tensors may be on any device).

        Raises:
            OmbrlError: the state belongs to a different architecture or config.
        """
        check_keys(set(self.state_dict()), state, "SAC", ("actor_optim", "critic_optim"))
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
            self.obs_mean.copy_(state["obs_mean"])
            self.obs_std.copy_(state["obs_std"])
        self.step = int(state["step"])
        self.generator.set_state(state["generator"].cpu())
        load_optimizer_tensors("actor_optim", self.actor_optim, state)
        load_optimizer_tensors("critic_optim", self.critic_optim, state)
