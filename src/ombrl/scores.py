"""The scores stage: every evaluation of every policy in one table, and the summary tables.

Policy jobs write `progress.csv` with one row per evaluation, already normalized against the
dataset's reference scores; this stage only gathers, orders and summarises them, so the
table is traceable row by row to the run that produced it. A run's final score is the mean of
its last K evaluations; `final_scores` summarises them per dataset and mode, `aggregates` per
mode across datasets (IQM, optimality gap, probability of improvement over a baseline), with
the robust statistics of `ombrl.stats`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ombrl.errors import OmbrlError
from ombrl.methods import method_spec
from ombrl.stats import (
    final_score,
    iqm,
    optimality_gap,
    probability_of_improvement,
    stratified_bootstrap,
)
from ombrl.tracking import atomic_file, check_output_dir

KEY_COLUMNS = ["dataset", "mode", "method", "seed", "step", "return", "normalized_score"]


def check_output_files(paths: dict[str, Path]) -> None:
    """Before reading anything: each table (and its .md) can be written where asked.

    Args:
        paths: flag -> output path.

    Raises:
        OmbrlError: a path that is a folder, or a folder that cannot be made or written.
    """
    for flag, path in paths.items():
        for target in (path, path.with_suffix(".md")):
            if target.is_dir():
                raise OmbrlError(f"{flag} {path}: {target} is a folder, not a file")
        check_output_dir(path.parent, flag)


def write_tables(outputs: list[tuple[str, pd.DataFrame, str | None]]) -> None:
    """Write each (path, table, markdown or None) as CSV (+ .md beside it), every file
    through a temporary one renamed into place: a failure never leaves half a table."""
    for path, frame, markdown in outputs:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(Path(path), newline="") as f:
            frame.to_csv(f, index=False)
        if markdown is not None:
            with atomic_file(Path(path).with_suffix(".md")) as f:
                f.write(markdown)


def gather(progress_files: list[Path]) -> pd.DataFrame:
    """Concatenate progress files into one table whose first columns are `KEY_COLUMNS`."""
    if not progress_files:
        raise OmbrlError("scores: no progress files given")
    frames = []
    for path in progress_files:
        try:
            frame = pd.read_csv(path)
        except (FileNotFoundError, pd.errors.EmptyDataError) as e:
            raise OmbrlError(f"{path}: cannot read progress file ({e})") from None
        missing = [c for c in KEY_COLUMNS if c not in frame.columns]
        if missing:
            raise OmbrlError(f"{path}: missing columns {', '.join(missing)}")
        for column in ("return", "normalized_score"):
            values = pd.to_numeric(frame.get(column, pd.Series(dtype=float)), errors="coerce")
            bad = ~np.isfinite(values.to_numpy(dtype=float))
            if bad.any():
                raise OmbrlError(
                    f"{path}: column {column!r} is not a finite number at row "
                    f"{int(np.flatnonzero(bad)[0]) + 1}; a run with non-finite results is "
                    "never scored"
                )
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    rest = [c for c in table.columns if c not in KEY_COLUMNS]
    table = table[KEY_COLUMNS + rest]
    return table.sort_values(["dataset", "mode", "seed", "step"], kind="stable").reset_index(
        drop=True
    )


#: The runs table's columns: a run's identity, then where its files, MLflow run and code are.
RUN_COLUMNS = ["dataset", "mode", "method", "seed", "output", "mlflow_run_id", "code_version"]


def runs_table(progress_files: list[Path]) -> pd.DataFrame:
    """One row per policy run: where its outputs, MLflow run and code version are.

    Read from the `policy.json` beside each progress file (the job writes its identity, its
    code version and its MLflow run id there), so no MLflow store is needed. Kept apart from
    the scores table: run ids differ between two runs of the same study, the scores do not.

    Returns:
        `RUN_COLUMNS`, sorted like `gather`'s table; `mlflow_run_id` empty when tracking was
        off, `output` the folder as given.
    """
    rows = []
    for path in progress_files:
        meta_path = Path(path).parent / "policy.json"
        try:
            meta = json.loads(meta_path.read_text())["meta"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError) as e:
            raise OmbrlError(f"{meta_path}: cannot read the run's policy.json ({e})") from None
        missing = [c for c in ("dataset", "mode", "seed") if c not in meta]
        if missing:
            raise OmbrlError(f"{meta_path}: meta has no {', '.join(missing)}")
        rows.append(
            {
                "dataset": meta["dataset"],
                "mode": meta["mode"],
                "method": meta.get("method", meta["mode"]),
                "seed": meta["seed"],
                "output": Path(path).parent.as_posix(),
                "mlflow_run_id": meta.get("mlflow_run_id") or "",
                "code_version": meta.get("code_version") or "",
            }
        )
    table = pd.DataFrame(rows, columns=RUN_COLUMNS)
    return table.sort_values(["dataset", "mode", "seed"], kind="stable").reset_index(drop=True)


CONFIDENCE = 0.95
RESAMPLES = 2000


def _mean(batch: np.ndarray) -> np.ndarray:
    """Mean over runs and tasks of a `... x runs x tasks` batch (a bootstrap statistic)."""
    return batch.mean(axis=(-2, -1))


def bootstrap_interval(
    values: np.ndarray, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over seeds (fixed seed: same table every run)."""
    return stratified_bootstrap(
        _mean,
        np.asarray(values, dtype=float),
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )


