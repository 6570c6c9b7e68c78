"""Pessimism rules turned into numbers, once, from the dataset and the ensemble's members.

A study states rules (an uncertainty kind, a scale, a threshold rule and its coefficient, a
HALT penalty or `null` for `-max |r|`); a rollout needs numbers (`model_env.Pessimism`). Rules
that depend on the data (a threshold relative to the dataset's own uncertainty, the
`obs_std`, `target_std` and `jacobian` scales, the default HALT penalty) are resolved here, before
training, and logged with every evaluation (`halt_threshold`, `halt_penalty`). Every method
that rolls out in the model (the SAC family, MOReL) resolves its rules with this one function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ombrl.data.dataset import Dataset
from ombrl.models.ensemble import DynamicsEnsemble
from ombrl.models.model_env import HALTING_KINDS, Pessimism
from ombrl.models.uncertainty import (
    dataset_uncertainty,
    disagreement_scale,
    position_dims,
    threshold,
)
from ombrl.tasks import Task


@dataclass
class RolloutConfig:
    """Branched model rollouts of the SAC family (schema `$defs.model_rollouts` keys)."""

    rollout_length: int  # h, model steps per rollout (persistent: the most steps of one)
    rollout_batch: int  # rounds: start states (dataset states) per rollout round
    rollout_every: int  # rounds: updates between rollout rounds
    model_retain_epochs: int  # rounds: rollout rounds kept in the model buffer
    real_ratio: float  # share of real transitions in each batch
    reward_source: str  # sampled (MOPO, MBPO) | mean over the members (thesis penalty modes)
    members: str  # all (offline-model-based-rl) | elites (MOPO, MBPO)
    member_draw: str  # per_sample (MOPO, MBPO) | per_step (offline-model-based-rl)
    random_fraction: float  # share of the first updates whose rollouts act uniformly at random
    rollout_scheme: str  # rounds (MBPO, MOPO) | persistent (offline-model-based-rl)
    persistent_rollouts: int  # persistent: rollouts advanced one step per update
    model_buffer_size: int  # persistent: transitions the model buffer keeps (FIFO)


@dataclass
class PenaltyRule:
    """`r - lambda * u` (schema `$defs.epistemic_penalty`, `$defs.aleatoric_penalty`)."""

    uncertainty: str  # epistemic | max_norm | max_var
    scale: str  # none | obs_std | target_std | morel | jacobian
    penalty_lambda: float  # lambda


@dataclass
class PartitionRule:
    """MOReL's HALT (schema `$defs.partitioning` keys, plus the uncertainty and its scale)."""

    uncertainty: str  # epistemic | max_norm | max_var
    scale: str  # none | obs_std | target_std | morel | jacobian
    threshold_rule: str  # absolute | max | meanstd | percentile | fraction
    threshold: float  # the threshold (absolute) or the rule's coefficient
    halt_reward: str  # replace | add
    halt_penalty: float | None  # None: -max |r| of the dataset


@dataclass
class ObjectiveRule:
    """An objective other than the task's, cut off where the elites disagree (the thesis's
    survival and offline exploration modes; schema `$defs.survival`, `$defs.offline_exploration_*`).
    """

    objective: str  # survival | exploration-penalty | exploration-partitioning
    scale: str  # none | obs_std | target_std | morel | jacobian
    threshold_rule: str  # absolute | max | meanstd | percentile | fraction
    threshold: float  # the out-of-distribution threshold (absolute) or the rule's coefficient
    penalty_lambda: float  # exploration: reward scale (penalty) or novelty level (partitioning)


def resolve_pessimism(
    rule: PenaltyRule | PartitionRule | ObjectiveRule | None,
    ensemble: DynamicsEnsemble,
    dataset: Dataset,
    task: Task,
    members: list[int],
    scale_members: list[int] | None = None,
) -> Pessimism:
    """Turn a method's rule into numbers, from the dataset and the ensemble's `members`.

    The scale comes from `disagreement_scale` (the `jacobian` one from a fixed sample of
    dataset states); a threshold rule other than `absolute` is applied to the uncertainty of
    every dataset transition, measured exactly as rollouts measure it (same kind, scale and
    members); a `null` HALT penalty becomes `-max |r|` of the dataset.

    Args:
        rule: a penalty, partitioning or objective rule; None: no pessimism (MBPO).
        ensemble: the dynamics model.
        dataset: the offline data.
        task: gives the position count of the `morel` scale.
        members: the member indices rollouts measure u over (`uncertainty.member_indices`),
            and every threshold rule's dataset statistics.
        scale_members: the members the `jacobian` scale averages over (None: `members`;
            J-MOReL: all members while its threshold is measured over the elites).
    """
    if rule is None:
        return Pessimism()
    uncertainty = "epistemic" if isinstance(rule, ObjectiveRule) else rule.uncertainty
    positions = position_dims(task.name) if rule.scale == "morel" else None
    scale = disagreement_scale(
        rule.scale,
        ensemble,
        dataset.observations,
        dataset.actions,
        positions=positions,
        members=members if scale_members is None else scale_members,
    )
    scale = None if rule.scale == "none" else scale
    if isinstance(rule, PenaltyRule):
        return Pessimism("penalty", rule.uncertainty, scale, penalty_lambda=rule.penalty_lambda)
    limit = rule.threshold
    if rule.threshold_rule != "absolute":
        values = dataset_uncertainty(
            ensemble, dataset, [uncertainty], _STATISTICS_BATCH, scale, members
        )[uncertainty]
        limit = threshold(values, rule.threshold_rule, rule.threshold)
    if isinstance(rule, ObjectiveRule):
        return Pessimism(
            rule.objective,
            uncertainty,
            scale,
            penalty_lambda=rule.penalty_lambda,
            threshold=float(limit),
        )
    penalty = rule.halt_penalty
    if penalty is None:
        penalty = -float(np.abs(dataset.rewards).max())
    return Pessimism(
        "partitioning",
        rule.uncertainty,
        scale,
        threshold=float(limit),
        halt_reward=rule.halt_reward,
        halt_penalty=float(penalty),
    )


def resolved_numbers(pessimism: Pessimism) -> dict[str, float]:
    """The data-dependent numbers worth logging next to the rollout statistics."""
    if pessimism.kind not in HALTING_KINDS:
        return {}
    if pessimism.kind != "partitioning":
        return {"halt_threshold": pessimism.threshold}
    return {"halt_threshold": pessimism.threshold, "halt_penalty": pessimism.halt_penalty}


#: Transitions per forward pass when measuring the dataset's uncertainty.
_STATISTICS_BATCH = 8192
