"""Training a `DynamicsEnsemble` on an offline dataset: holdout, early stopping, elites.

All members step together (one batched forward/backward per batch, `train_step`), the data is
moved to the device once, and each epoch costs the training batches plus one holdout evaluation;
`track_training` adds one evaluation pass over the training split, nothing else does, and the
kept model is evaluated on the holdout once more at the end. `holdout_ratio: 0` trains on every
transition (mjrl's MOReL) and has no holdout metric at all: the last epoch is kept, nothing
stops early and every member is an elite (`ombrl.config.holdout_conflict`). Every
random choice (holdout split, bootstrap resamples, batch order) comes from one
`torch.Generator` seeded with `seed`, so the same seed gives the same weights and metrics.
Everything the epoch loop changes lives in one `_FitState`, which a `Checkpointer` saves every
N epochs; a killed job restarted with the same command resumes from it and ends with the same
bytes as an uninterrupted run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ombrl.checkpoint import (
    Checkpointer,
    TrainingState,
    load_optimizer_tensors,
    optimizer_tensors,
    prefixed,
    subset,
)
from ombrl.config import holdout_conflict
from ombrl.data.dataset import Dataset
from ombrl.errors import OmbrlError
from ombrl.io import require_finite
from ombrl.models.ensemble import DynamicsEnsemble

# A member's snapshot is replaced only when its holdout MSE improves by more than this fraction.
IMPROVEMENT_THRESHOLD = 0.01
# ... or, under `snapshot: nll`, when its holdout NLL falls by more than this (nats per target
# dimension; NLL can be negative, so no fraction of it works: at a fixed variance a 1% lower
# squared error lowers the NLL by about 0.01).
NLL_IMPROVEMENT = 0.01
# What each member keeps at the end (the ensemble config's `snapshot`): the epoch of its lowest
# holdout MSE, of its lowest holdout NLL (probabilistic only), or the last epoch's weights.
SNAPSHOTS = ("mse", "nll", "last")
# The order members visit the training rows each epoch (`batch_order`): one permutation for all,
# or each member its own (upstream dynamics-ensembles-rl shuffled each member's data itself).
BATCH_ORDERS = ("shared", "per_member")
# When patience runs out (`early_stopping`): no member's holdout score improved (per member,
# above), or the members' mean holdout MSE did not decrease at all (ensemble:
# offline-model-based-rl's train_to_convergence).
EARLY_STOPPING = ("member", "ensemble")
# Smallest normaliser scale: a constant input or target dimension must not divide by zero.
MIN_SCALE = 1e-6
# How inputs and targets are scaled (`normalization`): both by mean and standard deviation, both
# by mean and mean absolute deviation (upstream dynamics-ensembles-rl), or the inputs only by
# mean and standard deviation with the targets raw (upstream handful-of-trials' PETS,
# `TensorStandardScaler`: a standard deviation below `UPSTREAM_MIN_STD` counts as 1).
NORMALIZATIONS = ("std", "mad", "std_inputs")
UPSTREAM_MIN_STD = 1e-12
# Rows per holdout forward pass: bounds memory on large datasets.
EVAL_CHUNK = 8192


@dataclass
class FitConfig:
    """How to train an ensemble: the training keys of an ensemble config (schema
    `$defs.ensemble`), under their config names; the schema holds the defaults."""

    fit_epochs: int  # maximum passes over the training split
    batch_size: int  # transitions per member in one gradient step
    lr: float  # Adam learning rate
    weight_decay: float | list[float]  # L2 coefficient: one for all layers, or one per layer
    holdout_ratio: float  # fraction held out (snapshot, early stopping, elites); 0: none, in [0, 1)
    holdout_by: str  # "transition" (random transitions) or "trajectory" (whole episodes)
    patience: int  # stop after this many epochs in which no member improved; 0 = never stop
    scheduler_gamma: float | None  # ExponentialLR factor applied after each epoch; None = off
    bootstrap: bool  # True: each member trains on its own bootstrap resample; False: shared
    batch_order: str  # "shared" (one permutation per epoch) or "per_member" (one per member)
    snapshot: str  # what each member keeps: "mse", "nll" (lowest holdout value) or "last"
    num_elites: int  # how many members with the lowest holdout MSE become elites
    normalization: str  # one of NORMALIZATIONS
    grad_clip: float | None  # max gradient norm per member; None = no clipping
    # torch.compile the loss: its element-wise work fused into a few kernels, 10-25% less time
    # per step on CPU (benchmarks/ensemble.py), for ~10-20 s of compilation per process.
    compile: bool
    early_stopping: str = "member"  # "member" or "ensemble" (see EARLY_STOPPING)


@dataclass
class FitResult:
    """What fitting produced besides the trained weights (which are in the model).

    Attributes:
        history: one dict per epoch (see `fit_ensemble`), CSV-ready (flat, scalar values).
        elites: member indices, lowest holdout MSE first (no holdout: every member, in order).
        best_epoch: per member, the epoch of the snapshot it kept (0: none).
        holdout_mse: per member, the holdout MSE of that snapshot (normalised space); empty
            without a holdout.
        holdout: the kept model's holdout metrics, named as the history's columns
            (`holdout_mse`, `holdout_nll`, `holdout_z2`, `holdout_within_1sigma`, each with
            `_m{i}` and `_ensemble`; calibration for probabilistic models only); empty without
            a holdout.
        epochs_run: number of epochs trained (< cfg.fit_epochs when stopped early).
        holdout_indices: sorted indices of the held-out transitions in the dataset (empty
            without a holdout).
    """

    history: list[dict]
    elites: list[int]
    best_epoch: list[int]
    holdout_mse: list[float]
    holdout: dict[str, float]
    epochs_run: int
    holdout_indices: np.ndarray


def split_holdout(
    episode_ids: np.ndarray, ratio: float, by: str, generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split transitions into training and holdout indices.

    Args:
        episode_ids: N episode index of each transition.
        ratio: fraction of transitions to hold out, in [0, 1); 0: none, every row trains.
        by: "transition" (a random subset) or "trajectory" (whole episodes, drawn in random
            order until at least `ratio * N` transitions are held out; never splits one).
        generator: source of randomness.

    Returns:
        Sorted train indices and sorted holdout indices (int64), disjoint, covering 0..N-1.
    """
    n = len(episode_ids)
    if ratio == 0:
        return np.arange(n), np.empty(0, dtype=np.int64)
    target = max(1, round(ratio * n))
    if by == "transition":
        if target >= n:
            raise OmbrlError(f"holdout_ratio {ratio} leaves no training data ({n} transitions)")
        perm = torch.randperm(n, generator=generator).numpy()
        holdout = perm[:target]
    elif by == "trajectory":
        episodes, counts = np.unique(episode_ids, return_counts=True)
        if len(episodes) < 2:
            raise OmbrlError("holdout_by 'trajectory' needs at least 2 episodes in the dataset")
        order = torch.randperm(len(episodes), generator=generator).numpy()
        # Number of episodes needed to reach the target; always leave one for training.
        taken = int(np.searchsorted(np.cumsum(counts[order]), target)) + 1
        held = episodes[order[: min(taken, len(episodes) - 1)]]
        holdout = np.flatnonzero(np.isin(episode_ids, held))
    else:
        raise OmbrlError(f"holdout_by: {by!r} is not 'transition' or 'trajectory'")
    mask = np.zeros(n, dtype=bool)
    mask[holdout] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def fit_normalizer(x: Tensor, method: str) -> tuple[Tensor, Tensor]:
    """Per-column centre and scale of `x` (N x D), computed in float64.

    Args:
        x: N x D training data.
        method: "std" (standard deviation, clamped to >= 1e-6), "mad" (mean absolute
            deviation, upstream dynamics-ensembles-rl, clamped likewise) or "upstream_std"
            (standard deviation, 1 where it is below 1e-12: handful-of-trials'
            `TensorStandardScaler.fit`).

    Returns:
        mean D and scale D (float32).
    """
    x64 = x.double()
    mean = x64.mean(dim=0)
    if method == "mad":
        return mean.float(), (x64 - mean).abs().mean(dim=0).clamp_min(MIN_SCALE).float()
    if method not in ("std", "upstream_std"):
        raise OmbrlError(f"normalization: {method!r} is not 'std', 'mad' or 'upstream_std'")
    scale = x64.std(dim=0, correction=0)
    if method == "upstream_std":
        return mean.float(), torch.where(scale < UPSTREAM_MIN_STD, 1.0, scale).float()
    return mean.float(), scale.clamp_min(MIN_SCALE).float()