def _group_keys(table: pd.DataFrame) -> list[str]:
    """(dataset, mode), and the mode's `method` where the table has one."""
    return ["dataset", "mode"] + (["method"] if "method" in table.columns else [])


def run_scores(table: pd.DataFrame, last_k: int = 1) -> pd.DataFrame:
    """One row per run (dataset, mode, seed): its final score, the mean of its last K evaluations.

    Args:
        table: every evaluation, as `gather` returns it.
        last_k: K, evaluations averaged per run (1: the last evaluation).
    Returns:
        dataset, mode[, method], seed, step (of the last evaluation), return, normalized_score,
        and rise: the mean normalized score of the last K evaluations minus that of the K
        before them (NaN for a run with fewer than 2K evaluations). A positive rise says the
        curve was still going up where the run stopped, by that many points; one run's rise is
        as noisy as its evaluations, so `final_scores` counts the seeds that agree.
    """
    if isinstance(last_k, bool) or not isinstance(last_k, int | np.integer) or last_k < 1:
        raise OmbrlError(f"last_k: {last_k!r}, expected a whole number of evaluations >= 1")
    keys = _group_keys(table) + ["seed"]
    rows = []
    ordered = table.sort_values(keys + ["step"], kind="stable")
    for key, run in ordered.groupby(keys, sort=True):
        if len(run) < last_k:
            name = " ".join(f"{k} {v}" for k, v in zip(keys, key, strict=True))
            raise OmbrlError(f"last_k: {last_k} evaluations asked for, but {name} has {len(run)}")
        rows.append(
            {
                **dict(zip(keys, key, strict=True)),
                "step": int(run["step"].iloc[-1]),
                "return": final_score(run["return"].to_numpy(), last_k),
                "normalized_score": final_score(run["normalized_score"].to_numpy(), last_k),
                "rise": _rise(run["normalized_score"].to_numpy(), last_k),
            }
        )
    return pd.DataFrame(rows, columns=keys + ["step", "return", "normalized_score", "rise"])


def _rise(progress: np.ndarray, last_k: int) -> float:
    """Mean of the last `last_k` evaluations minus the mean of the `last_k` before them."""
    if len(progress) < 2 * last_k:
        return float("nan")
    return float(progress[-last_k:].mean() - progress[-2 * last_k : -last_k].mean())


def _joined(values: np.ndarray) -> str:
    """Per-seed values as one CSV cell, `;`-separated, each printed so it reads back exactly."""
    return ";".join(repr(float(v)) for v in values)


