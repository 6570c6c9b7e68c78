"""A one-screen summary of a dataset, printed as JSON by `ombrl dataset inspect`."""

from __future__ import annotations

from ombrl.data.dataset import Dataset


def summarize(dataset: Dataset) -> dict:
    """Counts, shapes, episode returns and provenance of `dataset`.

    Returns:
        A JSON-ready dict: transitions, episodes, obs_dim, act_dim, return_mean, return_min,
        return_max (over episodes, including any cut short), ref_min_score, ref_max_score,
        env_id, checksum, and a `notes` list saying what is unknown (the environment of a
        file without metadata, the reference scores normalized scores need).
    """
    returns = dataset.episode_returns()
    notes = []
    if dataset.env_id is None:
        notes.append("environment unknown (no metadata/env_id; name it with --env ENV_ID)")
    if dataset.ref_min_score is None or dataset.ref_max_score is None:
        notes.append("reference scores unknown: returns cannot be normalized")
    return {
        "env_id": dataset.env_id,
        "transitions": len(dataset),
        "episodes": dataset.num_episodes,
        "obs_dim": dataset.obs_dim,
        "act_dim": dataset.act_dim,
        "return_mean": float(returns.mean()),
        "return_min": float(returns.min()),
        "return_max": float(returns.max()),
        "ref_min_score": dataset.ref_min_score,
        "ref_max_score": dataset.ref_max_score,
        "checksum": dataset.checksum,
        "notes": notes,
    }
