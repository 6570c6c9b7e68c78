"""Behaviour cloning (`bc`): regress the dataset's actions on its observations.

The baseline every offline method is read against: it learns nothing the data does not show.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ombrl.agents.bc import BC, BCConfig
from ombrl.methods import Inputs
from ombrl.training.offline import load_offline_policy, train_offline


def train(method: str, cfg: dict, inputs: Inputs, on_eval: Callable[[dict], None]) -> BC:
    """`cfg["steps"]` updates of behaviour cloning on `inputs.dataset`
    (`ombrl.training.offline.train_offline`)."""
    return train_offline(BC, BCConfig, method, cfg, inputs, on_eval)


def load_policy(
    meta: dict, tensors: dict[str, torch.Tensor], device: torch.device, seed: int
) -> Callable[[np.ndarray], np.ndarray]:
    """The trained policy of a `bc` job's files, acting deterministically."""
    return load_offline_policy(BC, BCConfig, meta, tensors, device, seed)
