"""What a generated dataset's request is, checked when a study loads, before any job runs.

Kept apart from the behaviour run (`ombrl.data.behaviour`, which trains SAC) and the cutting
of qualities (`ombrl.data.generate`), so that loading a study imports none of that code: the
workflow's rerun fingerprints, read from the imports, would otherwise tie every job to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ombrl.data.collect import mujoco_env_ids
from ombrl.data.controllers import SCRIPTED
from ombrl.errors import OmbrlError


@dataclass(frozen=True)
class BehaviourConfig:
    """A behaviour run's settings (`$defs.behaviour` of the schema).

    Attributes:
        env_steps: environment steps of the run (warmup included).
        warmup: uniform random steps before the first update; then one update per step.
        snapshot_every: env steps between snapshots.
        eval_episodes: deterministic evaluation episodes per snapshot.
        hidden_size: actor and critic hidden layers.
        batch_size, lr, gamma, tau, alpha: SAC's.
    """

    env_steps: int
    warmup: int
    snapshot_every: int
    eval_episodes: int
    hidden_size: list[int]
    batch_size: int
    lr: float
    gamma: float
    tau: float
    alpha: float | None


def check_settings(env_id: str, cfg: BehaviourConfig) -> None:
    """Problems visible before a run starts.

    Raises:
        OmbrlError: an env that is not a gymnasium MuJoCo `-v5` task, or settings that
            cannot run (warmup below a batch or beyond the run).
    """
    if env_id not in mujoco_env_ids():
        raise OmbrlError(f"env: unknown task {env_id!r}; valid: {', '.join(mujoco_env_ids())}")
    if not cfg.batch_size <= cfg.warmup <= cfg.env_steps:
        raise OmbrlError(
            f"behaviour.warmup: {cfg.warmup} must be between batch_size ({cfg.batch_size}) "
            f"and env_steps ({cfg.env_steps})"
        )


def supported_envs() -> tuple[str, ...]:
    """Tasks with a reference maximum: the D4RL families' `-v5` ids and the scripted ones."""
    d4rl = [f"{gym_id}-v5" for gym_id in ("Hopper", "HalfCheetah", "Walker2d", "Ant")]
    return tuple(sorted({*d4rl, *SCRIPTED}))


def behaviour_name(spec: dict) -> str:
    """The behaviour run a generated dataset comes from: one per task and behaviour seed."""
    return f"{spec['env']}-seed{spec['seed']}"


def check_request(spec: dict, cfg: BehaviourConfig) -> None:
    """What can be known wrong about a generated dataset before any job runs.

    Raises:
        OmbrlError: an unknown task, `transitions` missing (or given for medium-replay), or
            a run whose snapshots cannot hold a medium (no snapshot between the first and
            the last).
    """
    if spec["env"] not in supported_envs():
        raise OmbrlError(
            f"env: {spec['env']!r} has no reference scores to generate from; "
            f"valid: {', '.join(supported_envs())}"
        )
    check_settings(spec["env"], cfg)
    quality = spec["quality"]
    if (quality == "medium-replay") == ("transitions" in spec):
        need = "takes no" if quality == "medium-replay" else "needs"
        raise OmbrlError(f"quality {quality} {need} transitions (medium-replay: the run's own)")
    if quality.startswith("medium") and cfg.snapshot_every >= cfg.env_steps:
        raise OmbrlError(
            f"quality {quality}: behaviour.snapshot_every {cfg.snapshot_every} >= env_steps "
            f"{cfg.env_steps} leaves no snapshot between random and expert to be the medium"
        )
