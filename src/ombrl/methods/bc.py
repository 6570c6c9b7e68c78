"""Behaviour cloning (`bc`): regress the dataset's actions on its observations.

The baseline every offline method is read against: it learns nothing the data does not show.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ombrl.agents.bc import BC, BCConfig
from ombrl.agents.buffer import ReplayBuffer
from ombrl.config import build
from ombrl.methods import Inputs
from ombrl.training.loop import make_learner, run_updates
from ombrl.training.samplers import RealSampler


def train(method: str, cfg: dict, inputs: Inputs, on_eval: Callable[[dict], None]) -> BC:
    """`cfg["steps"]` updates of behaviour cloning on `inputs.dataset`.

    Args:
        method: "bc".
        cfg: the resolved `bc` section (schema keys).
        inputs: the dataset, seed, device, evaluation and checkpoint.
        on_eval: receives each evaluation record (`ombrl.training.loop.run_updates`).
    """
    torch.manual_seed(inputs.seed)
    generator = torch.Generator(inputs.device).manual_seed(inputs.seed)
    agent_cfg = build(BCConfig, cfg)
    agent = make_learner(BC, agent_cfg, inputs.env_id, inputs.dataset, inputs.device, inputs.seed)
    real = ReplayBuffer.from_dataset(inputs.dataset, inputs.device)
    run_updates(
        agent,
        RealSampler(real, agent_cfg.batch_size, generator),
        cfg["steps"],
        inputs.env_id,
        inputs.evaluation,
        on_eval,
        progress=inputs.progress,
        desc=f"{method} seed {inputs.seed}",
        checkpoint=inputs.checkpoint,
    )
    return agent


def load_policy(
    meta: dict, tensors: dict[str, torch.Tensor], device: torch.device, seed: int
) -> Callable[[np.ndarray], np.ndarray]:
    """The trained policy of a `bc` job's files (policy.json meta, policy.safetensors), acting
    deterministically."""
    agent = make_learner(BC, build(BCConfig, meta["config"]), meta["env_id"], None, device, seed)
    agent.load_state_dict(tensors)
    return lambda obs: agent.act(obs, deterministic=True)
