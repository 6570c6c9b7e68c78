"""PETS (Chua et al. 2018): learn a dynamics ensemble by acting with a planner on it.

The loop of upstream handful-of-trials' `MBExperiment`: `init_episodes` episodes of uniform
random actions, then `iterations` times: refit the ensemble on every transition so far
(`fit_ensemble`, weights carried over from the previous fit, `fit_epochs` epochs), run one
episode with the MPC agent (CEM or random shooting on particles propagated through the
ensemble), add it to the data. An iteration's return is its planned episode's return (upstream
`neval = 1`).

Same seed, same numbers: episode i (0-based, random ones first) resets the environment with
`seed + i`; random actions come from a numpy generator seeded with `seed`; every planning
sample from one torch generator seeded with `seed`; refit i uses the seed `seed + i`. The
state at the end of each iteration (weights, planning generator, episodes, metric rows) is
what a `Checkpointer` saves, so a killed job restarted with the same command resumes at its
last finished iteration and produces the same returns as an uninterrupted run (MuJoCo is
deterministic given the reset seed and the actions).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from ombrl.checkpoint import Checkpointer, job_checkpointer, prefixed, subset
from ombrl.data.dataset import Dataset
from ombrl.errors import OmbrlError
from ombrl.models.ensemble import DynamicsEnsemble, save_ensemble
from ombrl.models.fit import FitConfig, fit_ensemble
from ombrl.planning.cem import CEMOptimizer, RandomOptimizer
from ombrl.planning.mpc import MPCAgent
from ombrl.planning.propagation import Propagator, planning_model
from ombrl.planning.settings import PetsConfig, load_pets_config, preset_path
from ombrl.runtime import code_version, resolve_device, setup
from ombrl.tasks import Task, get_task
from ombrl.tracking import (
    CsvLog,
    check_output_dir,
    mlflow_run,
    resolve_tracking_uri,
    staged_directory,
    write_json,
    write_tracking_marker,
)

EPISODE_KEYS = ("observations", "actions", "rewards")


@dataclass
class Episode:
    """One episode in the environment.

    Attributes:
        observations: (T + 1) x obs_dim, the reset observation first (float64, as MuJoCo).
        actions: T x act_dim (float32, as given to the env).
        rewards: T (float64).
        terminated: the last step ended the episode (a terminal state), not the time limit.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: bool

    @property
    def total(self) -> float:
        return float(self.rewards.sum())


@dataclass
class PetsResult:
    """What a run produced besides the ensemble's weights (in the model passed in).

    Attributes:
        rows: one dict per episode (random and planned), CSV-ready.
        episodes: every episode, in order.
        returns: the planned episodes' returns, one per iteration.
    """

    rows: list[dict]
    episodes: list[Episode]
    returns: list[float] = field(default_factory=list)


def fit_config(cfg: PetsConfig) -> FitConfig:
    """The ensemble-training settings of a PETS refit (the one place FitConfig is built).

    Upstream's `BNN.train` keeps every member's last epoch; a holdout (an option here) keeps
    each member's epoch of lowest holdout MSE instead."""
    return FitConfig(
        fit_epochs=cfg.fit_epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        holdout_ratio=cfg.holdout_ratio,
        holdout_by="transition",
        patience=0,
        scheduler_gamma=None,
        bootstrap=cfg.bootstrap,
        # PETS: each member's bootstrap resample in its own order; shared batches without one.
        batch_order="per_member" if cfg.bootstrap else "shared",
        snapshot="mse" if cfg.holdout_ratio > 0 else "last",
        num_elites=cfg.members,
        normalization=cfg.normalization,
        grad_clip=None,
        compile=False,
    )


def make_ensemble(cfg: PetsConfig, task: Task) -> DynamicsEnsemble:
    """A fresh ensemble for `cfg.model_type` (weights from torch's global RNG: seed it first),
    seeing the task's angles as sine and cosine under `obs_preproc: task`."""
    probabilistic = cfg.model_type.startswith("P")
    angle_dims = task.angle_dims if cfg.obs_preproc == "task" else ()
    return DynamicsEnsemble(
        task.obs_dim, task.act_dim, list(cfg.hidden_size), cfg.members, probabilistic,
        cfg.activation, False, angle_dims=angle_dims,
    )  # fmt: skip