def fit_normalizers(
    inputs: Tensor, targets: Tensor, normalization: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Input mean and scale, target mean and scale of the training split (`NORMALIZATIONS`);
    `std_inputs` scales the inputs as upstream PETS and leaves the targets raw (0 and 1)."""
    if normalization == "std_inputs":
        out = targets.shape[1]
        return (*fit_normalizer(inputs, "upstream_std"), torch.zeros(out), torch.ones(out))
    return (*fit_normalizer(inputs, normalization), *fit_normalizer(targets, normalization))


def bootstrap_indices(num_models: int, num_train: int, generator: torch.Generator) -> Tensor:
    """Draw each member's bootstrap resample of the training split (with replacement).

    Returns:
        E x N int64 indices into the training split, one independent row per member.
    """
    return torch.randint(num_train, (num_models, num_train), generator=generator)


def epoch_order(
    base: Tensor | None,
    num_models: int,
    num_train: int,
    per_member: bool,
    generator: torch.Generator,
) -> Tensor:
    """The order in which members visit training rows this epoch.

    Every member sees all of its rows once per epoch; `per_member` only decides whether the
    members share the order (and so, without bootstrap, every minibatch).

    Args:
        base: E x N bootstrap indices, or None: every member trains on rows 0..N-1.
        num_models: E.
        num_train: N.
        per_member: each member its own permutation; False: one permutation for all.
        generator: source of randomness.

    Returns:
        E x N int64 indices, or 1 x N (shared order without bootstrap: the same for all E).
    """
    if per_member:
        order = torch.argsort(torch.rand(num_models, num_train, generator=generator), dim=1)
        return order if base is None else base.gather(1, order)
    perm = torch.randperm(num_train, generator=generator)
    return perm.unsqueeze(0) if base is None else base[:, perm]


def _check_config(cfg: FitConfig, model: DynamicsEnsemble, dataset: Dataset) -> None:
    """Reject values that cannot work, naming the key, before any work is done."""
    checks = [
        (cfg.fit_epochs >= 1, "fit_epochs", "must be >= 1"),
        (cfg.batch_size >= 1, "batch_size", "must be >= 1"),
        (cfg.lr > 0, "lr", "must be > 0"),
        (0 <= cfg.holdout_ratio < 1, "holdout_ratio", "must be in [0, 1)"),
        (cfg.holdout_by in ("transition", "trajectory"), "holdout_by", "is not a choice"),
        (cfg.patience >= 0, "patience", "must be >= 0"),
        (
            cfg.scheduler_gamma is None or 0 < cfg.scheduler_gamma <= 1,
            "scheduler_gamma",
            "must be in (0, 1] or null",
        ),
        (
            1 <= cfg.num_elites <= model.num_models,
            "num_elites",
            f"must be between 1 and num_models ({model.num_models})",
        ),
        (
            cfg.normalization in NORMALIZATIONS,
            "normalization",
            f"is not one of {list(NORMALIZATIONS)}",
        ),
        (cfg.batch_order in BATCH_ORDERS, "batch_order", f"is not one of {list(BATCH_ORDERS)}"),
        (cfg.snapshot in SNAPSHOTS, "snapshot", f"is not one of {list(SNAPSHOTS)}"),
        (
            cfg.early_stopping in EARLY_STOPPING,
            "early_stopping",
            f"is not one of {list(EARLY_STOPPING)}",
        ),
        (
            cfg.snapshot != "nll" or model.probabilistic,
            "snapshot",
            "needs a probabilistic ensemble (a deterministic one has no NLL)",
        ),
        (cfg.grad_clip is None or cfg.grad_clip > 0, "grad_clip", "must be > 0 or null"),
    ]
    for ok, key, why in checks:
        if not ok:
            raise OmbrlError(f"{key}: {getattr(cfg, key)!r} {why}")
    conflict = holdout_conflict(
        cfg.holdout_ratio, cfg.snapshot, cfg.patience, cfg.num_elites, model.num_models
    )
    if conflict is not None:
        raise OmbrlError(conflict)
    model.decay_coefficients(cfg.weight_decay)
    if (dataset.obs_dim, dataset.act_dim) != (model.obs_dim, model.act_dim):
        raise OmbrlError(
            f"dataset {dataset.env_id}: obs/act sizes {dataset.obs_dim}/{dataset.act_dim} do not "
            f"match the model's {model.obs_dim}/{model.act_dim}"
        )


def clip_grad_norm_per_member(params: list[torch.nn.Parameter], max_norm: float) -> None:
    """Scale each member's gradient to norm <= max_norm (a global norm would couple members).

    Args:
        params: parameters whose first dimension is the member (E x ...), gradients set.
        max_norm: largest allowed L2 norm of one member's gradient over all `params`.
    """
    sq = sum(p.grad.square().flatten(1).sum(dim=1) for p in params)
    scale = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(scale.view(-1, *([1] * (p.dim() - 1))))


@torch.no_grad()
def _evaluate(
    model: DynamicsEnsemble, x: Tensor, y: Tensor, calibration: bool
) -> dict[str, Tensor]:
    """Metrics of every member and of the ensemble on (x, y), in normalised space.

    One forward pass in chunks of `EVAL_CHUNK` rows. Every value is a mean over rows and target
    dimensions; a name without `_ensemble` holds one value per member (E), one with it is a
    scalar for the members' mixture (mean of their means; variance `mean(var) + var(means)`).

    Args:
        model: the ensemble, in eval mode.
        x: N x in normalised inputs (every member sees the same rows).
        y: N x out normalised targets.
        calibration: also compute the calibration of the predicted variance (probabilistic
            models only).

    Returns:
        `mse`, `mse_ensemble`; for probabilistic models `nll`, `nll_ensemble`
        (`mean((y - mu)^2 / var + log var)`, as in the loss) and, with `calibration`, `z2`,
        `z2_ensemble` (`mean((y - mu)^2 / var)`: 1 when the variance is calibrated) and
        `within_1sigma`, `within_1sigma_ensemble` (fraction of `|y - mu| <= sigma`: 0.683
        for a calibrated Gaussian).
    """
    e = model.num_models
    sums: dict[str, Tensor] = {}

    def add(name: str, value: Tensor) -> None:
        total = value.sum(dim=(-2, -1))
        sums[name] = sums[name] + total if name in sums else total

    for start in range(0, x.shape[0], EVAL_CHUNK):
        xc, yc = x[start : start + EVAL_CHUNK], y[start : start + EVAL_CHUNK]
        mean, logvar = model(xc.expand(e, *xc.shape))
        sq = (mean - yc).square()
        sq_ens = (mean.mean(dim=0) - yc).square()
        add("mse", sq)
        add("mse_ensemble", sq_ens)
        if logvar is None:
            continue
        var = logvar.exp()
        var_ens = var.mean(dim=0) + mean.var(dim=0, correction=0)
        z2, z2_ens = sq / var, sq_ens / var_ens
        add("nll", z2 + logvar)
        add("nll_ensemble", z2_ens + var_ens.log())
        if calibration:
            add("z2", z2)
            add("z2_ensemble", z2_ens)
            add("within_1sigma", (z2 <= 1).float())
            add("within_1sigma_ensemble", (z2_ens <= 1).float())
    count = x.shape[0] * y.shape[1]
    return {name: total / count for name, total in sums.items()}


def _flatten(splits: dict[str, dict[str, Tensor | None]]) -> dict[str, float]:
    """Flatten per-member tensors into `{split}_{name}` (mean over members) and
    `{split}_{name}_m{i}` columns; scalars (ensemble metrics) into one column each."""
    metrics: dict[str, float] = {}
    for split, values in splits.items():
        for name, value in values.items():
            if value is None:
                continue
            values_list = value.tolist()
            if isinstance(values_list, float):
                metrics[f"{split}_{name}"] = values_list
                continue
            metrics[f"{split}_{name}"] = float(np.mean(values_list))
            metrics.update({f"{split}_{name}_m{i}": v for i, v in enumerate(values_list)})
    return metrics


def _epoch_metrics(
    epoch: int, lr: float, seconds: float, splits: dict[str, dict[str, Tensor | None]]
) -> dict:
    """One history row: the epoch, learning rate and seconds, then `_flatten(splits)`."""
    return {"epoch": epoch, "lr": lr, "seconds": seconds, **_flatten(splits)}


def train_step(
    model: DynamicsEnsemble,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    decay: list[float],
    grad_clip: float | None,
    loss_fn: Callable[..., tuple[Tensor, Tensor, Tensor | None]] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """One gradient step of every member on its own minibatch, as `fit_ensemble` takes it.

    The loss of `DynamicsEnsemble.loss` (MSE or Gaussian NLL, the soft log-variance bound
    term, per-layer weight decay), summed over members and differentiated once (members share
    no parameter, so each gets exactly its own gradient), optional per-member gradient
    clipping, one optimiser step. Factored out so that `benchmarks/ensemble.py` times this
    very step.

    Args:
        model: the ensemble, in train mode.
        optimizer: over `model.parameters()`.
        x: E x B x in normalised inputs.
        y: E x B x out normalised targets.
        decay: one weight-decay coefficient per layer (`model.decay_coefficients`).
        grad_clip: max gradient norm per member, or None.
        loss_fn: `model.loss` (the default) or its `torch.compile`d form.

    Returns:
        The minibatch MSE E and NLL E (None for deterministic models), detached.
    """
    loss, mse, nll = (loss_fn or model.loss)(x, y, decay)
    optimizer.zero_grad(set_to_none=True)
    loss.sum().backward()
    if grad_clip is not None:
        clip_grad_norm_per_member(list(model.parameters()), grad_clip)
    optimizer.step()
    return mse.detach(), None if nll is None else nll.detach()


def _full_dataset(
    train: dict[str, Tensor], n_train: int, holdout: dict[str, Tensor], n_hold: int
) -> dict[str, Tensor]:
    """Whole-dataset metrics from the training split's and the holdout's `_evaluate` metrics.

    Each is a mean over rows, so the row-weighted mean is exact and the holdout, already
    evaluated this epoch, is not run again.
    """
    n = n_train + n_hold
    return {name: (n_train * value + n_hold * holdout[name]) / n for name, value in train.items()}


class _FitState:
    """Everything the epoch loop changes, in one place, so a checkpoint saves it whole.

    The model's weights, Adam's moments and step counts, the learning rate and scheduler, the
    generator that orders batches, each member's best snapshot with its early-stopping
    counters, and the metric rows so far. The holdout split, normalisers and bootstrap
    resamples are not here: they are recomputed from the seed before training starts.

    `snapshot` says what "best" means: the lowest holdout MSE (improved by > 1%), the lowest
    holdout NLL (improved by > `NLL_IMPROVEMENT`), or, for "last", the holdout MSE for early
    stopping only, with no snapshot kept (the final weights stay). `early_stopping: ensemble`
    counts patience on the members' mean holdout MSE instead, any decrease resetting it.
    """

    def __init__(
        self,
        model: DynamicsEnsemble,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        generator: torch.Generator,
        snapshot: str,
        early_stopping: str = "member",
    ) -> None:
        self.model, self.optimizer = model, optimizer
        self.scheduler, self.generator = scheduler, generator
        self.snapshot, self.early_stopping = snapshot, early_stopping
        self.params = list(model.parameters())
        e, device = model.num_models, self.params[0].device
        self.epoch = 0  # epochs completed
        keeps = snapshot != "last"
        self.best_params = [p.detach().clone() for p in self.params] if keeps else []
        self.best_score = torch.full((e,), float("inf"), device=device)
        self.best_epoch = torch.zeros(e, dtype=torch.long, device=device)
        self.stale = torch.zeros(e, dtype=torch.long, device=device)
        self.best_mean = torch.tensor(float("inf"), device=device)  # early_stopping: ensemble
        self.history: list[dict] = []

    def end_epoch(self, holdout: dict[str, Tensor] | None, metrics: dict) -> None:
        """Snapshot each member whose holdout score improved enough; log the row.

        Without a holdout (None) only the row is logged: `snapshot` is then `last` and
        patience 0 (`holdout_conflict`), so there is nothing to compare.
        """
        self.epoch += 1
        self.history.append(metrics)
        if holdout is None:
            return
        if self.snapshot == "nll":
            score = holdout["nll"]
            improved = score < self.best_score - NLL_IMPROVEMENT
        else:
            score = holdout["mse"]
            improved = score < (1 - IMPROVEMENT_THRESHOLD) * self.best_score
        self.best_score = torch.where(improved, score, self.best_score)
        self.best_epoch = torch.where(improved, self.epoch, self.best_epoch)
        if self.early_stopping == "ensemble":
            mean = holdout["mse"].mean()
            decreased = mean < self.best_mean
            self.best_mean = torch.minimum(mean, self.best_mean)
            self.stale = torch.where(decreased, 0, self.stale + 1)
        else:
            self.stale = torch.where(improved, 0, self.stale + 1)
        with torch.no_grad():
            for snapshot, p in zip(self.best_params, self.params, strict=False):  # last: none
                snapshot[improved] = p[improved]

    def keep(self) -> list[int]:
        """Put the kept snapshot into the model; return each member's epoch of it."""
        if self.snapshot == "last":
            return [self.epoch] * self.model.num_models
        with torch.no_grad():
            for snapshot, p in zip(self.best_params, self.params, strict=True):
                p.copy_(snapshot)
        return self.best_epoch.tolist()

    def stopped(self, patience: int) -> bool:
        """No member improved (`ensemble`: the mean did not decrease) for `patience` epochs
        (never when patience is 0)."""
        return patience > 0 and bool((self.stale >= patience).all())

    def tensors(self) -> dict[str, Tensor]:
        """The tensor part of a checkpoint (weights, snapshots, counters, RNG, Adam)."""
        return {
            **prefixed(self.model.state_dict(), "model"),
            **prefixed({str(i): t for i, t in enumerate(self.best_params)}, "best"),
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "stale": self.stale,
            "best_mean": self.best_mean,
            "generator": self.generator.get_state(),
            **optimizer_tensors("optim", self.optimizer),
        }

    def meta(self) -> dict:
        """The JSON part of a checkpoint (epoch, metric rows, learning rate, scheduler)."""
        return {
            "epoch": self.epoch,
            "history": self.history,
            "lr": [group["lr"] for group in self.optimizer.param_groups],
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
        }

    def restore(self, saved: TrainingState) -> None:
        """Load what `tensors` and `meta` produced."""
        tensors, meta = saved.tensors, saved.meta
        self.model.load_state_dict(subset(tensors, "model"))
        device = self.best_score.device
        with torch.no_grad():
            for i, snapshot in enumerate(self.best_params):
                snapshot.copy_(tensors[f"best.{i}"])
        self.best_score = tensors["best_score"].to(device)
        self.best_epoch = tensors["best_epoch"].to(device)
        self.stale = tensors["stale"].to(device)
        self.best_mean = tensors["best_mean"].to(device)
        self.generator.set_state(tensors["generator"])
        load_optimizer_tensors("optim", self.optimizer, tensors)
        for group, lr in zip(self.optimizer.param_groups, meta["lr"], strict=True):
            group["lr"] = lr
        if self.scheduler is not None:
            self.scheduler.load_state_dict(meta["scheduler"])
        self.epoch = int(meta["epoch"])
        self.history = list(meta["history"])


def fit_ensemble(
    model: DynamicsEnsemble,
    dataset: Dataset,
    cfg: FitConfig,
    seed: int,
    device: torch.device,
    on_epoch: Callable[[dict], None] | None = None,
    progress: bool = True,
    checkpoint: Checkpointer | None = None,
    track_training: bool = False,
) -> FitResult:
    """Train every member of `model` at once; each keeps the snapshot `cfg.snapshot` names.

    The model's normalisers are fitted on the training split (`cfg.normalization`), inputs are
    `model.model_inputs(s, a)`, targets are the normalised `s' - s` (plus the reward when
    `model.predict_reward`; raw under `std_inputs`). After each epoch the holdout MSE
    and NLL of each member are measured; under `snapshot: mse` a member's weights are
    snapshotted when its MSE improves by more than 1% relative, under `nll` when its NLL falls
    by more than `NLL_IMPROVEMENT`; `last` keeps no snapshot. Training stops once no member
    has improved (MSE for `last`) for `cfg.patience` epochs. At the end each member is
    restored to its snapshot (`last`: the final weights, untouched), the kept model is
    evaluated on the holdout once more, calibration included (`FitResult.holdout`), and
    `model.elites` is set from that evaluation's MSE. With `holdout_ratio: 0` every
    transition trains, no holdout column is logged, the last epoch is kept and every member
    is an elite.

    Args:
        model: the ensemble to train (moved to `device`, trained in place).
        dataset: N transitions.
        cfg: training settings.
        seed: seeds the holdout split, bootstrap resamples and batch order.
        device: where to train.
        on_epoch: called with each epoch's metrics (e.g. to log them); after a resume, first
            with every row saved in the checkpoint, so a log always holds the whole history.
        progress: show a tqdm bar.
        checkpoint: resume from its newest state if any, and save one every
            `checkpoint.every` epochs (step = epochs completed); None: neither.
        track_training: also log the costly metrics each epoch (a command-line flag, not a
            config key): full-dataset MSE/NLL (one more pass over the training split) and
            holdout calibration of the predicted variance.

    Returns:
        A `FitResult`. Each history row has `epoch`, `lr`, `seconds`, and in normalised space
        (a plain name is the mean over members, `_m{i}` one member, `_ensemble` the members'
        mixture, see `_evaluate`):
        - always: `train_mse` (+ `_m{i}`, averaged over the epoch's minibatches as they were
          trained), `holdout_mse` (+ `_m{i}`, `_ensemble`); for probabilistic models also
          `train_nll` (+ `_m{i}`) and `holdout_nll` (+ `_m{i}`, `_ensemble`), where
          NLL = `mean((mu - y)^2 exp(-lv) + lv)`. These cost no pass beyond training and the
          holdout evaluation.
        - with `track_training`: `full_mse` (+ `_m{i}`, `_ensemble`) and, probabilistic,
          `full_nll` (+ `_m{i}`, `_ensemble`) over the whole dataset (training split and
          holdout, eval mode, end of epoch: one extra pass over the training split), and the
          holdout calibration `holdout_z2`, `holdout_within_1sigma` (+ `_m{i}`, `_ensemble`).
        - `holdout_ratio: 0` writes no `holdout_` column (there is no holdout to measure).
    """
    _check_config(cfg, model, dataset)
    generator = torch.Generator().manual_seed(seed)
    model.to(device)
    e = model.num_models

    obs = torch.as_tensor(dataset.observations, dtype=torch.float32)
    inputs = model.model_inputs(obs, torch.as_tensor(dataset.actions, dtype=torch.float32))
    targets = torch.as_tensor(dataset.next_observations, dtype=torch.float32) - obs
    if model.predict_reward:
        rewards = torch.as_tensor(dataset.rewards, dtype=torch.float32)
        targets = torch.cat([targets, rewards.unsqueeze(1)], dim=1)

    train_np, holdout_np = split_holdout(
        dataset.episode_ids, cfg.holdout_ratio, cfg.holdout_by, generator
    )
    train_idx, holdout_idx = torch.from_numpy(train_np), torch.from_numpy(holdout_np)
    in_mean, in_std, out_mean, out_std = fit_normalizers(
        inputs[train_idx], targets[train_idx], cfg.normalization
    )
    model.set_normalizers(in_mean, in_std, out_mean, out_std)
    x_all = ((inputs - in_mean) / in_std).to(device)
    y_all = ((targets - out_mean) / out_std).to(device)
    x_train, y_train = x_all[train_idx.to(device)], y_all[train_idx.to(device)]
    x_hold, y_hold = x_all[holdout_idx.to(device)], y_all[holdout_idx.to(device)]
    del x_all, y_all
    n_train, has_holdout = len(train_idx), len(holdout_idx) > 0

    base = bootstrap_indices(e, n_train, generator) if cfg.bootstrap else None
    per_member = cfg.batch_order == "per_member"
    decay = model.decay_coefficients(cfg.weight_decay)
    loss_fn = torch.compile(model.loss) if cfg.compile else model.loss
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.lr, fused=device.type in ("cpu", "cuda"))
    scheduler = (
        None
        if cfg.scheduler_gamma is None
        else torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.scheduler_gamma)
    )

    state = _FitState(model, optimizer, scheduler, generator, cfg.snapshot, cfg.early_stopping)
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        state.restore(saved)
        if on_epoch is not None:
            for metrics in state.history:
                on_epoch(metrics)
    bar = tqdm(
        range(state.epoch + 1, cfg.fit_epochs + 1),
        desc="fit ensemble",
        disable=not progress,
        initial=state.epoch,
        total=cfg.fit_epochs,
    )
    for epoch in bar:
        start_time = time.perf_counter()
        model.train()
        order = epoch_order(base, e, n_train, per_member, generator).to(device)
        sum_mse = torch.zeros(e, device=device)
        sum_nll = torch.zeros(e, device=device) if model.probabilistic else None
        for start in range(0, n_train, cfg.batch_size):
            batch = order[:, start : start + cfg.batch_size]
            if batch.shape[0] == 1:
                batch = batch.expand(e, -1)
            mse, nll = train_step(
                model, optimizer, x_train[batch], y_train[batch], decay, cfg.grad_clip, loss_fn
            )
            sum_mse += mse * batch.shape[1]
            if sum_nll is not None:
                sum_nll += nll * batch.shape[1]
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()

        model.eval()
        if not torch.isfinite(sum_mse).all():
            raise OmbrlError(
                f"ensemble training turned non-finite at epoch {epoch} (training loss); nothing "
                "written; lower lr or check the data"
            )
        require_finite(dict(model.named_parameters()), f"ensemble training at epoch {epoch}")
        splits = {
            "train": {
                "mse": sum_mse / n_train,
                "nll": None if sum_nll is None else sum_nll / n_train,
            },
        }
        if has_holdout:
            splits["holdout"] = _evaluate(model, x_hold, y_hold, calibration=track_training)
        if track_training:
            train_eval = _evaluate(model, x_train, y_train, calibration=False)
            splits["full"] = (
                _full_dataset(train_eval, n_train, splits["holdout"], len(x_hold))
                if has_holdout
                else train_eval
            )
        metrics = _epoch_metrics(epoch, lr, time.perf_counter() - start_time, splits)
        state.end_epoch(splits.get("holdout"), metrics)
        bar.set_postfix(
            {s: f"{metrics[f'{s}_mse']:.4g}" for s in ("train", "holdout") if s in splits}
        )
        if on_epoch is not None:
            on_epoch(metrics)
        if state.stopped(cfg.patience):
            break
        if checkpoint is not None and checkpoint.due(epoch) and epoch < cfg.fit_epochs:
            checkpoint.save(epoch, state.tensors(), state.meta())
    bar.close()

    best_epoch = state.keep()
    model.eval()
    kept_mse, holdout = [], {}
    elites = list(range(e))  # no holdout: num_elites == num_models (checked)
    if has_holdout:
        kept = _evaluate(model, x_hold, y_hold, calibration=True)
        kept_mse, holdout = kept["mse"].tolist(), _flatten({"holdout": kept})
        elites = sorted(range(e), key=lambda m: kept_mse[m])[: cfg.num_elites]
    model.elites = elites
    return FitResult(
        history=state.history,
        elites=elites,
        best_epoch=best_epoch,
        holdout_mse=kept_mse,
        holdout=holdout,
        epochs_run=len(state.history),
        holdout_indices=holdout_np,
    )
