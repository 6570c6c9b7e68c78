"""D4RL-style locomotion datasets made here from a behaviour run (`ombrl.data.behaviour`),
each quality built as D4RL built it:

- `random`: the randomly initialised policy (the snapshot at env step 0);
- `medium`: the snapshot whose evaluated return is nearest a third of the task's reference
  maximum (or a `medium_return` given); the run must have reached it, or there is no medium;
- `medium-replay`: every transition the run saw up to the medium snapshot (its size is that
  snapshot's env step, so `transitions` is not asked for);
- `expert`: the last snapshot, whatever return the budget reached (stated in metadata);
- `medium-expert`: the medium rows followed by the expert rows (2 x `transitions`).

Snapshots act stochastically (sampled actions, as D4RL's behaviour policies did); each part is
`transitions` steps, its last row cut as a timeout, from reset seeds derived from the
behaviour seed and the part's name, so medium-expert is exactly medium followed by expert.

Reference scores (metadata `ref_min_score`, `ref_max_score`, read by `read_hdf5`): `task`
(default) stores D4RL's published constants for D4RL tasks (so scores are on the scale every
paper uses), or for other tasks the random policy and scripted expert of `ombrl.data.collect`;
`own` stores the behaviour run's own random and expert returns. Both pairs are always stored
beside them (`task_ref_*`, `own_ref_*`).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np

from ombrl.data.behaviour import (
    REPLAY,
    BehaviourConfig,
    Recorder,
    cut,
    episode_seed,
    load_snapshots,
    sim_state,
    snapshot_actor,
)
from ombrl.data.collect import reference_scores, write_hdf5
from ombrl.data.requests import check_request
from ombrl.data.scores import D4RL_REF_SCORES, d4rl_family
from ombrl.errors import OmbrlError
from ombrl.runtime import code_version

QUALITIES = ("random", "medium", "medium-replay", "expert", "medium-expert")
#: Which snapshots each quality's rollouts come from, in order.
PARTS = {"random": ("random",), "medium": ("medium",), "expert": ("expert",)}
PARTS["medium-expert"] = ("medium", "expert")
REF_SCORES = ("task", "own")
#: Medium is the snapshot nearest this fraction of the task's reference maximum (D4RL's third).
MEDIUM_FRACTION = 1 / 3
#: Random-policy episodes behind a non-D4RL task's ref_min_score (collect's default).
TASK_REF_EPISODES = 100


def task_reference(env_id: str) -> tuple[float, float, str]:
    """(ref_min, ref_max, source) of a task: D4RL's constants, else collect's measured pair."""
    family = d4rl_family(env_id)
    if family in D4RL_REF_SCORES:
        return (*D4RL_REF_SCORES[family], "d4rl")
    ref_min, ref_max, source = reference_scores(env_id, TASK_REF_EPISODES)
    return ref_min, ref_max, source


def medium_snapshot(records: list[dict], target: float) -> dict:
    """The snapshot nearest `target` (after step 0), once some snapshot has reached it.

    Raises:
        OmbrlError: no snapshot reached `target` (the budget was too short).
    """
    trained = [r for r in records if r["env_steps"] > 0]
    best = max(trained, key=lambda r: r["return"])
    if best["return"] < target:
        raise OmbrlError(
            f"no medium snapshot: the best evaluated return {best['return']:.1f} (env step "
            f"{best['env_steps']}) is below the medium target {target:.1f}; "
            "raise behaviour.env_steps"
        )
    return min(trained, key=lambda r: abs(r["return"] - target))


def generate(
    behaviour: Path,
    quality: str,
    transitions: int | None,
    ref_scores: str,
    output: Path,
    medium_return: float | None = None,
) -> Path:
    """Write dataset `quality` of a behaviour run as a D4RL-layout HDF5 file.

    Args:
        behaviour: the run's folder (`ombrl.data.behaviour.run`).
        quality: one of QUALITIES.
        transitions: rows per part (None for medium-replay).
        ref_scores: `task` or `own` (module docstring).
        output: the file, written atomically.
        medium_return: the return medium is nearest to (None: a third of the task's
            reference maximum, as D4RL).

    Raises:
        OmbrlError: a bad request, or no medium snapshot in the run.
    """
    if quality not in QUALITIES or ref_scores not in REF_SCORES:
        raise OmbrlError(
            f"quality {quality!r} / ref_scores {ref_scores!r}: choose from "
            f"{', '.join(QUALITIES)} / {', '.join(REF_SCORES)}"
        )
    tensors, meta = load_snapshots(behaviour)
    env_id, seed = meta["env_id"], meta["seed"]
    cfg = BehaviourConfig(**meta["config"])
    check_request(
        {"env": env_id, "quality": quality}
        | ({} if transitions is None else {"transitions": transitions}),
        cfg,
    )
    task_min, task_max, task_source = task_reference(env_id)
    records = meta["snapshots"]
    chosen = {"random": records[0], "expert": records[-1]}
    if quality.startswith("medium"):
        target = MEDIUM_FRACTION * task_max if medium_return is None else medium_return
        chosen["medium"] = medium_snapshot(records, target)
    if quality == "medium-replay":
        with h5py.File(Path(behaviour) / REPLAY, "r") as handle:
            stop = chosen["medium"]["env_steps"]
            arrays = cut({k: handle[k][:stop] for k in Recorder.FIELDS})
    else:
        parts = [
            rollout(
                env_id,
                snapshot_actor(
                    env_id, tensors, str(chosen[p]["env_steps"]), cfg, _part_seed(seed, p)
                ),
                transitions,
                _part_seed(seed, p),
            )
            for p in PARTS[quality]
        ]
        arrays = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
    own = (meta["random_return"], meta["expert_return"])
    ref_min, ref_max = (task_min, task_max) if ref_scores == "task" else own
    metadata = {
        "env_id": env_id,
        "quality": quality,
        "behaviour_seed": seed,
        "behaviour_env_steps": cfg.env_steps,
        "snapshots": json.dumps({p: chosen[p] for p in PARTS.get(quality, ("medium",))}),
        "expert_return": records[-1]["return"],
        "ref_scores": ref_scores,
        "ref_min_score": ref_min,
        "ref_max_score": ref_max,
        "task_ref_min_score": task_min,
        "task_ref_max_score": task_max,
        "task_ref_source": task_source,
        "own_ref_min_score": own[0],
        "own_ref_max_score": own[1],
        "code_version": code_version(),
    }
    write_hdf5(Path(output), arrays, metadata)
    return Path(output)


def _part_seed(seed: int, part: str) -> int:
    """The rollout seed of one part of a dataset (the same for every quality that holds it)."""
    return int(np.random.SeedSequence([seed, zlib.crc32(part.encode())]).generate_state(1)[0])


def rollout(env_id: str, agent, transitions: int, seed: int) -> dict[str, np.ndarray]:
    """`transitions` steps of `agent`'s sampled actions; episode k is reset with
    `episode_seed(seed, k)`; the last row is cut as a timeout unless it is a terminal."""
    env = gym.make(env_id)
    recorder, episode = Recorder(env, transitions), 0
    obs, _ = env.reset(seed=episode_seed(seed, episode))
    for _ in range(transitions):
        action = agent.act(obs, deterministic=False)
        state = sim_state(env)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        recorder.add(obs, action, reward, next_obs, terminated, truncated, state)
        obs = next_obs
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=episode_seed(seed, episode))
    env.close()
    return cut(recorder.arrays())
