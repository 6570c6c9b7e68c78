"""What every agent shares: its sizes, action bounds, device, rebuild spec and numpy `act`."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
from torch import Tensor


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

    def act(self, obs: np.ndarray | Tensor, deterministic: bool) -> np.ndarray:
        """Actions as numpy: obs_dim -> act_dim, or B x obs_dim -> B x act_dim."""
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        act = self.policy(obs_t.reshape(-1, self.obs_dim), deterministic)
        return act.reshape(*obs_t.shape[:-1], self.act_dim).cpu().numpy()