def make_agent(
    ensemble: DynamicsEnsemble, task: Task, cfg: PetsConfig, generator: torch.Generator
) -> MPCAgent:
    """The MPC agent planning on `ensemble` with `cfg`'s controller settings.

    Raises:
        OmbrlError: the model type does not fit the ensemble (P/PE on a deterministic one).
    """
    model = planning_model(ensemble, cfg.model_type)
    use_variance = cfg.model_type in ("P", "PE")
    propagator = Propagator(model, cfg.prop_type, cfg.particles, use_variance, generator)
    low = torch.full((task.act_dim,), float(task.action_low))
    high = torch.full((task.act_dim,), float(task.action_high))
    if cfg.opt_type == "CEM":
        optimizer = CEMOptimizer(
            cfg.popsize, cfg.num_elites, cfg.max_iters, cfg.alpha, cfg.epsilon, low, high,
            generator,
        )  # fmt: skip
    else:
        optimizer = RandomOptimizer(cfg.popsize, low, high, generator)
    return MPCAgent(optimizer, propagator, task, cfg.horizon)


def run_episode(
    env: gym.Env, act: Callable[[np.ndarray], np.ndarray], seed: int, progress: tqdm | None
) -> Episode:
    """One episode from `env.reset(seed=seed)` until it terminates or is truncated."""
    obs, _ = env.reset(seed=seed)
    low, high = env.action_space.low, env.action_space.high
    observations, actions, rewards = [obs], [], []
    terminated = truncated = False
    while not (terminated or truncated):
        action = np.clip(np.asarray(act(obs), dtype=np.float32), low, high)
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(float(reward))
        if progress is not None:
            progress.update()
    return Episode(
        np.asarray(observations, dtype=np.float64),
        np.asarray(actions, dtype=np.float32),
        np.asarray(rewards, dtype=np.float64),
        bool(terminated),
    )


def episodes_dataset(episodes: list[Episode], env_id: str) -> Dataset:
    """The transitions of `episodes` as a `Dataset` (time-limit ends are timeouts)."""
    obs = np.concatenate([e.observations[:-1] for e in episodes])
    next_obs = np.concatenate([e.observations[1:] for e in episodes])
    lengths = [len(e.actions) for e in episodes]
    ends = np.cumsum(lengths) - 1
    terminals = np.zeros(len(obs), dtype=bool)
    timeouts = np.zeros(len(obs), dtype=bool)
    for end, episode in zip(ends, episodes, strict=True):
        (terminals if episode.terminated else timeouts)[end] = True
    return Dataset(
        observations=obs.astype(np.float32),
        actions=np.concatenate([e.actions for e in episodes]),
        rewards=np.concatenate([e.rewards for e in episodes]).astype(np.float32),
        next_observations=next_obs.astype(np.float32),
        terminals=terminals,
        timeouts=timeouts,
        episode_ids=np.repeat(np.arange(len(episodes)), lengths),
        env_id=env_id,
    )


def _state(
    ensemble: DynamicsEnsemble,
    generator: torch.Generator,
    episodes: list[Episode],
    rows: list[dict],
    iteration: int,
) -> tuple[dict, dict]:
    """A checkpoint of the loop after `iteration` (tensors, JSON)."""
    tensors = {
        **prefixed(ensemble.state_dict(), "model"),
        "generator": generator.get_state(),
        **{
            key: torch.from_numpy(np.concatenate([getattr(e, key) for e in episodes]))
            for key in EPISODE_KEYS
        },
    }
    meta = {
        "iteration": iteration,
        "lengths": [len(e.actions) for e in episodes],
        "terminated": [e.terminated for e in episodes],
        "rows": rows,
    }
    return tensors, meta


