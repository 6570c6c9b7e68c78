"""Reference scores, so every reported return can also be read on D4RL's normalised scale.

D4RL normalises a return R as 100 * (R - random) / (expert - random), with one pair of
constants per environment shared by the v0, v1 and v2 datasets. Datasets collected here carry
their own pair in the file's metadata (a uniform random policy and the scripted expert,
measured on the same environment), so the same formula applies to them.
"""

from __future__ import annotations

from ombrl.data.dataset import Dataset
from ombrl.errors import OmbrlError

#: D4RL's (random, expert) returns per environment family (d4rl/infos.py, v0-v2 alike).
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}

#: Gymnasium id prefixes of the D4RL families (matched before the "-vN" suffix).
_GYM_FAMILIES = {
    "Hopper": "hopper",
    "HalfCheetah": "halfcheetah",
    "Walker2d": "walker2d",
    "Ant": "ant",
}


def normalized_score(ret: float, ref_min: float, ref_max: float) -> float:
    """D4RL-normalised score: 0 for the random policy, 100 for the expert.

    Args:
        ret: an undiscounted episode return (or a mean of them).
        ref_min: return of the random reference policy.
        ref_max: return of the expert reference policy; must differ from ref_min.

    Returns:
        100 * (ret - ref_min) / (ref_max - ref_min).
    """
    if ref_max == ref_min:
        raise OmbrlError(f"reference scores are equal ({ref_min}): cannot normalise")
    return 100.0 * (float(ret) - ref_min) / (ref_max - ref_min)


def d4rl_family(env_id: str) -> str | None:
    """D4RL family ("hopper", ...) of a gymnasium id such as "Hopper-v4"; None for others."""
    return _GYM_FAMILIES.get(env_id.rsplit("-v", 1)[0])


def reference_scores(dataset: Dataset) -> tuple[float, float]:
    """(ref_min, ref_max) to normalise returns of policies trained on `dataset`.

    The dataset's own scores win (a collected file stores them); a dataset without them
    falls back to D4RL's constants when its environment is a D4RL family, so a D4RL file
    read without metadata still normalises as D4RL does.

    Raises:
        OmbrlError: when neither source knows the environment.
    """
    fallback = D4RL_REF_SCORES.get(d4rl_family(dataset.env_id) or "", (None, None))
    ref_min = dataset.ref_min_score if dataset.ref_min_score is not None else fallback[0]
    ref_max = dataset.ref_max_score if dataset.ref_max_score is not None else fallback[1]
    if ref_min is None or ref_max is None:
        raise OmbrlError(
            f"no reference scores for env {dataset.env_id!r}: the dataset stores none and it is "
            f"not one of {sorted(_GYM_FAMILIES)}"
        )
    return float(ref_min), float(ref_max)