def final_scores(table: pd.DataFrame, last_k: int = 1) -> pd.DataFrame:
    """Each (dataset, mode): the final score of every seed, mean, std, IQM and 95% intervals.

    A seed's final score is the mean of its last `last_k` evaluations. The intervals are
    percentile intervals of the stratified bootstrap over seeds (one dataset: one stratum, so
    the ordinary bootstrap; 2000 resamples, seed 0). With K = 1 the columns of earlier versions
    (up to normalized_ci_high) hold the same numbers as before.

    Returns:
        dataset, mode[, method], seeds, step (largest last step), last_k, return_mean,
        normalized_mean, normalized_std (ddof 0), normalized_ci_low/high (of the mean),
        normalized_iqm, normalized_iqm_ci_low/high, seed_ids and seed_scores (`;`-separated,
        the same order), rise_mean (the seeds' mean `run_scores` rise: how far the curves
        still went up over their last K evaluations) and rising_seeds (how many seeds rose;
        NaN where the runs are too short to tell).
    """
    runs = run_scores(table, last_k)
    keys = _group_keys(table)
    rows = []
    for key, group in runs.groupby(keys, sort=True):
        scores, rises = group["normalized_score"].to_numpy(), group["rise"].to_numpy()
        known = not np.isnan(rises).any()
        low, high = stratified_bootstrap(_mean, scores, confidence=CONFIDENCE, resamples=RESAMPLES)
        iqm_low, iqm_high = stratified_bootstrap(
            iqm, scores, confidence=CONFIDENCE, resamples=RESAMPLES
        )
        rows.append(
            {
                **dict(zip(keys, key, strict=True)),
                "seeds": len(scores),
                "step": int(group["step"].max()),
                "last_k": last_k,
                "return_mean": float(group["return"].mean()),
                "normalized_mean": float(scores.mean()),
                "normalized_std": float(scores.std(ddof=0)),
                "normalized_ci_low": low,
                "normalized_ci_high": high,
                "normalized_iqm": iqm(scores),
                "normalized_iqm_ci_low": iqm_low,
                "normalized_iqm_ci_high": iqm_high,
                "seed_ids": ";".join(str(s) for s in group["seed"]),
                "seed_scores": _joined(scores),
                "rise_mean": float(rises.mean()) if known else np.nan,
                "rising_seeds": int((rises > 0).sum()) if known else np.nan,
            }
        )
    return pd.DataFrame(rows)


def seed_score_matrix(final: pd.DataFrame, mode: str) -> tuple[np.ndarray, list[str]]:
    """One mode's per-seed final scores from a `final_scores` table, as `seeds x datasets`.

    Returns the matrix (NaN where a dataset has fewer seeds than the others) and the datasets
    (columns), sorted.
    """
    rows = final[final["mode"] == mode].sort_values("dataset")
    columns = [np.array([float(v) for v in str(s).split(";")]) for s in rows["seed_scores"]]
    matrix = np.full((max((len(c) for c in columns), default=0), len(columns)), np.nan)
    for j, column in enumerate(columns):
        matrix[: len(column), j] = column
    return matrix, list(rows["dataset"])


