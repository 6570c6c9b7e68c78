"""MOReL and J-MOReL: natural policy gradient on the pessimistic MDP of a learned ensemble.

Each iteration rolls `paths` whole paths (up to `horizon` steps) of the current Gaussian
policy through the ensemble, all paths in one batched call per step, from start states drawn
out of a fixed pool: the dataset's episode start states, chosen once for the run (J-MOReL
overwrote its pool every iteration). A path ends at HALT, the first transition whose
uncertainty exceeds the threshold (or J-MOReL's "first violation + 1, at least 4 steps"),
which is terminal: no value bootstraps through it. Its reward is replaced by the penalty
(MOReL paper), has it added (J-MOReL) or is 0 (`truncate`, mjrl's code). The policy starts as
behaviour cloning of the dataset and takes one NPG step per iteration
(`ombrl.agents.npg.NPG`).

- `morel`: the original: a deterministic ensemble (config/ensembles/morel.yaml), the `morel`
  disagreement scale, raw observations, threshold `max(u over the data) / threshold`.
- `j-morel`: the thesis's: a probabilistic ensemble with elites (config/ensembles/pnn.yaml),
  the `jacobian` scale, standardised observations (`znorm`), `mean + threshold * std`.
Both are plain configs: any key overrides (schema `$defs.morel`, `$defs.j_morel`).

Its progress unit is the iteration; every `eval_every` iterations the deterministic policy
is evaluated in the real environment, and the logged metrics (means since the last
evaluation) hold the model's view: `path_return` (the train score), `paths_truncated`,
`path_length`, the resolved `halt_threshold`, the step's `kl` and `alpha`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from torch import Tensor

from ombrl.agents.npg import NPG, NPGConfig
from ombrl.config import build
from ombrl.data.dataset import Dataset
from ombrl.errors import OmbrlError
from ombrl.methods import Inputs
from ombrl.models.ensemble import DynamicsEnsemble
from ombrl.models.model_env import Pessimism
from ombrl.models.paths import Paths, model_paths
from ombrl.models.pessimism import PartitionRule, resolve_pessimism, resolved_numbers
from ombrl.tasks import Task, get_task
from ombrl.training.loop import Evaluation, make_learner, run_updates


def train(method: str, cfg: dict, inputs: Inputs, on_eval: Callable[[dict], None]) -> NPG:
    """`cfg["iterations"]` NPG iterations in the pessimistic MDP of `inputs.ensemble`.

    Args:
        method: `morel` or `j-morel`.
        cfg: the method's resolved schema section.
        inputs: dataset, ensemble, seed, device, evaluation (its episodes and seed; the
            schedule is `cfg["eval_every"]` iterations) and checkpoint.
        on_eval: receives each evaluation record (`ombrl.training.loop.run_updates`).

    Raises:
        OmbrlError: no ensemble, one of other dimensions, or j-morel without elites.
    """
    dataset, device, seed = inputs.dataset, inputs.device, inputs.seed
    ensemble = inputs.require_ensemble(method)
    if method == "j-morel" and len(ensemble.elites) >= ensemble.num_models:
        raise OmbrlError(
            f"j-morel needs an ensemble with elites (num_elites below num_models), this one "
            f"uses all {ensemble.num_models} members"
        )
    torch.manual_seed(seed)
    generator = torch.Generator(device).manual_seed(seed)
    scaled = partial(
        NPG, obs_mean=dataset.observations.mean(0), obs_std=dataset.observations.std(0)
    )
    agent = make_learner(scaled, build(NPGConfig, cfg), inputs.env_id, dataset, device, seed)
    agent.bc_init(dataset.observations, dataset.actions, generator)
    task = get_task(dataset.env_id)
    pessimism = resolve_pessimism(
        build(PartitionRule, cfg), ensemble, dataset, task, ensemble.elites
    )
    sampler = PathSampler(
        start_states(dataset, device),
        cfg["paths"],
        cfg["horizon"],
        ensemble,
        task,
        pessimism,
        cfg["truncation"],
        lambda obs: agent.policy(obs, deterministic=False),
        (agent.action_low, agent.action_high),
        generator,
    )
    run_updates(
        agent,
        sampler,
        cfg["iterations"],
        inputs.env_id,
        Evaluation(cfg["eval_every"], inputs.evaluation.episodes, inputs.evaluation.seed),
        on_eval,
        progress=inputs.progress,
        desc=f"{method} seed {seed}",
        checkpoint=inputs.checkpoint,
    )
    return agent


def load_policy(
    meta: dict, tensors: dict[str, Tensor], device: torch.device, seed: int
) -> Callable[[np.ndarray], np.ndarray]:
    """The trained policy of a MOReL or J-MOReL job's files (policy.json meta,
    policy.safetensors; the observation scaling is among the tensors), acting
    deterministically."""
    scaled = partial(NPG, obs_mean=tensors["obs_mean"], obs_std=tensors["obs_std"])
    agent = make_learner(
        scaled, build(NPGConfig, meta["config"]), meta["env_id"], None, device, seed
    )
    agent.load_state_dict(tensors)
    return lambda obs: agent.act(obs, deterministic=True)


def start_states(dataset: Dataset, device: torch.device) -> Tensor:
    """The dataset's episode start states (K x obs_dim): the pool paths start from."""
    ids = dataset.episode_ids
    first = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    return torch.as_tensor(dataset.observations[first], dtype=torch.float32, device=device)


