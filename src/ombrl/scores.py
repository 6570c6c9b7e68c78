"""The scores stage: every evaluation of every policy in one table, and the final-score table.

Policy jobs write `progress.csv` with one row per evaluation, already normalized against the
dataset's reference scores; this stage only gathers, orders and summarises them, so the
table is traceable row by row to the run that produced it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ombrl.errors import OmbrlError

KEY_COLUMNS = ["dataset", "mode", "method", "seed", "step", "return", "normalized_score"]


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
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    rest = [c for c in table.columns if c not in KEY_COLUMNS]
    table = table[KEY_COLUMNS + rest]
    return table.sort_values(["dataset", "mode", "seed", "step"], kind="stable").reset_index(
        drop=True
    )


def bootstrap_interval(
    values: np.ndarray, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over seeds (fixed seed: same table every run)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 1:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def final_scores(table: pd.DataFrame) -> pd.DataFrame:
    """Each (dataset, mode): the last evaluation of every seed, mean, std and 95% interval."""
    last = table.loc[table.groupby(["dataset", "mode", "seed"])["step"].idxmax()]
    rows = []
    for (dataset, mode), group in last.groupby(["dataset", "mode"], sort=True):
        scores = group["normalized_score"].to_numpy()
        low, high = bootstrap_interval(scores)
        rows.append(
            {
                "dataset": dataset,
                "mode": mode,
                "method": group["method"].iloc[0],
                "seeds": len(scores),
                "step": int(group["step"].max()),
                "return_mean": float(group["return"].mean()),
                "normalized_mean": float(scores.mean()),
                "normalized_std": float(scores.std(ddof=0)),
                "normalized_ci_low": low,
                "normalized_ci_high": high,
            }
        )
    return pd.DataFrame(rows)
