"""How uncertain the ensemble is about a transition, and what counts as too uncertain.

Pessimistic offline MBRL penalises (MOPO) or cuts off (MOReL's HALT) model transitions whose
uncertainty `u(s, a)` is large. Two families of `u`, both from one `Prediction`:

- epistemic: the largest distance between two members' mean next states. Members agree where
  the data pinned them down, so this grows off the data distribution. Distances are taken after
  multiplying each state dimension by a `scale`, because raw dimensions differ in units and
  range (a joint velocity moves ~50x more than a joint angle).
- aleatoric: the predicted noise itself (`max_norm`, MOPO; `max_var`, offline-model-based-rl).
  It also grows off the data, but it measures what a member believes is noise, not disagreement.
  The same `scale` applies (to the std), so both kinds can be measured in the units of
  offline-model-based-rl's tuned lambdas and thresholds (`obs_std`: next states standardised
  by the dataset's observation std, as its `get_prediction` measures them).

A threshold on `u` only means something relative to the `u` the dataset itself gets, so
`dataset_statistics` computes the distribution over every dataset transition and `threshold`
turns it into a number with the upstream rules.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor
from torch.func import vjp

from ombrl.config import RENAMED_VALUES
from ombrl.data.dataset import Dataset
from ombrl.errors import OmbrlError
from ombrl.models.ensemble import DynamicsEnsemble, Prediction

ALEATORIC_KINDS = ("max_norm", "max_var")
UNCERTAINTY_KINDS = ("epistemic", *ALEATORIC_KINDS)
SCALE_KINDS = ("none", "obs_std", "target_std", "morel", "jacobian")
#: Scale names that changed meaning or name -> the name to use now (one line in every error).
RENAMED_SCALES = RENAMED_VALUES["scale"]
#: Which members a rollout samples from and measures u over.
MEMBER_SETS = ("all", "elites")
THRESHOLD_RULES = ("max", "meanstd", "percentile", "fraction")
# MOReL's weight of a velocity dimension relative to a position dimension.
MOREL_VELOCITY_WEIGHT = 0.02
# Position entries at the start of each task's observation: MuJoCo's qpos without the x
# coordinate (gymnasium excludes it), followed by qvel. Keys are `ombrl.tasks.Task.name`.
POSITION_DIMS = {"inverted_pendulum": 2, "hopper": 5, "walker2d": 8, "halfcheetah": 8}
# Percentiles reported by `dataset_statistics` (keys "p50", "p90", ...).
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
# Bound on the floats in one hidden activation of the Jacobian pass (64 MiB).
_JACOBIAN_CHUNK_ELEMENTS = 2**24


def member_indices(ensemble: DynamicsEnsemble, members: str) -> list[int]:
    """The member indices of a `MEMBER_SETS` name: every network (offline-model-based-rl) or
    the elites (MOPO, MBPO)."""
    if members == "all":
        return list(range(ensemble.num_models))
    if members == "elites":
        return list(ensemble.elites)
    raise OmbrlError(f"members: {members!r} is not one of {', '.join(MEMBER_SETS)}")


def _select(x: Tensor, members: list[int] | None) -> Tensor:
    """Rows of the member dimension: all of them when `members` is None."""
    if members is None:
        return x
    if not members:
        raise OmbrlError("uncertainty: the member list is empty")
    return x[torch.as_tensor(members, dtype=torch.long, device=x.device)]


def epistemic(
    pred: Prediction, scale: Tensor | None = None, members: list[int] | None = None
) -> Tensor:
    """Largest pairwise L2 distance between members' scaled mean next states.

    Args:
        pred: `next_obs_mean` E x B x obs_dim (variances are ignored).
        scale: obs_dim weights applied to every dimension before measuring distances
            (see `disagreement_scale`); None means ones.
        members: member indices taking part (e.g. the elites); None means all.

    Returns:
        u, B; zero for a single member.
    """
    mean = _select(pred.next_obs_mean, members)
    if scale is not None:
        mean = mean * scale.to(mean.device, mean.dtype)
    points = mean.transpose(0, 1)  # B x E x obs_dim: one small distance matrix per sample
    # The direct formula, not the |x|^2 + |y|^2 - 2xy matmul shortcut, which loses exact zeros.
    dist = torch.cdist(points, points, compute_mode="donot_use_mm_for_euclid_dist")
    return dist.amax(dim=(1, 2))


def aleatoric(
    pred: Prediction, kind: str, members: list[int] | None = None, scale: Tensor | None = None
) -> Tensor:
    """Aleatoric uncertainty of each (s, a) from the members' predicted next-state variances.

    Args:
        pred: a probabilistic prediction, `next_obs_var` E x B x obs_dim (means are ignored).
        kind: `max_norm`, the largest L2 norm of a member's predicted std (MOPO), or `max_var`,
            the largest predicted variance of any member and dimension (offline-model-based-rl).
        members: member indices taking part; None means all.
        scale: obs_dim weights applied to the std (the variance is multiplied by scale^2);
            None means ones.

    Returns:
        u, B.

    Raises:
        OmbrlError: an unknown kind, or a deterministic prediction (no variance).
    """
    if kind not in ALEATORIC_KINDS:
        raise OmbrlError(f"uncertainty: {kind!r} is not one of {', '.join(ALEATORIC_KINDS)}")
    if pred.next_obs_var is None:
        raise OmbrlError(
            f"uncertainty: {kind} needs a probabilistic ensemble (probabilistic: true)"
        )
    var = _select(pred.next_obs_var, members)
    if scale is not None:
        var = var * scale.to(var.device, var.dtype).square()
    if kind == "max_norm":
        return var.sum(dim=-1).sqrt().amax(dim=0)
    return var.amax(dim=(0, 2))


def uncertainty(
    pred: Prediction, kind: str, scale: Tensor | None = None, members: list[int] | None = None
) -> Tensor:
    """`epistemic` (with `scale`) or one of the `aleatoric` kinds, by name.

    Args:
        pred: E x B x obs_dim predictions.
        kind: one of `UNCERTAINTY_KINDS`.
        scale: obs_dim weights of the mean (epistemic) or of the std (aleatoric kinds).
        members: member indices taking part; None means all.

    Returns:
        u, B.
    """
    if kind == "epistemic":
        return epistemic(pred, scale, members)
    if kind not in ALEATORIC_KINDS:
        raise OmbrlError(f"uncertainty: {kind!r} is not one of {', '.join(UNCERTAINTY_KINDS)}")
    return aleatoric(pred, kind, members, scale)


def position_dims(task_name: str) -> int:
    """How many leading observation entries of a task are positions (for the `morel` scale).

    Args:
        task_name: `ombrl.tasks.Task.name`, e.g. "hopper".
    """
    if task_name not in POSITION_DIMS:
        raise OmbrlError(
            f"disagreement scale morel: no position count for task {task_name!r} "
            f"(known: {', '.join(POSITION_DIMS)})"
        )
    return POSITION_DIMS[task_name]


def observation_mask(task_name: str, obs_dim: int) -> np.ndarray:
    """MOReL's observation mask (mjrl's `obs_mask`): 1 for each position, 0.02 for each
    velocity; mjrl multiplies every observation by it (data, environment, policy, baseline)."""
    positions = position_dims(task_name)
    mask = np.full(obs_dim, MOREL_VELOCITY_WEIGHT, dtype=np.float32)
    mask[:positions] = 1.0
    return mask


def disagreement_scale(
    kind: str,
    ensemble: DynamicsEnsemble,
    obs: Tensor,
    act: Tensor,
    positions: int | None = None,
    members: list[int] | None = None,
    num_samples: int = 1024,
    seed: int = 0,
) -> Tensor:
    """Per-dimension weights that make state dimensions comparable in `epistemic`.

    - `none`: ones (raw units).
    - `obs_std`: `1 / std` of the dataset's observations (sample std, n - 1), so next states
      are measured standardised by the statistics of the model's inputs: the units of
      offline-model-based-rl's uncertainties (utils/preprocessing.py, applied to the mean next
      states and used for its loss). A constant dimension (std 0) gets weight 1 where
      upstream would divide by zero.
    - `target_std`: `1 / std` of the model's targets (the state deltas), the space ombrl's
      network predicts in; on Hopper 2-8 times the `obs_std` weights.
    - `morel`: 1 for the first `positions` dimensions, 0.02 for the rest (velocities).
    - `jacobian`: `1 / sqrt(mean over members and states of diag(J J^T))`, J = d f_m / d s the
      Jacobian of member m's mean next state w.r.t. the state. Dimension i's weight undoes how
      strongly the dynamics amplify a state perturbation into that output, so a dimension
      where members naturally spread does not dominate the distance (J-MOReL).

    Args:
        kind: one of `SCALE_KINDS`.
        ensemble: the dynamics model (any device; its parameters are not changed).
        obs: N x obs_dim dataset states (`obs_std` and `jacobian` read them).
        act: N x act_dim actions taken in them.
        positions: leading position dimensions (`morel`; see `position_dims`).
        members: member indices averaged over (`jacobian`); None means all.
        num_samples: `jacobian` uses this many states drawn without replacement (all if fewer).
        seed: seeds that draw, so the same inputs give the same scale.

    Returns:
        scale, obs_dim, on the ensemble's device.
    """
    device = ensemble.input_mean.device
    obs_dim = ensemble.obs_dim
    if kind == "none":
        return torch.ones(obs_dim, device=device)
    if kind == "obs_std":
        std = torch.as_tensor(np.asarray(obs, dtype=np.float64).std(axis=0, ddof=1))
        std = torch.where(std > 0, std, torch.ones_like(std))
        return std.reciprocal().to(device=device, dtype=torch.float32)
    if kind == "target_std":
        return ensemble.target_std[:obs_dim].reciprocal()
    if kind == "morel":
        if positions is None or not 0 < positions <= obs_dim:
            raise OmbrlError(
                f"disagreement scale morel: position count {positions} must be in 1..{obs_dim}"
            )
        scale = torch.full((obs_dim,), MOREL_VELOCITY_WEIGHT, device=device)
        scale[:positions] = 1.0
        return scale
    if kind == "jacobian":
        obs = torch.as_tensor(obs, dtype=torch.float32, device=device)
        act = torch.as_tensor(act, dtype=torch.float32, device=device)
        if obs.shape[0] == 0:
            raise OmbrlError("disagreement scale jacobian: no states given")
        if obs.shape[0] > num_samples:
            generator = torch.Generator().manual_seed(seed)
            rows = torch.randperm(obs.shape[0], generator=generator)[:num_samples].to(device)
            obs, act = obs[rows], act[rows]
        mean_sq = jacobian_row_norms(ensemble, obs, act, members).mean(dim=(0, 1))
        return mean_sq.clamp_min(torch.finfo(mean_sq.dtype).tiny).rsqrt()
    if kind in RENAMED_SCALES:
        raise OmbrlError(f"disagreement scale: {kind!r} was renamed; use {RENAMED_SCALES[kind]}")
    raise OmbrlError(f"disagreement scale: {kind!r} is not one of {', '.join(SCALE_KINDS)}")


def jacobian_row_norms(
    ensemble: DynamicsEnsemble, obs: Tensor, act: Tensor, members: list[int] | None = None
) -> Tensor:
    """diag(J J^T) of every member at every state: squared row norms of d f_m(s, a) / d s.

    Uses the batch trick instead of `vmap(jacrev(...))` per sample (which materialised tens of
    GB here, and ran ~5x slower than this in its `vjp`-under-`vmap` form): member m's output
    at row b depends only on member m's input at row b, so one reverse pass with the
    cotangent `e_i` on every row returns row i of every member's Jacobian at every state.
    The obs_dim cotangents become obs_dim copies of the batch: one forward and one backward.

    Args:
        ensemble: the dynamics model.
        obs: N x obs_dim states.
        act: N x act_dim actions.
        members: member indices kept; None means all.

    Returns:
        E' x N x obs_dim, entry [m, b, i] = sum_j (d f_m(s_b)_i / d s_j)^2.
    """
    e, d = ensemble.num_models, ensemble.obs_dim
    widest = max([ensemble.in_dim, *ensemble.hidden_size, 2 * ensemble.out_dim])
    chunk = max(1, _JACOBIAN_CHUNK_ELEMENTS // (e * d * widest))
    eye = torch.eye(d, device=obs.device)
    parts = []
    with torch.no_grad():  # torch.func differentiates anyway; parameters stay out of it
        for start in range(0, obs.shape[0], chunk):
            s, a = obs[start : start + chunk], act[start : start + chunk]
            n = s.shape[0]
            # Block i of the repeated batch carries cotangent e_i; each member its own copy.
            s_rep = s.repeat(d, 1).expand(e, -1, -1).contiguous()
            a_rep = a.repeat(d, 1).expand(e, -1, -1)
            cotangent = eye.repeat_interleave(n, dim=0).expand(e, -1, -1)
            _, pullback = vjp(
                lambda x, a_rep=a_rep: ensemble.predict(x, a_rep).next_obs_mean, s_rep
            )
            (rows,) = pullback(cotangent)  # E x (d * n) x d: row i of J_m(s_b) at [m, i*n + b]
            parts.append(rows.square().sum(dim=-1).view(e, d, n).transpose(1, 2))
    return _select(torch.cat(parts, dim=1), members)


def dataset_uncertainty(
    ensemble: DynamicsEnsemble,
    dataset: Dataset,
    kinds: list[str],
    batch_size: int,
    scale: Tensor | None = None,
    members: list[int] | None = None,
) -> dict[str, np.ndarray]:
    """u of every dataset transition (s, a), for each kind.

    Args:
        ensemble: the dynamics model (evaluated without gradients, batch by batch).
        dataset: N transitions; only observations and actions are read.
        kinds: names from `UNCERTAINTY_KINDS`.
        batch_size: transitions per forward pass (bounds memory).
        scale: obs_dim weights for `epistemic`; None means ones.
        members: member indices taking part (use the rollout's: e.g. the elites).

    Returns:
        kind -> N float64 values, in dataset order.
    """
    unknown = [k for k in kinds if k not in UNCERTAINTY_KINDS]
    if unknown or not kinds:
        raise OmbrlError(
            f"uncertainty kinds {unknown or kinds}: choose from {', '.join(UNCERTAINTY_KINDS)}"
        )
    if batch_size < 1:
        raise OmbrlError(f"batch_size: {batch_size} must be positive")
    device = ensemble.input_mean.device
    values: dict[str, list[Tensor]] = {kind: [] for kind in kinds}
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            obs = torch.as_tensor(dataset.observations[start : start + batch_size], device=device)
            act = torch.as_tensor(dataset.actions[start : start + batch_size], device=device)
            pred = ensemble.predict(obs, act)
            for kind in kinds:
                values[kind].append(uncertainty(pred, kind, scale, members).cpu())
    return {kind: torch.cat(parts).double().numpy() for kind, parts in values.items()}


def summarize(values: np.ndarray) -> dict[str, float]:
    """mean, std (population), max and the `PERCENTILES` (linear interpolation) of u values."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise OmbrlError("uncertainty statistics: no values (empty dataset?)")
    stats = {"mean": float(values.mean()), "std": float(values.std()), "max": float(values.max())}
    for q, value in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True):
        stats[f"p{q:g}"] = float(value)
    return stats


