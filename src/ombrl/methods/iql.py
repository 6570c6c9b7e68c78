"""`iql`, a model-free offline reference:
IQL (Kostrikov et al. 2021): expectile value, advantage-weighted actor.

The learner is `ombrl.agents.iql.IQL`; training is the offline loop bc uses
(`ombrl.training.offline`). Defaults and where each comes from: docs/methods/model-free.md.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ombrl.agents.iql import IQL, IQLConfig
from ombrl.methods import Inputs
from ombrl.training.offline import load_offline_policy, train_offline


def train(method: str, cfg: dict, inputs: Inputs, on_eval: Callable[[dict], None]) -> IQL:
    """`cfg["steps"]` iql updates on `inputs.dataset`."""
    return train_offline(IQL, IQLConfig, method, cfg, inputs, on_eval)


def load_policy(
    meta: dict, tensors: dict[str, torch.Tensor], device: torch.device, seed: int
) -> Callable[[np.ndarray], np.ndarray]:
    """The trained policy of a `iql` job's files (with its state statistics), acting
    deterministically."""
    return load_offline_policy(IQL, IQLConfig, meta, tensors, device, seed)
