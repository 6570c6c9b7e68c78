"""The policy stage: train one policy in one offline mode, evaluating as it goes.

Modes of this milestone:
- `bc`: behaviour cloning on the dataset.
- `aleatoric-penalty` (MOPO): SAC on h-step model rollouts from dataset states, with reward
  `r - lambda * u` (u aleatoric), mixed with real transitions at `real_ratio`. Every
  `rollout_every` updates a new round of `rollout_batch` rollouts enters a model buffer that
  keeps the last `model_retain_epochs` rounds.

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
from ombrl.data.dataset import Dataset
from ombrl.errors import OmbrlError
from ombrl.evaluate import evaluate
from ombrl.models.ensemble import DynamicsEnsemble
from ombrl.models.model_env import rollout
from ombrl.models.uncertainty import ALEATORIC_KINDS
from ombrl.tasks import Task, get_task

#: Offline mode -> the `$defs` entry of the config schema that holds its parameters.
MODE_SECTIONS = {"bc": "bc", "aleatoric-penalty": "aleatoric_penalty"}
#: Mode parameters that select inputs rather than configure training.
_INPUT_KEYS = {"ensemble"}


@dataclass
class RolloutConfig:
    """Model rollouts and pessimism of the `aleatoric-penalty` mode (MOPO)."""

    penalty_lambda: float  # lambda in r - lambda * u
    uncertainty: str  # max_norm (MOPO) | max_var (offline-model-based-rl)
    rollout_length: int  # h, model steps per rollout
    rollout_batch: int  # start states (dataset states) per rollout round
    rollout_every: int  # updates between rollout rounds
    model_retain_epochs: int  # rollout rounds kept in the model buffer
    real_ratio: float  # share of real transitions in each batch


@dataclass
class PolicyConfig:
    """Everything `train_policy` needs besides data, model, seed and evaluation."""

    steps: int  # gradient updates
    agent: SACConfig | BCConfig  # the learner's hyperparameters
    rollout: RolloutConfig | None  # model rollouts; None for model-free modes (bc)


def policy_config(mode: str, params: Mapping) -> PolicyConfig:
    """Build a `PolicyConfig` from one validated `modes.<mode>` entry of a study config.

    Args:
        mode: "bc" or "aleatoric-penalty".
        params: that mode's keys (schema vocabulary); `ensemble` (an input, not a setting)
            is ignored.

    Raises:
        OmbrlError: an unknown mode, or a missing or unknown key.
    """
    _check_mode(mode)
    agent_cls = BCConfig if mode == "bc" else SACConfig
    parts = [agent_cls] if mode == "bc" else [agent_cls, RolloutConfig]
    known = {"steps"} | {f.name for cls in parts for f in fields(cls)}
    given = set(params) - _INPUT_KEYS
    if missing := sorted(known - given):
        raise OmbrlError(f"mode {mode}: missing parameters {', '.join(missing)}")
    if unknown := sorted(given - known):
        raise OmbrlError(f"mode {mode}: unknown parameters {', '.join(unknown)}")

    def build(cls):
        return cls(**{f.name: params[f.name] for f in fields(cls)})

    rollout_cfg = build(RolloutConfig) if mode != "bc" else None
    if rollout_cfg is not None and rollout_cfg.uncertainty not in ALEATORIC_KINDS:
        raise OmbrlError(
            f"uncertainty: {rollout_cfg.uncertainty!r} is not one of {', '.join(ALEATORIC_KINDS)}"
        )
    return PolicyConfig(steps=int(params["steps"]), agent=build(agent_cls), rollout=rollout_cfg)


def make_agent(
    mode: str, cfg: PolicyConfig, env_id: str, device: torch.device, seed: int
) -> SAC | BC:
    """A fresh learner for `mode`, its actions bounded as the environment's are.

    Args:
        mode: "bc" or "aleatoric-penalty".
        cfg: the mode's config (its `agent` must match the mode).
        env_id: gymnasium id whose action space sets the bounds.
        device: where the networks live.
        seed: seeds the initial weights and policy noise.
    """
    _check_mode(mode)
    try:
        env = gym.make(env_id)
    except gym.error.Error as err:
        raise OmbrlError(f"env: cannot make {env_id!r} ({err})") from err
    space = env.observation_space, env.action_space
    env.close()
    obs_dim, act_dim = space[0].shape[0], space[1].shape[0]
    low, high = space[1].low, space[1].high
    if mode == "bc":
        if not isinstance(cfg.agent, BCConfig):
            raise OmbrlError("mode bc needs a BCConfig")
        return BC(obs_dim, act_dim, low, high, cfg.agent, device, seed)
    if not isinstance(cfg.agent, SACConfig) or cfg.rollout is None:
        raise OmbrlError(f"mode {mode} needs a SACConfig and a RolloutConfig")
    return SAC(obs_dim, act_dim, low, high, cfg.agent, device, seed)


def train_policy(
    mode: str,
    dataset: Dataset,
    ensemble: DynamicsEnsemble | None,
    cfg: PolicyConfig | Mapping,
    seed: int,
    device: torch.device | str,
    eval_every: int,
    eval_episodes: int,
    on_eval: Callable[[dict], None],
    progress: bool,
    eval_seed: int,
    checkpoint: Checkpointer | None = None,
) -> SAC | BC:
    """Train a policy offline and evaluate it in the real environment along the way.

    Args:
        mode: "bc" or "aleatoric-penalty".
        dataset: the offline data (policies are evaluated in `dataset.env_id`).
        ensemble: the trained dynamics model (model-based modes), on `device`; else None.
        cfg: a `PolicyConfig`, or the mode's parameter dict (see `policy_config`).
        seed: the job's seed; every training random number derives from it.
        device: "cpu", "cuda" or a torch.device.
        eval_every: updates between evaluations.
        eval_episodes: episodes per evaluation.
        on_eval: called with {"step", "return", "return_std", <mean update metrics since the
            last evaluation>, <statistics of the last rollout round>} at step 0, every
            `eval_every` updates and after the last update; after a resume, first with every
            record saved in the checkpoint, so a log always holds the whole history.
        progress: show a tqdm bar.
        eval_seed: episode i of every evaluation is reset with `eval_seed + i`.
        checkpoint: resume from its newest state if any, and save one every
            `checkpoint.every` updates; None: neither.

    Returns:
        The trained agent (SAC or BC).

    Raises:
        OmbrlError: an unknown mode, a model-based mode without an ensemble, bad settings.
    """
    if not isinstance(cfg, PolicyConfig):
        cfg = policy_config(mode, cfg)
    if eval_every < 1:
        raise OmbrlError(f"eval_every: {eval_every} must be at least 1")
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
            lambda obs: agent.act(obs, deterministic=True), dataset.env_id, eval_episodes, eval_seed
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

    desc = f"{mode} seed {seed}"
    with tqdm(total=cfg.steps, initial=progress_state.step, disable=not progress, desc=desc) as bar:
        if not progress_state.records:
            report(0, {})
        for step in range(progress_state.step + 1, cfg.steps + 1):
            batch, rollout_stats = sampler(step - 1)
            progress_state.add(agent.update(batch))
            bar.update()
            if step % eval_every == 0 or step == cfg.steps:
                report(step, {**progress_state.pop_means(), **rollout_stats})
            if checkpoint is not None and checkpoint.due(step) and step < cfg.steps:
                tensors, sampler_meta = sampler.state()
                checkpoint.save(
                    step,
                    {**prefixed(agent.state_dict(), "agent"), **prefixed(tensors, "sampler")},
                    {"progress": asdict(progress_state), "sampler": sampler_meta},
                )
    return agent


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
    """Training batches of real transitions (model-free modes: bc).

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
    """MOPO's batches: real transitions mixed with a model buffer that every `rollout_every`
    updates receives a round of `rollout_batch` rollouts of the current policy and keeps the
    last `model_retain_epochs` rounds.

    Args:
        real: the dataset's transitions (also the rollouts' start states).
        batch_size: transitions per batch.
        generator: start states, member choice, model noise and batch draws.
        ensemble: the trained dynamics model.
        task: reward and termination functions of the environment.
        rc: rollout and pessimism settings.
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
        policy: Callable[[Tensor], Tensor],
    ) -> None:
        super().__init__(real, batch_size, generator)
        self.ensemble, self.task, self.rc, self.policy = ensemble, task, rc, policy
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
                self.task.reward,
                self.task.terminal,
                rc.penalty_lambda,
                rc.uncertainty,
                g,
            )
            self.model.add(transitions)
            self.stats = stats
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
    if mode == "bc":
        return RealSampler(real, cfg.agent.batch_size, generator)
    if ensemble is None:
        raise OmbrlError(f"mode {mode} needs a trained ensemble")
    if ensemble.obs_dim != dataset.obs_dim or ensemble.act_dim != dataset.act_dim:
        raise OmbrlError(
            f"ensemble dimensions ({ensemble.obs_dim}, {ensemble.act_dim}) do not match the "
            f"dataset's ({dataset.obs_dim}, {dataset.act_dim})"
        )
    return RolloutSampler(
        real,
        cfg.agent.batch_size,
        generator,
        ensemble,
        get_task(dataset.env_id),
        cfg.rollout,
        lambda obs: agent.policy(obs, deterministic=False),
    )


def _check_mode(mode: str) -> None:
    if mode not in MODE_SECTIONS:
        raise OmbrlError(f"mode: {mode!r} is not one of {', '.join(MODE_SECTIONS)}")