def aggregates(
    final: pd.DataFrame,
    baseline: str = "bc",
    baseline_required: bool = False,
    threshold: float = 100.0,
    all_objectives: bool = False,
) -> pd.DataFrame:
    """Each mode across datasets: IQM, optimality gap and P(improvement over `baseline`).

    Modes whose method optimises something other than the task's return (survival, offline
    exploration: `MethodSpec.task_objective`) are left out unless `all_objectives`: their
    scores do not measure what the comparison is about.

    Every statistic pools the final scores of a mode's `seeds x datasets` matrix; its 95%
    interval is the stratified bootstrap with datasets as strata (2000 resamples, seed 0). The
    probability of improvement is over the datasets the mode shares with the baseline.

    Args:
        final: the `final_scores` table (its seed_scores are the runs' final scores).
        baseline: the mode the others are compared with.
        baseline_required: a baseline missing from the table is an error (a name the user gave)
            rather than a note in every row (the default name, in a study without it).
        threshold: the optimality gap's target score.
    Returns:
        mode[, method], datasets, seeds (per dataset), iqm, iqm_ci_low/high, optimality_gap,
        optimality_gap_ci_low/high, optimality_threshold, baseline, poi, poi_ci_low/high, note.
    """
    if not all_objectives and "method" in final.columns:
        other = [not method_spec(m).task_objective for m in final["method"]]
        final = final[~np.array(other, dtype=bool)]
    modes = sorted(final["mode"].unique())
    notes: dict[str, list[str]] = {mode: [] for mode in modes}
    if baseline not in modes:
        if baseline_required:
            raise OmbrlError(
                f"baseline {baseline!r}: no such mode in the scores (modes: {', '.join(modes)})"
            )
        for mode in modes:
            notes[mode].append(f"no probability of improvement: baseline {baseline} not run")
    matrices = {mode: seed_score_matrix(final, mode) for mode in modes}
    rows = []
    for mode in modes:
        matrix, datasets = matrices[mode]
        row = {"mode": mode}
        if "method" in final.columns:
            row["method"] = final.loc[final["mode"] == mode, "method"].iloc[0]
        row |= {"datasets": len(datasets), "seeds": matrix.shape[0]}
        complete = not np.isnan(matrix).any()
        if not complete:
            notes[mode].append("seeds differ across datasets: no aggregates")
        iqm_ci = stratified_bootstrap(iqm, matrix) if complete else (np.nan, np.nan)
        gap = lambda batch: optimality_gap(batch, threshold)  # noqa: E731
        gap_ci = stratified_bootstrap(gap, matrix) if complete else (np.nan, np.nan)
        row |= {
            "iqm": iqm(matrix) if complete else np.nan,
            "iqm_ci_low": iqm_ci[0],
            "iqm_ci_high": iqm_ci[1],
            "optimality_gap": optimality_gap(matrix, threshold) if complete else np.nan,
            "optimality_gap_ci_low": gap_ci[0],
            "optimality_gap_ci_high": gap_ci[1],
            "optimality_threshold": threshold,
            "baseline": baseline,
            "poi": np.nan,
            "poi_ci_low": np.nan,
            "poi_ci_high": np.nan,
        }
        if baseline in modes and mode == baseline:
            notes[mode].append("the baseline")
        elif baseline in modes and complete:
            base, base_datasets = matrices[baseline]
            shared = [d for d in datasets if d in base_datasets]
            if np.isnan(base).any():
                notes[mode].append(f"baseline {baseline}: seeds differ across datasets")
            elif not shared:
                notes[mode].append(f"no dataset shared with baseline {baseline}")
            else:
                x = matrix[:, [datasets.index(d) for d in shared]]
                y = base[:, [base_datasets.index(d) for d in shared]]
                low, high = stratified_bootstrap(probability_of_improvement, x, y)
                row |= {"poi": probability_of_improvement(x, y), "poi_ci_low": low}
                row["poi_ci_high"] = high
                if len(shared) < len(datasets):
                    notes[mode].append(f"poi over the {len(shared)} datasets {baseline} ran on")
        row["note"] = "; ".join(notes[mode])
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(value: float, digits: int) -> str:
    return "-" if pd.isna(value) else f"{value:.{digits}f}"


def _interval(low: float, high: float, digits: int) -> str:
    return "-" if pd.isna(low) else f"[{low:.{digits}f}, {high:.{digits}f}]"


def _estimate(value: float, low: float, high: float, digits: int) -> str:
    """`value [low, high]`, or `-` where there is no estimate."""
    return "-" if pd.isna(value) else f"{value:.{digits}f} {_interval(low, high, digits)}"


def _trend(rise: float, rising: float, seeds: int) -> str:
    """`+2.5 (3 of 3 up)`, or `-` where the runs are too short to tell."""
    return "-" if pd.isna(rise) else f"{rise:+.1f} ({int(rising)} of {seeds} up)"


def _markdown(header: list[str], rows: list[list[str]], caption: str) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n\n" + caption + "\n"