def dataset_statistics(
    ensemble: DynamicsEnsemble,
    dataset: Dataset,
    kinds: list[str],
    batch_size: int,
    scale: Tensor | None = None,
    members: list[int] | None = None,
) -> dict[str, dict[str, float]]:
    """Distribution of u over every dataset transition: the basis for choosing thresholds.

    Args: as `dataset_uncertainty`.

    Returns:
        kind -> {mean, std, max, p50, p90, p99, p99.9} (plain floats: JSON-able).

    Raises:
        OmbrlError: a non-finite uncertainty (an ensemble with NaN weights or data out of
            its range): thresholds chosen from NaN statistics would be meaningless.
    """
    values = dataset_uncertainty(ensemble, dataset, kinds, batch_size, scale, members)
    for kind, v in values.items():
        bad = ~np.isfinite(v)
        if bad.any():
            raise OmbrlError(
                f"{kind} uncertainty is non-finite for {int(bad.sum())} of {len(v)} transitions "
                f"(first: transition {int(np.flatnonzero(bad)[0])}); no statistics printed"
            )
    return {kind: summarize(v) for kind, v in values.items()}


def threshold(stats_or_values: Mapping[str, float] | np.ndarray, rule: str, beta: float) -> float:
    """The HALT threshold: transitions with u above it are out of distribution.

    Mind the direction of beta. `max` (original MOReL): `max(u_data) / beta`, so a larger beta
    lowers the threshold and truncates more. `meanstd` (J-MOReL): `mean + beta * std`, so a
    larger beta raises it and truncates less. `percentile`: the beta-th percentile of u_data
    (0..100), larger beta truncates less. `fraction`: `mean + beta * (max - mean)`, beta the
    fraction of the way from the dataset's mean u to its max (0: the mean, 1: the max; larger
    truncates less), so one coefficient means the same on every dataset and ensemble.

    Args:
        stats_or_values: a `summarize` / `dataset_statistics` entry, or the raw u values
            (a `percentile` rule on a summary needs beta among `PERCENTILES`).
        rule: one of `THRESHOLD_RULES`.
        beta: the rule's coefficient.

    Returns:
        The threshold, in u's units.
    """
    if isinstance(stats_or_values, Mapping):
        stats = stats_or_values
    else:
        values = np.asarray(stats_or_values, dtype=np.float64)
        stats = summarize(values)
    if rule == "max":
        if beta <= 0:
            raise OmbrlError(f"threshold max: beta {beta} must be positive (max(u) / beta)")
        return stats["max"] / beta
    if rule == "meanstd":
        return stats["mean"] + beta * stats["std"]
    if rule == "fraction":
        return stats["mean"] + beta * (stats["max"] - stats["mean"])
    if rule == "percentile":
        if not 0 <= beta <= 100:
            raise OmbrlError(f"threshold percentile: beta {beta} must be in 0..100")
        if not isinstance(stats_or_values, Mapping):
            return float(np.percentile(values, beta))
        key = f"p{beta:g}"
        if key not in stats:
            raise OmbrlError(
                f"threshold percentile: {key} is not in the statistics "
                f"(have {', '.join(k for k in stats if k.startswith('p'))})"
            )
        return float(stats[key])
    raise OmbrlError(f"threshold rule: {rule!r} is not one of {', '.join(THRESHOLD_RULES)}")
