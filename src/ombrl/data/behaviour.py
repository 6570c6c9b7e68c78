"""Behaviour runs: online SAC on a gymnasium MuJoCo task, the way D4RL made its behaviour
policies, keeping what the dataset qualities are later cut from.

One run per (task, behaviour seed) writes, into its folder:

- `snapshots.safetensors` + `snapshots.json`: the actor's weights at env step 0 (the randomly
  initialised policy, behind `random`), every `snapshot_every` env steps and at the end
  (`expert`), each with its evaluated return (deterministic policy, `eval_episodes` episodes
  from fixed seeds); the stochastic returns of the first and last snapshot (the task's "own"
  reference scores); the settings and the code version.
- `replay.hdf5`: every transition the run saw, in order, in the D4RL layout (with
  `infos/qpos`, `infos/qvel`), so `medium-replay` is a prefix of it.

The seed is the dataset's, not a study seed: every study that names the same task and seed
gets the same data. Episode k is reset with a seed derived from (seed, k), so the run is a
function of its settings alone, and a killed run resumes bit-identically: the state is saved
at the first episode boundary after every `checkpoint_every` env steps (agent, replay rows,
generators, snapshots so far). Mid-episode states are not saved, since a gymnasium
environment's simulator and time-limit counter have no portable save; a resumed run repeats
at most one checkpoint interval plus one episode.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from ombrl.agents.buffer import Batch, ReplayBuffer
from ombrl.agents.sac import SAC, SACConfig
from ombrl.checkpoint import job_checkpointer, prefixed, subset
from ombrl.data.collect import episode_returns, write_hdf5
from ombrl.data.requests import BehaviourConfig, check_settings
from ombrl.evaluate import evaluate
from ombrl.io import load_model, save_model
from ombrl.runtime import code_version, setup
from ombrl.tracking import staged_directory

SNAPSHOTS = "snapshots"
REPLAY = "replay.hdf5"
#: First seed of the snapshot evaluations (episode i: EVAL_SEED + i), as the policy stage's.
EVAL_SEED = 100_000
#: Episodes (and seed) behind the own reference returns of the first and last snapshot.
OWN_REF_EPISODES = 10
OWN_REF_SEED = 30_000


def sac_config(cfg: BehaviourConfig) -> SACConfig:
    """The behaviour run's SAC settings."""
    return SACConfig(
        batch_size=cfg.batch_size,
        hidden_size=list(cfg.hidden_size),
        gamma=cfg.gamma,
        tau=cfg.tau,
        lr=cfg.lr,
        alpha=cfg.alpha,
        compile=False,
    )


def snapshot_steps(cfg: BehaviourConfig) -> list[int]:
    """Env steps at which the actor is kept: 0, every `snapshot_every`, and the last."""
    return sorted({*range(0, cfg.env_steps, cfg.snapshot_every), cfg.env_steps})