def final_scores_markdown(final: pd.DataFrame) -> str:
    """The `final_scores` table as Markdown (one decimal), with a one-paragraph caption."""
    rows = []
    for r in final.itertuples(index=False):
        seeds = ", ".join(f"{float(v):.1f}" for v in str(r.seed_scores).split(";"))
        rows.append(
            [
                str(r.dataset),
                f"`{r.mode}`",
                str(r.seeds),
                f"{_cell(r.normalized_mean, 1)} ± {_cell(r.normalized_std, 1)}",
                _interval(r.normalized_ci_low, r.normalized_ci_high, 1),
                _cell(r.normalized_iqm, 1),
                _interval(r.normalized_iqm_ci_low, r.normalized_iqm_ci_high, 1),
                f"{seeds} (seeds {', '.join(str(r.seed_ids).split(';'))})",
                _trend(r.rise_mean, r.rising_seeds, r.seeds),
            ]
        )
    last_k = sorted(set(final["last_k"]))
    caption = (
        f"Normalized score (0: random policy, 100: expert). A seed's score is the mean of its last "
        f"{', '.join(map(str, last_k))} evaluation(s); mean ± std (ddof 0) over seeds, IQM, and "
        f"95% percentile-bootstrap intervals ({RESAMPLES} resamples). With 2-5 seeds an interval "
        "covers the true value less often than 95%. Last rise: the mean of the last K "
        "evaluations minus the K before them, over seeds, and how many seeds rose."
    )
    header = ["dataset", "mode", "seeds", "mean ± std", "95% CI", "IQM", "IQM 95% CI"]
    header += ["per seed", "last rise"]
    return _markdown(header, rows, caption)


def aggregates_markdown(table: pd.DataFrame) -> str:
    """The `aggregates` table as Markdown, with a one-paragraph caption."""
    baseline = table["baseline"].iloc[0] if len(table) else "bc"
    threshold = table["optimality_threshold"].iloc[0] if len(table) else 100.0
    rows = [
        [
            f"`{r.mode}`",
            f"{r.datasets} x {r.seeds}",
            _estimate(r.iqm, r.iqm_ci_low, r.iqm_ci_high, 1),
            _estimate(r.optimality_gap, r.optimality_gap_ci_low, r.optimality_gap_ci_high, 1),
            _estimate(r.poi, r.poi_ci_low, r.poi_ci_high, 2),
            str(r.note),
        ]
        for r in table.itertuples(index=False)
    ]
    caption = (
        f"Across datasets (datasets x seeds runs per mode): interquartile mean of the normalized "
        f"final scores, optimality gap (mean shortfall below {threshold:g}; lower is better) and "
        f"probability that a run of the mode beats a run of `{baseline}` on the same dataset, "
        f"each with a 95% stratified-bootstrap interval (datasets as strata, {RESAMPLES} "
        "resamples). With 2-5 seeds an interval covers the true value less often than 95%."
    )
    header = ["mode", "runs", "IQM [95% CI]", "optimality gap [95% CI]", "P(improvement)", "note"]
    header[4] = f"P(improvement over `{baseline}`) [95% CI]"
    return _markdown(header, rows, caption)


def mode_colors(method_of: dict[str, str]) -> dict[str, tuple]:
    """One colour per mode entry, the same in every figure: the model-free references
    (`MethodSpec.model_free`: td3-bc, iql, cql) in shades of green, a family of their own,
    and every other entry from tab10 (tab20 past 9 entries) with its greens left out.

    Args:
        method_of: entry name -> its method (a name outside the registry counts as not
            model-free).
    """
    import matplotlib.pyplot as plt

    from ombrl.methods import METHODS

    modes = sorted(method_of)
    free = [m for m in modes if getattr(METHODS.get(method_of[m]), "model_free", False)]
    others = [m for m in modes if m not in free]
    greens = {"tab10": {2}, "tab20": {4, 5}}
    name = "tab10" if len(others) <= 9 else "tab20"
    palette = [c for i, c in enumerate(plt.get_cmap(name).colors) if i not in greens[name]]
    colors = {mode: palette[i % len(palette)] for i, mode in enumerate(others)}
    shades = plt.get_cmap("Greens")(np.linspace(0.9, 0.5, max(len(free), 1)))
    colors.update({mode: tuple(shades[i]) for i, mode in enumerate(free)})
    return colors
