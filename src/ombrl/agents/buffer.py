"""One replay buffer for real and model transitions: preallocated tensors, circular, seeded.

Storage lives on the training device, so sampling a batch is one `randint` and five gathers,
with no host-to-device copy per update. Only true terminals are stored: a time limit is not an
end of the MDP, so transitions cut by a timeout bootstrap like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ombrl.data.dataset import Dataset


@dataclass
class Batch:
    """B transitions.

    Attributes:
        obs: B x obs_dim.
        act: B x act_dim.
        rew: B.
        next_obs: B x obs_dim.
        terminal: B float, 1.0 where the episode ended (no bootstrap).
    """

    obs: Tensor
    act: Tensor
    rew: Tensor
    next_obs: Tensor
    terminal: Tensor

    def __len__(self) -> int:
        return self.obs.shape[0]

    def select(self, index: Tensor) -> Batch:
        """The transitions at `index` (a bool mask or indices over B)."""
        return Batch(*(t[index] for t in _fields(self)))

    @staticmethod
    def cat(batches: Sequence[Batch]) -> Batch:
        """Concatenate batches (e.g. real and model transitions) along B."""
        return Batch(*(torch.cat(parts) for parts in zip(*map(_fields, batches), strict=True)))


class ReplayBuffer:
    """A fixed-capacity ring of transitions; the oldest are overwritten first.

    Args:
        capacity: maximum number of transitions kept.
        obs_dim: observation size.
        act_dim: action size.
        device: where the tensors live (sample on the same device).
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.device = torch.device(device)
        f32 = {"dtype": torch.float32, "device": self.device}
        self.obs = torch.empty(capacity, obs_dim, **f32)
        self.act = torch.empty(capacity, act_dim, **f32)
        self.rew = torch.empty(capacity, **f32)
        self.next_obs = torch.empty(capacity, obs_dim, **f32)
        self.terminal = torch.empty(capacity, **f32)
        self.size = 0
        self.position = 0

    def __len__(self) -> int:
        return self.size

    @classmethod
    def from_dataset(cls, dataset: Dataset, device: torch.device) -> ReplayBuffer:
        """A buffer holding exactly the dataset's transitions (terminals, not timeouts, end)."""
        buffer = cls(len(dataset), dataset.obs_dim, dataset.act_dim, device)
        buffer.add(
            Batch(
                obs=_tensor(dataset.observations, device),
                act=_tensor(dataset.actions, device),
                rew=_tensor(dataset.rewards, device),
                next_obs=_tensor(dataset.next_observations, device),
                terminal=_tensor(dataset.terminals, device),
            )
        )
        return buffer

    def add(self, batch: Batch) -> None:
        """Append B transitions, overwriting the oldest once full (B > capacity keeps the last)."""
        n = len(batch)
        if n > self.capacity:
            batch = Batch(
                *(t[n - self.capacity :] for t in _fields(batch)),
            )
            n = self.capacity
        index = (self.position + torch.arange(n, device=self.device)) % self.capacity
        for store, values in zip(_fields(self), _fields(batch), strict=True):
            store[index] = values.to(self.device, torch.float32).reshape(n, *store.shape[1:])
        self.position = (self.position + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Draw `batch_size` transitions uniformly with replacement.

        Args:
            batch_size: B.
            generator: a torch.Generator on this buffer's device (all randomness comes from it).
        """
        if self.size == 0:
            raise ValueError("cannot sample from an empty buffer")
        index = torch.randint(self.size, (batch_size,), generator=generator, device=self.device)
        return Batch(*(t[index] for t in _fields(self)))

    def state_dict(self) -> dict[str, Tensor]:
        """The stored rows (the first `size`, which are all the filled ones) and the write
        position, so a resumed job overwrites and samples exactly as an uninterrupted one."""
        rows = dict(zip(_NAMES, (t[: self.size] for t in _fields(self)), strict=True))
        return {
            **rows,
            "size": torch.tensor(self.size, dtype=torch.int64),
            "position": torch.tensor(self.position, dtype=torch.int64),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what `state_dict` returned (tensors may be on any device).

        Raises:
            ValueError: the state does not fit this buffer's capacity or sizes.
        """
        size, position = int(state["size"]), int(state["position"])
        if not (0 <= size <= self.capacity and 0 <= position < self.capacity):
            raise ValueError(f"buffer state of size {size} does not fit capacity {self.capacity}")
        for name, store in zip(_NAMES, _fields(self), strict=True):
            rows = state[name]
            if rows.shape != (size, *store.shape[1:]):
                raise ValueError(f"buffer state {name!r} has shape {tuple(rows.shape)}")
            store[:size] = rows.to(self.device)
        self.size, self.position = size, position


_NAMES = ("obs", "act", "rew", "next_obs", "terminal")


def _fields(x: Batch | ReplayBuffer) -> tuple[Tensor, ...]:
    return x.obs, x.act, x.rew, x.next_obs, x.terminal


def _tensor(array: np.ndarray, device: torch.device) -> Tensor:
    return torch.as_tensor(np.asarray(array), dtype=torch.float32, device=device)