def _restore(
    saved_tensors: dict, meta: dict, ensemble: DynamicsEnsemble, generator: torch.Generator
) -> list[Episode]:
    ensemble.load_state_dict(subset(saved_tensors, "model"))
    generator.set_state(saved_tensors["generator"])
    arrays = {key: saved_tensors[key].numpy() for key in EPISODE_KEYS}
    episodes, step = [], 0
    for length, terminated in zip(meta["lengths"], meta["terminated"], strict=True):
        start_obs = step + len(episodes)  # observations hold one more row per episode
        episodes.append(
            Episode(
                arrays["observations"][start_obs : start_obs + length + 1].copy(),
                arrays["actions"][step : step + length].copy(),
                arrays["rewards"][step : step + length].copy(),
                bool(terminated),
            )
        )
        step += length
    return episodes


def train_pets(
    env_id: str,
    cfg: PetsConfig,
    seed: int,
    device: torch.device | str,
    on_row: Callable[[dict], None] | None = None,
    progress: bool = True,
    checkpoint: Checkpointer | None = None,
) -> tuple[DynamicsEnsemble, PetsResult]:
    """Run PETS in a gymnasium environment.

    Args:
        env_id: gymnasium id with task functions (`ombrl.tasks.get_task`), e.g.
            "InvertedPendulum-v5", "Reacher-v5", "Pusher-v5", "HalfCheetah-v5".
        cfg: checked settings (`load_pets_config`).
        seed: every random number derives from it (see the module docstring).
        device: where the ensemble trains and plans.
        on_row: receives each episode's row; after a resume, first every saved row.
        progress: show tqdm bars (iterations, and the steps of the current episode).
        checkpoint: resume from its newest state and save one every `checkpoint.every`
            iterations (step = iterations finished; the initial episodes are step 0).

    Returns:
        The final ensemble and a `PetsResult`. Each row has `episode`, `iteration` (0 for the
        random episodes), `policy` ("random" or "mpc"), `return`, `length`, `terminated`,
        `env_steps` (cumulative) and, for planned episodes, `fit_seconds`, `plan_seconds`,
        `seconds_per_action`, `train_mse` and, with a holdout, `holdout_mse` (of the refit's
        last epoch, normalised space).
    """
    task = get_task(env_id)
    device = torch.device(device)
    try:
        kwargs = {} if cfg.episode_length is None else {"max_episode_steps": cfg.episode_length}
        env = gym.make(env_id, **kwargs)
    except gym.error.Error as err:
        raise OmbrlError(f"env: cannot make {env_id!r} ({err})") from err
    torch.manual_seed(seed)
    ensemble = make_ensemble(cfg, task).to(device)
    generator = torch.Generator().manual_seed(seed)
    rows: list[dict] = []
    episodes: list[Episode] = []
    first = 1
    saved = checkpoint.load() if checkpoint is not None else None

    def log(row: dict) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    def base_row(episode: Episode, iteration: int, policy: str) -> dict:
        return {
            "episode": len(episodes) - 1,
            "iteration": iteration,
            "policy": policy,
            "return": episode.total,
            "length": len(episode.actions),
            "terminated": episode.terminated,
            "env_steps": sum(len(e.actions) for e in episodes),
        }

    try:
        if saved is not None:
            episodes = _restore(saved.tensors, saved.meta, ensemble, generator)
            first = saved.meta["iteration"] + 1
            for row in saved.meta["rows"]:
                log(row)
        else:
            rng = np.random.default_rng(seed)
            low, high = env.action_space.low, env.action_space.high
            for _ in range(cfg.init_episodes):
                episode = run_episode(
                    env, lambda _: rng.uniform(low, high), seed + len(episodes), None
                )
                episodes.append(episode)
                log(base_row(episode, 0, "random"))
            if checkpoint is not None:
                checkpoint.save(0, *_state(ensemble, generator, episodes, rows, 0))
        bar = tqdm(
            range(first, cfg.iterations + 1),
            desc=f"pets {env_id}",
            disable=not progress,
            initial=first - 1,
            total=cfg.iterations,
        )
        for iteration in bar:
            start = time.perf_counter()
            fit = fit_ensemble(
                ensemble,
                episodes_dataset(episodes, env_id),
                fit_config(cfg),
                seed=seed + iteration,
                device=device,
                progress=False,
            )
            fit_seconds = time.perf_counter() - start
            agent = make_agent(ensemble, task, cfg, generator)
            agent.reset()
            steps = tqdm(desc=f"iteration {iteration}", leave=False, disable=not progress)
            start = time.perf_counter()
            episode = run_episode(env, agent.act, seed + len(episodes), steps)
            plan_seconds = time.perf_counter() - start
            steps.close()
            episodes.append(episode)
            last = fit.history[-1]
            log(
                {
                    **base_row(episode, iteration, "mpc"),
                    "fit_seconds": fit_seconds,
                    "plan_seconds": plan_seconds,
                    "seconds_per_action": plan_seconds / max(1, len(episode.actions)),
                    **{k: last[k] for k in ("holdout_mse", "train_mse") if k in last},
                }
            )
            bar.set_postfix(ret=f"{episode.total:.1f}", steps=len(episode.actions))
            if checkpoint is not None and (
                checkpoint.due(iteration) or iteration == cfg.iterations
            ):
                checkpoint.save(iteration, *_state(ensemble, generator, episodes, rows, iteration))
        bar.close()
    finally:
        env.close()
    returns = [row["return"] for row in rows if row["policy"] == "mpc"]
    return ensemble, PetsResult(rows=rows, episodes=episodes, returns=returns)