def episode_seed(seed: int, episode: int) -> int:
    """The reset seed of episode `episode` of a run (or rollout) seeded `seed`."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


class Recorder:
    """Rows in the D4RL layout, appended one environment step at a time into arrays
    preallocated for `capacity` rows (float32, bool; qpos and qvel float64).

    `infos/qpos` and `infos/qvel` are the simulator state the row's observation was made from.

    Why preallocated: a row kept as a few small Python objects per step sits between the SAC
    update's large temporaries on the C heap, so glibc can neither reuse nor return the freed
    space, and the process grew by ~60 KB per step (11.5 GB at 200k steps of Hopper).
    """

    KEYS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")
    FIELDS = (*KEYS, "infos/qpos", "infos/qvel")

    def __init__(self, env: gym.Env, capacity: int) -> None:
        obs, model = env.observation_space.shape, env.unwrapped.model
        shapes = {"observations": obs, "actions": env.action_space.shape, "rewards": ()}
        shapes |= {"next_observations": obs, "terminals": (), "timeouts": ()}
        shapes |= {"infos/qpos": (model.nq,), "infos/qvel": (model.nv,)}
        dtypes = {"terminals": bool, "timeouts": bool, "infos/qpos": np.float64}
        dtypes["infos/qvel"] = np.float64
        self.rows = {
            k: np.empty((capacity, *shapes[k]), dtypes.get(k, np.float32)) for k in self.FIELDS
        }
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs, action, reward, next_obs, terminated, truncated, state) -> None:
        """Append one step; `state` is (qpos, qvel) before the step."""
        values = (obs, action, reward, next_obs, terminated, truncated and not terminated)
        for key, value in zip(self.FIELDS, (*values, *state), strict=True):
            self.rows[key][self.size] = value
        self.size += 1

    def arrays(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Rows `start:stop` (of those added) as views: rows once written never change.

        A file written from them must end its last episode: see `cut`."""
        stop = self.size if stop is None else min(stop, self.size)
        return {k: v[start:stop] for k, v in self.rows.items()}

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        """Start over from saved rows (what `arrays()` returned)."""
        self.size = len(arrays["rewards"])
        for key, rows in self.rows.items():
            rows[: self.size] = arrays[key]


def sim_state(env: gym.Env) -> tuple[np.ndarray, np.ndarray]:
    data = env.unwrapped.data
    return data.qpos.copy(), data.qvel.copy()


def run(
    env_id: str,
    seed: int,
    cfg: BehaviourConfig,
    output: Path,
    threads: int = 1,
    checkpoint_every: int = 10_000,
    checkpoint_dir: str | None = None,
) -> None:
    """Train the behaviour SAC of (`env_id`, `seed`) and write its folder (module docstring).

    Args:
        checkpoint_every: env steps between checkpoints, each saved at the next episode end
            (0: none).
        checkpoint_dir: their root (None: see `ombrl.checkpoint.checkpoint_root`).

    Raises:
        OmbrlError: see `check_settings`.
    """
    check_settings(env_id, cfg)
    setup(seed, threads)
    device = torch.device("cpu")
    env = gym.make(env_id)
    low, high = env.action_space.low, env.action_space.high
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    agent = SAC(obs_dim, act_dim, low, high, sac_config(cfg), device, seed)
    buffer = ReplayBuffer(cfg.env_steps, obs_dim, act_dim, device)
    generator = torch.Generator(device).manual_seed(seed)
    rng = np.random.default_rng(seed)
    recorder = Recorder(env, cfg.env_steps)
    snapshots: dict[str, Tensor] = {}
    records: list[dict] = []
    episode = 0
    checkpoint = job_checkpointer(
        checkpoint_dir,
        checkpoint_every,
        {"command": "behaviour", "env": env_id, "config": asdict(cfg)},
        seed,
        threads,
        output,
    )
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        agent.load_state_dict(subset(saved.tensors, "agent"))
        generator.set_state(saved.tensors["generator"])
        rng.bit_generator.state = saved.meta["rng"]
        recorder.restore({k: subset(saved.tensors, "rows")[k].numpy() for k in Recorder.FIELDS})
        snapshots = subset(saved.tensors, "snap")
        records, episode = saved.meta["records"], saved.meta["episode"]
        buffer.add(_batch(recorder.arrays()))
    last_saved = len(recorder)
    wanted = snapshot_steps(cfg)

    def snapshot(step: int) -> None:
        returns = evaluate(
            lambda o: agent.act(o, deterministic=True), env_id, cfg.eval_episodes, EVAL_SEED
        )
        snapshots.update(prefixed(_actor(agent), str(step)))
        records.append({"env_steps": step, "return": float(np.mean(returns))})
        records[-1]["return_std"] = float(np.std(returns))
        print(
            f"ombrl: {env_id} seed {seed}: env step {step}: return {records[-1]['return']:.1f}",
            file=sys.stderr,
            flush=True,
        )

    obs, _ = env.reset(seed=episode_seed(seed, episode))
    if not records:
        snapshot(0)
    for step in range(len(recorder), cfg.env_steps):
        if step < cfg.warmup:
            action = rng.uniform(low, high).astype(env.action_space.dtype)
        else:
            action = agent.act(obs, deterministic=False)
        state = sim_state(env)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        recorder.add(obs, action, reward, next_obs, terminated, truncated, state)
        buffer.add(_batch(recorder.arrays(step, step + 1)))
        obs = next_obs
        if step + 1 > cfg.warmup:
            agent.update(buffer.sample(cfg.batch_size, generator))
        if step + 1 in wanted:
            snapshot(step + 1)
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=episode_seed(seed, episode))
            if checkpoint is not None and step + 1 - last_saved >= checkpoint_every:
                checkpoint.save(
                    step + 1,
                    {
                        **prefixed(agent.state_dict(), "agent"),
                        "generator": generator.get_state(),
                        **prefixed(_tensors(recorder.arrays()), "rows"),
                        **prefixed(snapshots, "snap"),
                    },
                    {"rng": rng.bit_generator.state, "records": records, "episode": episode},
                )
                last_saved = step + 1
    env.close()
    own = {
        "random_return": _policy_return(env_id, snapshots, "0", cfg, seed),
        "expert_return": _policy_return(env_id, snapshots, str(cfg.env_steps), cfg, seed),
    }
    meta = {
        "env_id": env_id,
        "seed": seed,
        "config": asdict(cfg),
        "threads": threads,
        "snapshots": records,
        **own,
        "code_version": code_version(),
    }
    with staged_directory(output) as out:
        save_model(out, snapshots, meta, SNAPSHOTS)
        write_hdf5(out / REPLAY, cut(recorder.arrays()), {"env_id": env_id, "seed": seed})
    if checkpoint is not None:
        checkpoint.clear()


