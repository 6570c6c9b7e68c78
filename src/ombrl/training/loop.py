"""The training loop every learner shares, and when it evaluates.

`run_updates` is the loop of every method that learns by gradient updates (bc, the SAC family
offline and online): `steps` updates on a sampler's batches, an evaluation of the
deterministic policy in the real environment at step 0, every `Evaluation.every` updates and
after the last, and a checkpoint every N updates. Its state is explicit (the agent's
`state_dict`, the sampler's `state`, the `_Progress` bookkeeping), so a `Checkpointer` can save
it and a killed job restarted with the same command ends with the same bytes as an
uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ombrl.agents.buffer import Batch
from ombrl.checkpoint import Checkpointer, prefixed, subset
from ombrl.data.dataset import Dataset
from ombrl.errors import OmbrlError
from ombrl.evaluate import continuous_spaces, evaluate
from ombrl.io import require_finite


class Learner(Protocol):
    """What the loop needs of an agent (SAC and BC are learners)."""

    def act(self, obs: np.ndarray, deterministic: bool) -> np.ndarray: ...
    def update(self, batch: Batch) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Tensor]: ...
    def load_state_dict(self, state: dict[str, Tensor]) -> None: ...


class Sampler(Protocol):
    """`update index -> (batch, statistics)`, with `state`/`restore` for checkpoints."""

    def __call__(self, update: int) -> tuple[Batch, dict[str, float]]: ...
    def state(self) -> tuple[dict[str, Tensor], dict]: ...
    def restore(self, tensors: dict[str, Tensor], meta: dict) -> None: ...


def make_learner(
    cls: type,
    cfg: object,
    env_id: str,
    dataset: Dataset | None,
    device: torch.device,
    seed: int,
):
    """A fresh agent of class `cls` whose actions are bounded as `env_id`'s are.

    Args:
        cls: an agent class taking `(obs_dim, act_dim, low, high, cfg, device, seed)`.
        cfg: its config dataclass.
        env_id: the gymnasium environment it acts (and is evaluated) in.
        dataset: the offline data it learns from, whose dimensions must be the env's; None
            online.
        device: where the networks live.
        seed: seeds the initial weights and policy noise.

    Raises:
        OmbrlError: an unknown env, one without continuous actions, or a dataset whose
            dimensions are not the env's.
    """
    obs_space, act_space = continuous_spaces(env_id)
    obs_dim, act_dim = obs_space.shape[0], act_space.shape[0]
    if dataset is not None and (obs_dim, act_dim) != (dataset.obs_dim, dataset.act_dim):
        raise OmbrlError(
            f"dataset dimensions ({dataset.obs_dim}, {dataset.act_dim}) do not match "
            f"{env_id}'s ({obs_dim}, {act_dim})"
        )
    return cls(obs_dim, act_dim, act_space.low, act_space.high, cfg, device, seed)


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


def run_updates(
    agent: Learner,
    sampler: Sampler,
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
        on_eval: called with {"step", "return", "return_std", <mean update metrics since the
            last evaluation>, <the sampler's statistics>} at each evaluation; after a resume,
            first with every record saved in the checkpoint, so a log always holds the whole
            history.
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
        require_finite(agent.state_dict(), f"training at update {step}")
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
            metrics = agent.update(batch)
            bad = [key for key, value in metrics.items() if not np.isfinite(value)]
            if bad:
                raise OmbrlError(
                    f"training turned non-finite at update {step} ({', '.join(bad)}); nothing "
                    "written; lower the learning rate or check the data"
                )
            progress_state.add(metrics)
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
