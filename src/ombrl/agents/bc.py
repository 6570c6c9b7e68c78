"""Behaviour cloning: regress the dataset's actions on its observations.

The network ends in tanh scaled to the action bounds, so it can never propose an action the
environment would clip. Same `act` / `update` / `state_dict` API as SAC, so the training loop,
evaluation and model files treat both alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ombrl.agents.base import Agent, action_scale, check_keys, fused_adam
from ombrl.agents.buffer import Batch
from ombrl.agents.networks import StackedMLP
from ombrl.checkpoint import load_optimizer_tensors, optimizer_tensors
from ombrl.errors import OmbrlError


@dataclass
class BCConfig:
    """Behaviour-cloning hyperparameters (the config keys of the `bc` mode)."""

    hidden_size: list[int]  # widths of the hidden ReLU layers
    lr: float  # Adam learning rate
    batch_size: int  # transitions per update


class BC(Agent):
    """A deterministic MLP policy fitted by mean squared error to (s, a) pairs.

    Args:
        obs_dim: observation size.
        act_dim: action size.
        action_low: lower bound(s) of the action space.
        action_high: upper bound(s).
        cfg: hyperparameters.
        device: where the network lives.
        seed: seeds the initial weights.
    """

    kind = "bc"

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        action_low: float | np.ndarray,
        action_high: float | np.ndarray,
        cfg: BCConfig,
        device: torch.device,
        seed: int,
    ) -> None:
        super().__init__(obs_dim, act_dim, action_low, action_high, cfg, device)
        init = torch.Generator().manual_seed(seed)
        self.net = StackedMLP(1, obs_dim, cfg.hidden_size, act_dim, init).to(self.device)
        self.center, self.scale = action_scale(
            self.action_low, self.action_high, act_dim, self.device
        )
        self.optim = fused_adam(self.net.parameters(), cfg.lr, self.device)
        self.step = 0

    def _forward(self, obs: Tensor) -> Tensor:
        return self.center + self.scale * torch.tanh(self.net(obs[None])[0][0])

    def policy(self, obs: Tensor, deterministic: bool) -> Tensor:
        """Actions B x act_dim for observations B x obs_dim (always deterministic)."""
        with torch.no_grad():
            return self._forward(obs)

    def update(self, batch: Batch) -> dict[str, float]:
        """One Adam step on `mean((pi(s) - a)^2)`; returns {"bc_loss": ...}."""
        # Dataset actions outside the bounds are unreachable by tanh; the env clips them anyway.
        target = batch.act.clamp(self.center - self.scale, self.center + self.scale)
        loss = (self._forward(batch.obs) - target).square().mean()
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()
        self.step += 1
        return {"bc_loss": loss.item()}

    def state_dict(self) -> dict[str, Tensor]:
        """Network, optimiser state and step count, as flat named tensors."""
        return {
            **{f"net.{k}": v for k, v in self.net.state_dict().items()},
            "step": torch.tensor(self.step, dtype=torch.int64),
            **optimizer_tensors("optim", self.optim),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what `state_dict` returned.

        Raises:
            OmbrlError: the state belongs to a different architecture.
        """
        check_keys(set(self.state_dict()), state, "BC", ("optim",))
        part = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
        try:
            self.net.load_state_dict(part)
        except RuntimeError as err:
            raise OmbrlError(f"BC state does not match the network: {err}") from err
        self.step = int(state["step"])
        load_optimizer_tensors("optim", self.optim, state)