class PathSampler:
    """Each iteration's model paths: `paths` start states drawn (with replacement) from a pool
    fixed for the run, rolled out for up to `horizon` steps under HALT.

    Args:
        pool: K x obs_dim start states (never changed).
        paths: paths per iteration.
        horizon: most steps per path.
        ensemble: the dynamics model (its elites are sampled and measured).
        task: reward and termination functions (the ensemble's reward head instead when it
            learned one).
        pessimism: resolved HALT numbers.
        truncation: `first` or `j-morel`.
        policy: the stochastic policy, `obs B x obs_dim -> act B x act_dim`.
        bounds: the action bounds the model sees actions clipped to.
        generator: start-state draws, member choice and model noise.
    """

    def __init__(
        self,
        pool: Tensor,
        paths: int,
        horizon: int,
        ensemble: DynamicsEnsemble,
        task: Task,
        pessimism: Pessimism,
        truncation: str,
        policy: Callable[[Tensor], Tensor],
        bounds: tuple[np.ndarray, np.ndarray],
        generator: torch.Generator,
    ) -> None:
        self.pool, self.paths, self.horizon = pool, paths, horizon
        self.ensemble, self.task, self.pessimism = ensemble, task, pessimism
        self.truncation, self.policy, self.generator = truncation, policy, generator
        self.low, self.high = (torch.as_tensor(b, device=pool.device) for b in bounds)

    def __call__(self, update: int) -> tuple[Paths, dict[str, float]]:
        """`iteration index -> (paths, the resolved HALT numbers)`."""
        index = torch.randint(
            len(self.pool), (self.paths,), generator=self.generator, device=self.pool.device
        )
        paths = model_paths(
            self.ensemble.predict,
            self.ensemble.elites,
            self.policy,
            self.pool[index],
            self.horizon,
            None if self.ensemble.predict_reward else self.task.reward,
            self.task.terminal,
            self.pessimism,
            self.truncation,
            self.generator,
            self.low,
            self.high,
        )
        return paths, resolved_numbers(self.pessimism)

    def state(self) -> tuple[dict[str, Tensor], dict]:
        """What a checkpoint must hold to draw the same paths again."""
        return {"generator": self.generator.get_state()}, {}

    def restore(self, tensors: dict[str, Tensor], meta: dict) -> None:
        """Inverse of `state`."""
        self.generator.set_state(tensors["generator"])