def _actor(agent: SAC) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in agent.actor.state_dict().items()}


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def _batch(arrays: dict[str, np.ndarray]) -> Batch:
    """Recorder rows as a replay batch (a terminal ends a transition; a timeout does not)."""
    keys = ("observations", "actions", "rewards", "next_observations", "terminals")
    return Batch(*(torch.as_tensor(arrays[k], dtype=torch.float32) for k in keys))


def cut(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The rows with their last one ending its episode (a timeout unless it is a terminal),
    as a time limit would end it, so a file never runs its last episode into nothing."""
    out = {k: v.copy() for k, v in arrays.items()}
    out["timeouts"][-1] = not out["terminals"][-1]
    return out


def load_snapshots(folder: Path) -> tuple[dict[str, Tensor], dict]:
    """A behaviour folder's snapshot tensors and meta (see the module docstring)."""
    return load_model(Path(folder), SNAPSHOTS)


def snapshot_actor(
    env_id: str, tensors: dict[str, Tensor], step: str, cfg: BehaviourConfig, seed: int
) -> SAC:
    """An agent acting with the actor kept at env step `step`; its sampling noise is seeded."""
    env = gym.make(env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    agent = SAC(
        obs_dim,
        act_dim,
        env.action_space.low,
        env.action_space.high,
        sac_config(cfg),
        torch.device("cpu"),
        seed,
    )
    env.close()
    agent.actor.load_state_dict(subset(tensors, step))
    return agent


def _policy_return(
    env_id: str, tensors: dict[str, Tensor], step: str, cfg: BehaviourConfig, seed: int
) -> float:
    """Mean return of a snapshot's stochastic policy (as the datasets act) over
    OWN_REF_EPISODES episodes."""
    agent = snapshot_actor(env_id, tensors, step, cfg, seed)
    env = gym.make(env_id)
    returns = episode_returns(
        env, lambda obs, _: agent.act(obs, deterministic=False), OWN_REF_EPISODES, OWN_REF_SEED
    )
    env.close()
    return float(returns.mean())
