"""`td3-bc`, a model-free offline reference:
TD3+BC (Fujimoto & Gu 2021): TD3 with a behaviour-cloning term, states normalised.

The learner is `ombrl.agents.td3_bc.TD3BC`; training is the offline loop bc uses
(`ombrl.training.offline`). Defaults and where each comes from: docs/methods/model-free.md.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ombrl.agents.td3_bc import TD3BC, TD3BCConfig
from ombrl.methods import Inputs
from ombrl.training.offline import load_offline_policy, train_offline


def train(method: str, cfg: dict, inputs: Inputs, on_eval: Callable[[dict], None]) -> TD3BC:
    """`cfg["steps"]` td3-bc updates on `inputs.dataset`."""
    return train_offline(TD3BC, TD3BCConfig, method, cfg, inputs, on_eval)


def load_policy(
    meta: dict, tensors: dict[str, torch.Tensor], device: torch.device, seed: int
) -> Callable[[np.ndarray], np.ndarray]:
    """The trained policy of a `td3-bc` job's files (with its state statistics), acting
    deterministically."""
    return load_offline_policy(TD3BC, TD3BCConfig, meta, tensors, device, seed)
