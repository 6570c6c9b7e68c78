"""The SAC family: one SAC learner, twelve ways to feed it.

- `sac`: the dataset alone (offline, model-free); or, with `--env`, online, acting in the
  environment (`EnvSampler`: `warmup` random steps, then one step per update).
- `mbpo`: h-step model rollouts from dataset states mixed with real transitions at
  `real_ratio`; no pessimism.
- `mopo`: as mbpo, with reward `r - lambda * u`, u the largest norm of an elite's predicted
  std (MOPO).
- `epistemic-penalty`, `aleatoric-penalty` (the thesis's penalty modes): reward `r - lambda * u`.
- `epistemic-partitioning`, `aleatoric-partitioning` (the thesis's partitioning modes, MOReL's
  HALT in SAC): a model transition with `u > threshold` is terminal and its reward is replaced
  by (or has added) `halt_penalty`.
- `survival`, `offline-exploration-penalty`, `offline-exploration-partitioning` (the thesis's
  other modes): as mbpo, but the reward is another objective (1 per step survived, or the
  elites' disagreement), and a transition past the epistemic threshold ends the path
  (`model_env.halting_reward`). Their scores measure the task's return of a policy that never
  optimised it.
- `finetune` (offline-to-online, the thesis's): starts from another entry's trained state
  (`Inputs.start`) and learns online, one environment step per update, with a share of the
  dataset kept in the replay buffer. No checkpoints, as online `sac`.

Every `rollout_every` updates a new round of `rollout_batch` rollouts enters a model buffer
that keeps the last `model_retain_epochs` rounds; rollouts of the first `random_fraction` of
the updates act at random. Model rewards come from the ensemble's
reward head when it learned one (`predict_reward: true`), else from the task's function.
All randomness derives from the seed (weights, batches, rollouts, policy noise); evaluation
uses its own fixed seeds.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ombrl.agents.buffer import Batch, ReplayBuffer
from ombrl.agents.sac import SAC, SACConfig
from ombrl.config import build
from ombrl.errors import OmbrlError
from ombrl.methods import Inputs
from ombrl.models.pessimism import (
    ObjectiveRule,
    PartitionRule,
    PenaltyRule,
    RolloutConfig,
    resolve_pessimism,
)
from ombrl.models.uncertainty import member_indices
from ombrl.tasks import get_task
from ombrl.training.loop import make_learner, run_updates
from ombrl.training.samplers import EnvSampler, RealSampler, RolloutSampler

#: Method -> (its pessimism rule, the uncertainty it fixes (None: a config key) or, for an
#: `ObjectiveRule`, the objective).
PESSIMISM = {
    "mbpo": (None, None),
    "mopo": (PenaltyRule, None),
    "epistemic-penalty": (PenaltyRule, "epistemic"),
    "aleatoric-penalty": (PenaltyRule, None),
    "epistemic-partitioning": (PartitionRule, "epistemic"),
    "aleatoric-partitioning": (PartitionRule, None),
    "survival": (ObjectiveRule, "survival"),
    "offline-exploration-penalty": (ObjectiveRule, "exploration-penalty"),
    "offline-exploration-partitioning": (ObjectiveRule, "exploration-partitioning"),
}


def train(method: str, cfg: dict, inputs: Inputs, on_eval: Callable[[dict], None]) -> SAC:
    """`cfg["steps"]` SAC updates on the batches of `method`.

    Args:
        method: `sac`, `finetune` or a key of `PESSIMISM`.
        cfg: the method's resolved schema section.
        inputs: dataset (None: online in `inputs.env_id`), ensemble (model-based methods),
            seed, device, evaluation, checkpoint.
        on_eval: receives each evaluation record (`ombrl.training.loop.run_updates`);
            online records also hold `env_steps` and `train_return`.
    """
    device, seed = inputs.device, inputs.seed
    torch.manual_seed(seed)
    generator = torch.Generator(device).manual_seed(seed)
    agent_cfg = build(SACConfig, cfg)
    agent = make_learner(SAC, agent_cfg, inputs.env_id, inputs.dataset, device, seed)
    if agent_cfg.obs_norm == "dataset" and method != "finetune":
        if inputs.dataset is None:
            raise OmbrlError("obs_norm: dataset needs a dataset (online sac has none); use none")
        agent.set_obs_statistics(inputs.dataset.observations)
    if method == "finetune":
        return _finetune(agent, cfg, inputs, generator, on_eval)
    if inputs.dataset is None:
        return _train_online(agent, cfg["steps"], inputs, generator, on_eval)
    real = ReplayBuffer.from_dataset(inputs.dataset, device)
    if method == "sac":
        sampler = RealSampler(real, agent_cfg.batch_size, generator)
    else:
        sampler = _rollout_sampler(method, cfg, inputs, agent, real, generator)
    run_updates(
        agent,
        sampler,
        cfg["steps"],
        inputs.env_id,
        inputs.evaluation,
        on_eval,
        progress=inputs.progress,
        desc=f"{method} seed {seed}",
        checkpoint=inputs.checkpoint,
    )
    return agent


def load_policy(
    meta: dict, tensors: dict[str, torch.Tensor], device: torch.device, seed: int
) -> Callable[[np.ndarray], np.ndarray]:
    """The trained policy of a SAC-family job's files (policy.json meta, policy.safetensors),
    acting deterministically."""
    agent = make_learner(SAC, build(SACConfig, meta["config"]), meta["env_id"], None, device, seed)
    agent.load_state_dict(tensors)
    return lambda obs: agent.act(obs, deterministic=True)


def _rollout_sampler(
    method: str,
    cfg: dict,
    inputs: Inputs,
    agent: SAC,
    real: ReplayBuffer,
    generator: torch.Generator,
) -> RolloutSampler:
    """The model-based batch source (the ensemble checked against the dataset)."""
    dataset, ensemble = inputs.dataset, inputs.require_ensemble(method)
    rule_cls, kind = PESSIMISM[method]
    rule = None
    if rule_cls is ObjectiveRule:
        rule = build(ObjectiveRule, {"objective": kind, "penalty_lambda": 0.0, **cfg})
    elif rule_cls is not None:
        rule = build(rule_cls, {"uncertainty": kind, **cfg})
    task = get_task(dataset.env_id)
    rc = build(RolloutConfig, cfg)
    members = member_indices(ensemble, rc.members)
    bounds = (torch.as_tensor(agent.action_low), torch.as_tensor(agent.action_high))
    return RolloutSampler(
        real,
        agent.cfg.batch_size,
        generator,
        ensemble,
        task,
        rc,
        resolve_pessimism(rule, ensemble, dataset, task, members),
        lambda obs: agent.policy(obs, deterministic=False),
        bounds,
        round(rc.random_fraction * cfg["steps"]),
    )


def start_from(agent: SAC, inputs: Inputs) -> SAC:
    """`agent` with the trained SAC state of `inputs.start` (policy, critics, targets,
    temperature, optimisers), the state offline-to-online finetuning begins with.

    Raises:
        OmbrlError: no state given, or one of other networks (`SAC.load_state_dict`).
    """
    if inputs.start is None:
        raise OmbrlError("finetune starts from a trained SAC policy: give --init DIR")
    agent.load_state_dict(inputs.start)
    return agent


def _finetune(
    agent: SAC,
    cfg: dict,
    inputs: Inputs,
    generator: torch.Generator,
    on_eval: Callable[[dict], None],
) -> SAC:
    """Offline-to-online: from the offline entry's state, `cfg["steps"]` online updates, one
    environment step each (no random warmup: the policy is trained), with a random
    `dataset_share` of the dataset in the replay buffer from the start."""
    start_from(agent, inputs)
    data = ReplayBuffer.from_dataset(inputs.dataset, inputs.device)
    keep = round(cfg["dataset_share"] * len(data))
    picker = torch.Generator(inputs.device).manual_seed(inputs.seed)
    index = torch.randperm(len(data), generator=picker, device=inputs.device)[:keep]
    kept = Batch(
        data.obs[index],
        data.act[index],
        data.rew[index],
        data.next_obs[index],
        data.terminal[index],
    )
    return _train_online(agent, cfg["steps"], inputs, generator, on_eval, warmup=0, initial=kept)


def _train_online(
    agent: SAC,
    steps: int,
    inputs: Inputs,
    generator: torch.Generator,
    on_eval: Callable[[dict], None],
    warmup: int | None = None,
    initial: Batch | None = None,
) -> SAC:
    """SAC learning by acting: `inputs.warmup` random steps, then one env step per update.

    No checkpoints: a gymnasium environment's state (simulator, random generator, time-limit
    counter) has no portable way to be saved and restored.
    """
    warmup = inputs.warmup if warmup is None else warmup
    sampler = EnvSampler(
        inputs.env_id,
        agent,
        agent.cfg.batch_size,
        warmup + steps,
        warmup,
        inputs.seed,
        generator,
        initial,
    )
    try:
        run_updates(
            agent,
            sampler,
            steps,
            inputs.env_id,
            inputs.evaluation,
            on_eval,
            inputs.progress,
            f"online sac seed {inputs.seed}",
        )
    finally:
        sampler.env.close()
    return agent
