"""What every agent shares: its sizes, action bounds, device, rebuild spec and numpy `act`;
the action squashing, state-key check and optimiser both agents use."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
from torch import Tensor

from ombrl.data.dataset import Dataset
from ombrl.errors import OmbrlError


class Agent:
    """Base of SAC and BC; subclasses set `kind` and implement `policy(obs, deterministic)`."""

    kind = ""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        action_low: float | np.ndarray,
        action_high: float | np.ndarray,
        cfg,
        device: torch.device,
    ) -> None:
        self.obs_dim, self.act_dim, self.cfg = obs_dim, act_dim, cfg
        self.device = torch.device(device)
        self.action_low = np.broadcast_to(np.asarray(action_low, np.float32), (act_dim,)).copy()
        self.action_high = np.broadcast_to(np.asarray(action_high, np.float32), (act_dim,)).copy()

    @property
    def spec(self) -> dict:
        """JSON-serialisable constructor arguments (minus device and seed) to rebuild the agent."""
        return {
            "kind": self.kind,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "action_low": self.action_low.tolist(),
            "action_high": self.action_high.tolist(),
            "config": asdict(self.cfg),
        }

    def policy(self, obs: Tensor, deterministic: bool) -> Tensor:
        raise NotImplementedError

    def prepare(self, dataset: Dataset) -> None:
        """Fit what the agent derives from its offline dataset before training (state
        statistics, reward scales); nothing by default."""

    def act(self, obs: np.ndarray | Tensor, deterministic: bool) -> np.ndarray:
        """Actions as numpy: obs_dim -> act_dim, or B x obs_dim -> B x act_dim."""
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        act = self.policy(obs_t.reshape(-1, self.obs_dim), deterministic)
        return act.reshape(*obs_t.shape[:-1], self.act_dim).cpu().numpy()


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


def fused_adam(params, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam with the fused kernel (one kernel for all parameters; CPU and CUDA)."""
    return torch.optim.Adam(params, lr=lr, fused=device.type in ("cpu", "cuda"))
