"""`cql`, a model-free offline reference:
CQL (Kumar et al. 2020): SAC with the conservative term.

The learner is `ombrl.agents.cql.CQL`; training is the offline loop bc uses
(`ombrl.training.offline`). Defaults and where each comes from: docs/methods/model-free.md.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ombrl.agents.cql import CQL, CQLConfig
from ombrl.methods import Inputs
from ombrl.training.offline import load_offline_policy, train_offline


def train(method: str, cfg: dict, inputs: Inputs, on_eval: Callable[[dict], None]) -> CQL:
    """`cfg["steps"]` cql updates on `inputs.dataset`."""
    return train_offline(CQL, CQLConfig, method, cfg, inputs, on_eval)


def load_policy(
    meta: dict, tensors: dict[str, torch.Tensor], device: torch.device, seed: int
) -> Callable[[np.ndarray], np.ndarray]:
    """The trained policy of a `cql` job's files (with its state statistics), acting
    deterministically."""
    return load_offline_policy(CQL, CQLConfig, meta, tensors, device, seed)