def write_episodes(path: Path, episodes: list[Episode], returns: list[float]) -> None:
    """Every episode in one HDF5 file (upstream wrote logs.mat).

    Layout: `episode_{i:04d}/observations` ((T + 1) x obs), `actions` (T x act), `rewards`
    (T), attribute `terminated`; top-level `returns` (one per iteration, planned episodes).
    """
    import h5py

    with h5py.File(path, "w") as f:
        for i, episode in enumerate(episodes):
            group = f.create_group(f"episode_{i:04d}")
            for key in EPISODE_KEYS:
                group.create_dataset(key, data=getattr(episode, key))
            group.attrs["terminated"] = episode.terminated
        f.create_dataset("returns", data=np.asarray(returns, dtype=np.float64))


def run_job(
    env_id: str,
    preset: str | None,
    controller_args: list[list[str]],
    overrides: list[list[str]],
    output: Path,
    seed: int,
    threads: int,
    device: str,
    progress: bool,
    checkpoint_every: int,
    checkpoint_dir: str | None,
    tracking_uri: str | None,
) -> None:
    """One `ombrl pets` job: settings from the preset, `-ca` and `-o`; the online loop with
    checkpoints at iteration boundaries, an MLflow run and CSV log; outputs written at the end.

    Raises:
        OmbrlError: an env without task functions or any bad setting, before planning.
    """
    get_task(env_id)  # an env without task functions fails before anything else
    check_output_dir(output)
    uri = resolve_tracking_uri(tracking_uri)
    path = preset_path(preset, env_id)
    cfg = load_pets_config(path, controller_args, overrides)
    torch_device = resolve_device(device)
    setup(seed, threads)
    settings = cfg.to_dict()
    identity = {"command": "pets", "env": env_id, "config": settings, "device": torch_device.type}
    checkpoint = job_checkpointer(checkpoint_dir, checkpoint_every, identity, seed, threads, output)
    tags = {"env": env_id, "preset": path.stem, "seed": seed}
    log = CsvLog()
    with mlflow_run(uri, "pets", "/".join(map(str, tags.values())), tags, settings) as run:

        def on_row(row: dict) -> None:
            log.log(row)
            if run is not None:
                run.log(row, row["episode"])

        ensemble, result = train_pets(env_id, cfg, seed, torch_device, on_row, progress, checkpoint)
    meta = {
        "env": env_id,
        "preset": str(path),
        "config": settings,
        "seed": seed,
        "threads": threads,
        "code_version": code_version(),
    }
    with staged_directory(output) as out:
        save_ensemble(ensemble, out, meta)
        write_episodes(out / "episodes.hdf5", result.episodes, result.returns)
        log.write(out / "progress.csv")
        write_json(out / "returns.json", {**meta, "returns": result.returns})
        write_tracking_marker(out, run)
    for i, value in enumerate(result.returns, start=1):
        print(f"iteration {i}: return {value:.1f}")
    if checkpoint is not None:
        checkpoint.clear()
