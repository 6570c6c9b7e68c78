"""The policy stage: train one policy in one offline mode, evaluating as it goes.

Modes (`MODES`; their keys and defaults are in the config schema):
- `bc`: behaviour cloning on the dataset.
- `sac`: SAC on the dataset alone (offline, model-free, no pessimism).
- `mbpo`: SAC on h-step model rollouts from dataset states mixed with real transitions at
  `real_ratio`; no pessimism.
- `epistemic-penalty`, `aleatoric-penalty` (MOPO): as mbpo, with reward `r - lambda * u`.
- `epistemic-partitioning`, `aleatoric-partitioning` (MOReL's HALT): as mbpo, but a model
  transition with `u > threshold` is terminal and its reward is replaced (or has added)
  `halt_penalty`.
Every `rollout_every` updates a new round of `rollout_batch` rollouts enters a model buffer
that keeps the last `model_retain_epochs` rounds. Model rewards come from the ensemble's reward
head when it learned one (`predict_reward: true`), else from the task's known reward function.

Rules that depend on the data (a threshold relative to the dataset's own uncertainty, the
`jacobian` and `normalized` scales, the default HALT penalty `-max |r|`) are resolved once,
before training, from the dataset and the ensemble's elites; the resolved numbers are logged
with every evaluation (`halt_threshold`, `halt_penalty`).

All randomness derives from `seed` (weights, batches, rollouts, policy noise); evaluation uses
its own fixed seeds. Same seed and thread count give identical numbers.

The loop's state is explicit (the agent's `state_dict`, the sampler's `state`, the `_Progress`
bookkeeping), so a `Checkpointer` can save it every N updates and a killed job restarted with
the same command ends with the same bytes as an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ombrl.agents.bc import BC, BCConfig
from ombrl.agents.buffer import Batch, ReplayBuffer
from ombrl.agents.sac import SAC, SACConfig
from ombrl.checkpoint import Checkpointer, prefixed, subset
from ombrl.config import SCHEMA, validate
from ombrl.data.dataset import Dataset
from ombrl.errors import OmbrlError
from ombrl.evaluate import evaluate
from ombrl.models.ensemble import DynamicsEnsemble
from ombrl.models.model_env import Pessimism, rollout
from ombrl.models.uncertainty import (
    dataset_uncertainty,
    disagreement_scale,
    position_dims,
    threshold,
)
from ombrl.tasks import Task, get_task


@dataclass(frozen=True)
class Mode:
    """What an offline mode is made of.

    Attributes:
        section: the `$defs` entry of the config schema that holds its parameters.
        agent: `bc` or `sac`.
        model: trains on model rollouts (needs an ensemble).
        pessimism: `none`, `penalty` or `partitioning`.
        uncertainty: `epistemic` or `aleatoric` (the kind is a config key); None without
            pessimism.
    """

    section: str
    agent: str
    model: bool
    pessimism: str = "none"
    uncertainty: str | None = None


MODES = {
    "bc": Mode("bc", "bc", model=False),
    "sac": Mode("sac", "sac", model=False),
    "mbpo": Mode("mbpo", "sac", model=True),
    "epistemic-penalty": Mode("epistemic_penalty", "sac", True, "penalty", "epistemic"),
    "aleatoric-penalty": Mode("aleatoric_penalty", "sac", True, "penalty", "aleatoric"),
    "epistemic-partitioning": Mode(
        "epistemic_partitioning", "sac", True, "partitioning", "epistemic"
    ),
    "aleatoric-partitioning": Mode(
        "aleatoric_partitioning", "sac", True, "partitioning", "aleatoric"
    ),
}
#: Offline mode -> the `$defs` entry of the config schema that holds its parameters.
MODE_SECTIONS = {name: mode.section for name, mode in MODES.items()}


@dataclass
class RolloutConfig:
    """Model rollouts of the model-based modes and how uncertain transitions are treated.

    The fields with defaults belong to some modes only; a mode without them keeps these
    neutral values (no penalty, no threshold). The defaults users see are the schema's.
    """

    rollout_length: int  # h, model steps per rollout
    rollout_batch: int  # start states (dataset states) per rollout round
    rollout_every: int  # updates between rollout rounds
    model_retain_epochs: int  # rollout rounds kept in the model buffer
    real_ratio: float  # share of real transitions in each batch
    reward_source: str  # sampled (MOPO, MBPO) | mean over elites (offline-model-based-rl)
    uncertainty: str = "epistemic"  # epistemic | max_norm | max_var
    scale: str = "none"  # none | normalized | morel | jacobian
    penalty_lambda: float = 0.0  # lambda in r - lambda * u (penalty modes)
    threshold_rule: str = "absolute"  # absolute | max | meanstd | percentile (partitioning)
    threshold: float = float("inf")  # the threshold (absolute) or the rule's beta
    halt_reward: str = "replace"  # replace | add (partitioning)
    halt_penalty: float | None = None  # None: -max |r| of the dataset


@dataclass
class PolicyConfig:
    """Everything `train_policy` needs besides data, model, seed and evaluation."""

    steps: int  # gradient updates
    agent: SACConfig | BCConfig  # the learner's hyperparameters
    rollout: RolloutConfig | None  # model rollouts; None for model-free modes (bc, sac)


def policy_config(mode: str, params: Mapping) -> PolicyConfig:
    """Build a `PolicyConfig` from one `modes.<mode>` entry of a study config.

    Args:
        mode: a name of `MODES`.
        params: that mode's keys (schema vocabulary), validated here with its defaults;
            `ensemble` (an input, not a setting) is ignored.

    Raises:
        OmbrlError: an unknown mode, or an unknown key or bad value (every problem listed).
    """
    spec = _mode(mode)
    checked = validate(dict(params), f"mode {mode}", SCHEMA["$defs"][spec.section])
    checked.pop("ensemble", None)
    agent_cls = BCConfig if spec.agent == "bc" else SACConfig
    agent = agent_cls(**{f.name: checked[f.name] for f in fields(agent_cls)})
    rollout_cfg = None
    if spec.model:
        values = {f.name: checked[f.name] for f in fields(RolloutConfig) if f.name in checked}
        if spec.uncertainty == "epistemic":
            values["uncertainty"] = "epistemic"
        rollout_cfg = RolloutConfig(**values)
    return PolicyConfig(steps=int(checked["steps"]), agent=agent, rollout=rollout_cfg)


def make_agent(
    mode: str, cfg: PolicyConfig, env_id: str, device: torch.device, seed: int
) -> SAC | BC:
    """A fresh learner for `mode`, its actions bounded as the environment's are.

    Args:
        mode: a name of `MODES`.
        cfg: the mode's config (its `agent` must match the mode).
        env_id: gymnasium id whose action space sets the bounds.
        device: where the networks live.
        seed: seeds the initial weights and policy noise.
    """
    spec = _mode(mode)
    try:
        env = gym.make(env_id)
    except gym.error.Error as err:
        raise OmbrlError(f"env: cannot make {env_id!r} ({err})") from err
    space = env.observation_space, env.action_space
    env.close()
    obs_dim, act_dim = space[0].shape[0], space[1].shape[0]
    low, high = space[1].low, space[1].high
    agent_cls, cfg_cls = (BC, BCConfig) if spec.agent == "bc" else (SAC, SACConfig)
    if not isinstance(cfg.agent, cfg_cls) or spec.model != (cfg.rollout is not None):
        raise OmbrlError(f"mode {mode}: the config does not belong to this mode")
    return agent_cls(obs_dim, act_dim, low, high, cfg.agent, device, seed)


@dataclass(frozen=True)
class Evaluation:
    """How a training loop evaluates its policy in the real environment.

    Attributes:
        every: updates between evaluations.
        episodes: episodes per evaluation.
        seed: episode i of every evaluation is reset with `seed + i`.
    """

    every: int
    episodes: int
    seed: int


def train_policy(
    mode: str,
    dataset: Dataset,
    ensemble: DynamicsEnsemble | None,
    cfg: PolicyConfig | Mapping,
    seed: int,
    device: torch.device | str,
    evaluation: Evaluation,
    on_eval: Callable[[dict], None],
    progress: bool,
    checkpoint: Checkpointer | None = None,
) -> SAC | BC:
    """Train a policy offline and evaluate it in the real environment along the way.

    Args:
        mode: a name of `MODES`.
        dataset: the offline data (policies are evaluated in `dataset.env_id`).
        ensemble: the trained dynamics model (model-based modes), on `device`; else None.
        cfg: a `PolicyConfig`, or the mode's parameter dict (see `policy_config`).
        seed: the job's seed; every training random number derives from it.
        device: "cpu", "cuda" or a torch.device.
        evaluation: when and how to evaluate the deterministic policy.
        on_eval: called with {"step", "return", "return_std", <mean update metrics since the
            last evaluation>, <statistics of the last rollout round>} at step 0, every
            `evaluation.every` updates and after the last update; after a resume, first with
            every record saved in the checkpoint, so a log always holds the whole history.
        progress: show a tqdm bar.
        checkpoint: resume from its newest state if any, and save one every
            `checkpoint.every` updates; None: neither.

    Returns:
        The trained agent (SAC or BC).

    Raises:
        OmbrlError: an unknown mode, a model-based mode without an ensemble, bad settings.
    """
    if not isinstance(cfg, PolicyConfig):
        cfg = policy_config(mode, cfg)
    device = torch.device(device)
    torch.manual_seed(seed)
    generator = torch.Generator(device).manual_seed(seed)
    agent = make_agent(mode, cfg, dataset.env_id, device, seed)
    if (agent.obs_dim, agent.act_dim) != (dataset.obs_dim, dataset.act_dim):
        raise OmbrlError(
            f"dataset dimensions ({dataset.obs_dim}, {dataset.act_dim}) do not match "
            f"{dataset.env_id}'s ({agent.obs_dim}, {agent.act_dim})"
        )
    real = ReplayBuffer.from_dataset(dataset, device)
    sampler = _make_sampler(mode, dataset, ensemble, cfg, agent, real, generator)
    run_updates(
        agent,
        sampler,
        cfg.steps,
        dataset.env_id,
        evaluation,
        on_eval,
        progress=progress,
        desc=f"{mode} seed {seed}",
        checkpoint=checkpoint,
    )
    return agent


def run_updates(
    agent: SAC | BC,
    sampler: RealSampler,
    steps: int,
    env_id: str,
    evaluation: Evaluation,
    on_eval: Callable[[dict], None],
    progress: bool,
    desc: str,
    checkpoint: Checkpointer | None = None,
) -> None:
    """The training loop every learner shares: `steps` updates on the sampler's batches, an
    evaluation in `env_id` at step 0, every `evaluation.every` updates and after the last,
    and a checkpoint every `checkpoint.every` updates (resuming from the newest one first).

    Args:
        agent: the learner, updated in place.
        sampler: `update index -> (batch, statistics)`, with `state`/`restore` for
            checkpoints.
        steps: gradient updates.
        env_id: the gymnasium environment the policy is evaluated in.
        evaluation: when and how to evaluate.
        on_eval: receives each evaluation record (see `train_policy`).
        progress: show a tqdm bar.
        desc: the bar's label.
        checkpoint: resume and save; None: neither.
    """
    if evaluation.every < 1:
        raise OmbrlError(f"eval_every: {evaluation.every} must be at least 1")
    progress_state = _Progress()
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        agent.load_state_dict(subset(saved.tensors, "agent"))
        sampler.restore(subset(saved.tensors, "sampler"), saved.meta["sampler"])
        progress_state = _Progress(**saved.meta["progress"])
        for record in progress_state.records:
            on_eval(record)

    def report(step: int, metrics: dict[str, float]) -> None:
        returns = evaluate(
            lambda obs: agent.act(obs, deterministic=True),
            env_id,
            evaluation.episodes,
            evaluation.seed,
        )
        record = {
            "step": step,
            "return": float(np.mean(returns)),
            "return_std": float(np.std(returns)),
        }
        record.update(metrics)
        progress_state.records.append(record)
        on_eval(record)
        bar.set_postfix({"return": f"{record['return']:.1f}"})

    with tqdm(total=steps, initial=progress_state.step, disable=not progress, desc=desc) as bar:
        if not progress_state.records:
            report(0, {})
        for step in range(progress_state.step + 1, steps + 1):
            batch, stats = sampler(step - 1)
            progress_state.add(agent.update(batch))
            bar.update()
            if step % evaluation.every == 0 or step == steps:
                report(step, {**progress_state.pop_means(), **stats})
            if checkpoint is not None and checkpoint.due(step) and step < steps:
                tensors, sampler_meta = sampler.state()
                checkpoint.save(
                    step,
                    {**prefixed(agent.state_dict(), "agent"), **prefixed(tensors, "sampler")},
                    {"progress": asdict(progress_state), "sampler": sampler_meta},
                )


@dataclass
class _Progress:
    """The loop's own bookkeeping: updates done, metric sums since the last evaluation, and
    every evaluation record so far (plain JSON, saved in checkpoints)."""

    step: int = 0
    totals: dict[str, float] = field(default_factory=dict)
    count: int = 0
    records: list[dict] = field(default_factory=list)

    def add(self, metrics: dict[str, float]) -> None:
        """Count one update and accumulate its metrics."""
        self.step += 1
        self.count += 1
        for key, value in metrics.items():
            self.totals[key] = self.totals.get(key, 0.0) + value

    def pop_means(self) -> dict[str, float]:
        """Mean of each metric since the last call, and start summing afresh."""
        means = {k: v / self.count for k, v in self.totals.items()}
        self.totals, self.count = {}, 0
        return means


class RealSampler:
    """Training batches of real transitions (model-free modes: bc, sac).

    Args:
        real: the dataset's transitions.
        batch_size: transitions per batch.
        generator: on the buffer's device; the only source of randomness.
    """

    def __init__(self, real: ReplayBuffer, batch_size: int, generator: torch.Generator) -> None:
        self.real, self.batch_size, self.generator = real, batch_size, generator

    def __call__(self, update: int) -> tuple[Batch, dict[str, float]]:
        """`update index -> (training batch, last rollout statistics)`."""
        return self.real.sample(self.batch_size, self.generator), {}

    def state(self) -> tuple[dict[str, Tensor], dict]:
        """What a checkpoint must hold to continue drawing the same batches."""
        return {"generator": self.generator.get_state()}, {}

    def restore(self, tensors: dict[str, Tensor], meta: dict) -> None:
        """Inverse of `state`."""
        self.generator.set_state(tensors["generator"])


class RolloutSampler(RealSampler):
    """Model-based batches: real transitions mixed with a model buffer that every
    `rollout_every` updates receives a round of `rollout_batch` rollouts of the current policy
    and keeps the last `model_retain_epochs` rounds.

    Args:
        real: the dataset's transitions (also the rollouts' start states).
        batch_size: transitions per batch.
        generator: start states, member choice, model noise and batch draws.
        ensemble: the trained dynamics model.
        task: reward and termination functions of the environment.
        rc: rollout settings.
        pessimism: resolved pessimism (see `resolve_pessimism`).
        policy: `obs B x obs_dim -> act B x act_dim` (stochastic).
    """

    def __init__(
        self,
        real: ReplayBuffer,
        batch_size: int,
        generator: torch.Generator,
        ensemble: DynamicsEnsemble,
        task: Task,
        rc: RolloutConfig,
        pessimism: Pessimism,
        policy: Callable[[Tensor], Tensor],
    ) -> None:
        super().__init__(real, batch_size, generator)
        self.ensemble, self.task, self.rc, self.policy = ensemble, task, rc, policy
        self.pessimism = pessimism
        capacity = rc.model_retain_epochs * rc.rollout_batch * rc.rollout_length
        self.model = ReplayBuffer(capacity, real.obs.shape[1], real.act.shape[1], real.device)
        self.num_real = int(round(batch_size * rc.real_ratio))
        self.stats: dict[str, float] = {}

    def __call__(self, update: int) -> tuple[Batch, dict[str, float]]:
        rc, g = self.rc, self.generator
        if update % rc.rollout_every == 0:
            n, device = len(self.real), self.real.device
            index = torch.randint(n, (rc.rollout_batch,), generator=g, device=device)
            transitions, stats = rollout(
                self.ensemble.predict,
                self.ensemble.elites,
                self.policy,
                self.real.obs[index],
                rc.rollout_length,
                None if self.ensemble.predict_reward else self.task.reward,
                self.task.terminal,
                self.pessimism,
                rc.reward_source,
                g,
            )
            self.model.add(transitions)
            self.stats = {**stats, **resolved_numbers(self.pessimism)}
        if len(self.model) == 0:  # every model transition so far was non-finite
            return self.real.sample(self.batch_size, g), dict(self.stats)
        parts = [self.real.sample(self.num_real, g)] if self.num_real else []
        if self.batch_size > self.num_real:
            parts.append(self.model.sample(self.batch_size - self.num_real, g))
        return Batch.cat(parts), dict(self.stats)

    def state(self) -> tuple[dict[str, Tensor], dict]:
        tensors, meta = super().state()
        return {**tensors, **prefixed(self.model.state_dict(), "model")}, {"stats": self.stats}

    def restore(self, tensors: dict[str, Tensor], meta: dict) -> None:
        super().restore(tensors, meta)
        self.model.load_state_dict(subset(tensors, "model"))
        self.stats = dict(meta["stats"])


def _make_sampler(
    mode: str,
    dataset: Dataset,
    ensemble: DynamicsEnsemble | None,
    cfg: PolicyConfig,
    agent: SAC | BC,
    real: ReplayBuffer,
    generator: torch.Generator,
) -> RealSampler:
    """The batch source of `mode`, after checking the ensemble fits the dataset."""
    if cfg.rollout is None:
        return RealSampler(real, cfg.agent.batch_size, generator)
    if ensemble is None:
        raise OmbrlError(f"mode {mode} needs a trained ensemble")
    if ensemble.obs_dim != dataset.obs_dim or ensemble.act_dim != dataset.act_dim:
        raise OmbrlError(
            f"ensemble dimensions ({ensemble.obs_dim}, {ensemble.act_dim}) do not match the "
            f"dataset's ({dataset.obs_dim}, {dataset.act_dim})"
        )
    task = get_task(dataset.env_id)
    return RolloutSampler(
        real,
        cfg.agent.batch_size,
        generator,
        ensemble,
        task,
        cfg.rollout,
        resolve_pessimism(_mode(mode).pessimism, cfg.rollout, ensemble, dataset, task),
        lambda obs: agent.policy(obs, deterministic=False),
    )


def resolve_pessimism(
    kind: str, rc: RolloutConfig, ensemble: DynamicsEnsemble, dataset: Dataset, task: Task
) -> Pessimism:
    """Turn a mode's rules into numbers, from the dataset and the ensemble's elites.

    The scale comes from `disagreement_scale` (the `jacobian` one from a fixed sample of
    dataset states); a threshold rule other than `absolute` is applied to the uncertainty of
    every dataset transition, measured exactly as rollouts measure it (same kind, scale and
    members); a `null` HALT penalty becomes `-max |r|` of the dataset.

    Args:
        kind: `none`, `penalty` or `partitioning`.
        rc: the mode's rollout settings.
        ensemble: the dynamics model.
        dataset: the offline data.
        task: gives the position count of the `morel` scale.
    """
    if kind == "none":
        return Pessimism()
    positions = position_dims(task.name) if rc.scale == "morel" else None
    scale = disagreement_scale(
        rc.scale,
        ensemble,
        dataset.observations,
        dataset.actions,
        positions=positions,
        members=ensemble.elites,
    )
    scale = None if rc.scale == "none" else scale
    if kind == "penalty":
        return Pessimism("penalty", rc.uncertainty, scale, penalty_lambda=rc.penalty_lambda)
    limit = rc.threshold
    if rc.threshold_rule != "absolute":
        values = dataset_uncertainty(
            ensemble, dataset, [rc.uncertainty], _STATISTICS_BATCH, scale, ensemble.elites
        )[rc.uncertainty]
        limit = threshold(values, rc.threshold_rule, rc.threshold)
    penalty = rc.halt_penalty
    if penalty is None:
        penalty = -float(np.abs(dataset.rewards).max())
    return Pessimism(
        "partitioning",
        rc.uncertainty,
        scale,
        threshold=float(limit),
        halt_reward=rc.halt_reward,
        halt_penalty=float(penalty),
    )


def resolved_numbers(pessimism: Pessimism) -> dict[str, float]:
    """The data-dependent numbers worth logging next to the rollout statistics."""
    if pessimism.kind != "partitioning":
        return {}
    return {"halt_threshold": pessimism.threshold, "halt_penalty": pessimism.halt_penalty}


def _mode(name: str) -> Mode:
    if name not in MODES:
        raise OmbrlError(f"mode: {name!r} is not one of {', '.join(MODES)}")
    return MODES[name]


#: Transitions per forward pass when measuring the dataset's uncertainty.
_STATISTICS_BATCH = 8192
