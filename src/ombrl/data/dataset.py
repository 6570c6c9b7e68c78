"""The in-memory form of an offline dataset, shared by every stage.

All arrays are transitions in file order. `terminals` marks true environment terminations
(no bootstrapping); `timeouts` marks the last transition of an episode cut by a time limit
(bootstrap through it). Transitions never cross an episode boundary: `next_observations[i]`
is always the successor of `observations[i]` within the same episode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Dataset:
    """Offline transitions (N of them) and what is known about where they came from.

    Attributes:
        observations: N x obs_dim float32.
        actions: N x act_dim float32.
        rewards: N float32.
        next_observations: N x obs_dim float32.
        terminals: N bool, true environment terminations.
        timeouts: N bool, episode cut by a time limit (not a terminal).
        episode_ids: N int64, 0-based index of the episode each transition belongs to.
        env_id: gymnasium id to evaluate policies in (e.g. "Hopper-v4"); None when unknown
            (a file without metadata, read by a stage that never acts in it).
        ref_min_score: return of a random policy (D4RL normalisation), or None if unknown.
        ref_max_score: return of an expert policy, or None if unknown.
        checksum: sha256 of the file the data was read from ("" if built in memory).
        metadata: other facts worth recording (source, behaviour policy, ...).
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    episode_ids: np.ndarray
    env_id: str | None
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    checksum: str = ""
    metadata: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.observations)

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    @property
    def num_episodes(self) -> int:
        return int(self.episode_ids.max()) + 1 if len(self) else 0

    def episode_returns(self) -> np.ndarray:
        """Sum of rewards per episode, in episode order."""
        return np.bincount(self.episode_ids, weights=self.rewards, minlength=self.num_episodes)
