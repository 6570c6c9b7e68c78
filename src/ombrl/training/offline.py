"""Training on the dataset alone: the loop of bc, td3-bc, iql and cql.

The methods differ only in their learner; everything else is this: a learner seeded by the
job's seed, fitted to the dataset's statistics (`Agent.prepare`), trained for `steps` updates
on uniform batches of the dataset by `run_updates` (evaluations, checkpoints, non-finite
losses stop the job), and rebuilt from a policy file to act again.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ombrl.agents.buffer import ReplayBuffer
from ombrl.config import build
from ombrl.methods import Inputs
from ombrl.training.loop import make_learner, run_updates
from ombrl.training.samplers import RealSampler


def train_offline(
    agent_cls: type,
    cfg_cls: type,
    method: str,
    cfg: dict,
    inputs: Inputs,
    on_eval: Callable[[dict], None],
):
    """`cfg["steps"]` updates of an `agent_cls` learner on `inputs.dataset`.

    Args:
        agent_cls: the learner's class (`(obs_dim, act_dim, low, high, cfg, device, seed)`).
        cfg_cls: its config dataclass, built from `cfg`.
        method: the method's name (progress bar).
        cfg: the method's resolved schema section.
        inputs: the dataset, seed, device, evaluation and checkpoint.
        on_eval: receives each evaluation record (`ombrl.training.loop.run_updates`).

    Returns:
        The trained learner.
    """
    torch.manual_seed(inputs.seed)
    generator = torch.Generator(inputs.device).manual_seed(inputs.seed)
    agent_cfg = build(cfg_cls, cfg)
    agent = make_learner(
        agent_cls, agent_cfg, inputs.env_id, inputs.dataset, inputs.device, inputs.seed
    )
    agent.prepare(inputs.dataset)
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


def load_offline_policy(
    agent_cls: type,
    cfg_cls: type,
    meta: dict,
    tensors: dict[str, torch.Tensor],
    device: torch.device,
    seed: int,
) -> Callable[[np.ndarray], np.ndarray]:
    """The trained policy of a job's files (policy.json meta, policy.safetensors: weights and,
    for the model-free learners, the state statistics), acting deterministically."""
    agent = make_learner(
        agent_cls, build(cfg_cls, meta["config"]), meta["env_id"], None, device, seed
    )
    agent.load_state_dict(tensors)
    return lambda obs: agent.act(obs, deterministic=True)
