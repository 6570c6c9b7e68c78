"""MOReL and J-MOReL: natural policy gradient on the pessimistic MDP of a learned ensemble.

Each iteration draws `update_paths` start states (with replacement) from a fixed pool, the
dataset's episode start states (J-MOReL overwrote its pool every iteration), and rolls each
out once per member the paths follow (the elites: mjrl's 4 models, J-MOReL's 4 elites), so an
iteration has `update_paths x members` paths of up to `horizon` steps, all in one batched
model call per step (`ombrl.models.paths.model_paths`). `path_scheme: per-model` (upstream):
each path follows one member's mean prediction for its whole length; `sampled`: a random
elite per step, its Gaussian sampled (ombrl's earlier paths). Paths shorter than 5 steps are
dropped, as upstream.

A path ends at HALT by `truncation` (`j-morel`: mjrl's and J-MOReL's "first violation + 1, at
least 4 steps"; `first`) with the HALT reward on its last step (`add` 0: mjrl's truncate
reward; `add` -50: J-MOReL's hopper penalty). `halt_value: bootstrap` (upstream) marks no path
terminal and bootstraps each from the baseline's value of its last kept state;
`absorbing` (the MOReL paper) makes HALT and task terminations terminal. HALT measures the
disagreement over `halt_members` (`elites` or `all`: J-MOReL's paths and Jacobian scale use all
7 members while its threshold uses the elites). The policy starts as `bc_steps` minibatches
of behaviour cloning and takes one NPG step per iteration (`ombrl.agents.npg.NPG`); its input
is scaled by `input_scaling` (`mask`: MOReL's observation mask, stored with the policy).

- `morel`: mjrl's: a deterministic ensemble (config/ensembles/morel.yaml), the `morel`
  disagreement scale, the observation mask, threshold `max(u over the data) / threshold`.
- `j-morel`: the thesis's: a probabilistic ensemble with elites (config/ensembles/pnn.yaml),
  the `jacobian` scale, `znorm` inputs (mean / mean absolute deviation), `mean + threshold * std`.
Both are plain configs: any key overrides (schema `$defs.morel`, `$defs.j_morel`).

Its progress unit is the iteration; every `eval_every` iterations the deterministic policy
is evaluated in the real environment, and the logged metrics (means since the last
evaluation) hold the model's view: `path_return` (the train score), `paths_truncated`,
`paths_dropped`, `path_length`, the resolved `halt_threshold`, the step's `kl` and `alpha`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import Tensor

from ombrl.agents.npg import NPG, NPGConfig, input_statistics
from ombrl.config import build
from ombrl.data.dataset import Dataset
from ombrl.errors import OmbrlError
from ombrl.methods import Inputs
from ombrl.models.ensemble import DynamicsEnsemble
from ombrl.models.model_env import Pessimism
from ombrl.models.paths import UPSTREAM_MIN_PATH_STEPS, Paths, model_paths
from ombrl.models.pessimism import PartitionRule, resolve_pessimism, resolved_numbers
from ombrl.models.uncertainty import POSITION_DIMS, observation_mask
from ombrl.tasks import RewardFn, TerminalFn, get_task, model_functions
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
    task = get_task(dataset.env_id)
    obs_dim = dataset.observations.shape[1]
    mask = observation_mask(task.name, obs_dim) if task.name in POSITION_DIMS else None
    shift, scale = input_statistics(cfg["input_scaling"], dataset.observations, mask)
    scaled = partial(NPG, obs_mean=shift, obs_std=scale)
    agent = make_learner(scaled, build(NPGConfig, cfg), inputs.env_id, dataset, device, seed)
    agent.bc_init(dataset.observations, dataset.actions, generator)
    members = list(range(ensemble.num_models)) if cfg["halt_members"] == "all" else None
    rule = build(PartitionRule, cfg)
    pessimism = resolve_pessimism(
        rule, ensemble, dataset, task, ensemble.elites, scale_members=members
    )
    code = "mjrl" if method == "morel" else "j-morel"
    sampler = PathSampler(
        start_states(dataset, device),
        cfg["update_paths"],
        cfg["horizon"],
        ensemble,
        model_functions(task, code, cfg["model_functions"]),
        pessimism,
        PathRules(cfg["truncation"], cfg["path_scheme"], cfg["halt_value"], members),
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


@dataclass(frozen=True)
class PathRules:
    """How an iteration's paths are rolled out and valued (schema keys of the same names).

    Attributes:
        truncation: `first` or `j-morel`.
        path_scheme: `per-model` or `sampled`.
        halt_value: `bootstrap` or `absorbing`.
        halt_members: the members HALT measures (None: the elites).
    """

    truncation: str
    path_scheme: str
    halt_value: str
    halt_members: list[int] | None


class PathSampler:
    """Each iteration's model paths: `update_paths` start states drawn (with replacement) from
    a pool fixed for the run, each rolled out once per elite for up to `horizon` steps.

    Args:
        pool: K x obs_dim start states (never changed).
        update_paths: start states per iteration (paths per member).
        horizon: most steps per path.
        ensemble: the dynamics model (its elites are followed).
        functions: the reward and termination in the model (`tasks.model_functions`; the
            ensemble's reward head instead of the reward when it learned one).
        pessimism: resolved HALT numbers.
        rules: truncation, path scheme, HALT value and members.
        policy: the stochastic policy, `obs B x obs_dim -> act B x act_dim`.
        bounds: the action bounds the model sees actions clipped to.
        generator: start-state draws, member choice and model noise.
    """

    def __init__(
        self,
        pool: Tensor,
        update_paths: int,
        horizon: int,
        ensemble: DynamicsEnsemble,
        functions: tuple[RewardFn, TerminalFn],
        pessimism: Pessimism,
        rules: PathRules,
        policy: Callable[[Tensor], Tensor],
        bounds: tuple[np.ndarray, np.ndarray],
        generator: torch.Generator,
    ) -> None:
        self.pool, self.update_paths, self.horizon = pool, update_paths, horizon
        self.ensemble, self.pessimism = ensemble, pessimism
        self.reward, self.terminal = functions
        self.rules, self.policy, self.generator = rules, policy, generator
        self.low, self.high = (torch.as_tensor(b, device=pool.device) for b in bounds)

    def __call__(self, update: int) -> tuple[Paths, dict[str, float]]:
        """`iteration index -> (paths, the resolved HALT numbers)`."""
        device = self.pool.device
        index = torch.randint(
            len(self.pool), (self.update_paths,), generator=self.generator, device=device
        )
        # Only the members the paths follow or HALT measures are run, as positions 0..K-1.
        elites, measured = self.ensemble.elites, self.rules.halt_members
        used = sorted(set(elites) | set(measured or ()))
        position = {m: k for k, m in enumerate(used)}
        run = (
            None if len(used) == self.ensemble.num_models else torch.as_tensor(used, device=device)
        )
        elites = [position[m] for m in elites]
        measured = None if measured is None else [position[m] for m in measured]
        # Member-major, as upstream: every start state under member 0, then member 1, ...
        starts = self.pool[index].repeat(len(elites), 1)
        member = torch.as_tensor(elites, device=device).repeat_interleave(self.update_paths)
        paths = model_paths(
            lambda obs, act: self.ensemble.predict(obs, act, run),
            elites,
            self.policy,
            starts,
            self.horizon,
            None if self.ensemble.predict_reward else self.reward,
            self.terminal,
            self.pessimism,
            self.rules.truncation,
            self.generator,
            self.low,
            self.high,
            path_member=member if self.rules.path_scheme == "per-model" else None,
            halt_members=measured,
            halt_value=self.rules.halt_value,
            min_steps=UPSTREAM_MIN_PATH_STEPS,
        )
        return paths, resolved_numbers(self.pessimism)

    def state(self) -> tuple[dict[str, Tensor], dict]:
        """What a checkpoint must hold to draw the same paths again."""
        return {"generator": self.generator.get_state()}, {}

    def restore(self, tensors: dict[str, Tensor], meta: dict) -> None:
        """Inverse of `state`."""
        self.generator.set_state(tensors["generator"])
