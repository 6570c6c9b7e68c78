"""Online SAC: the same agent and training loop as the offline modes, learning by acting.

Why it is here: before trusting an offline result, a researcher checks that the learner itself
learns when it may collect its own data, and online SAC on the same environment is the
reference an offline score is read against. Only the source of batches differs from the
offline `sac` mode: `EnvSampler` takes one step in the environment with the current policy
before each update (after `warmup` steps of uniform random actions), stores it in a replay
buffer and draws the batch from there. Evaluation, metrics and progress are `run_updates`'s.

Same seed, same numbers: the environment is reset with the seed, random actions come from a
numpy generator seeded with it, policy noise and batches from torch generators seeded with
it. Online runs write no checkpoints: a gymnasium environment's state (simulator, random
generator, time-limit counter) has no portable way to be saved and restored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import gymnasium as gym
import numpy as np
import torch

from ombrl.agents.buffer import Batch, ReplayBuffer
from ombrl.agents.sac import SAC
from ombrl.errors import OmbrlError
from ombrl.policies import (
    Evaluation,
    PolicyConfig,
    RealSampler,
    make_agent,
    policy_config,
    run_updates,
)


class EnvSampler(RealSampler):
    """Batches from a replay buffer that grows by one environment step per update.

    Args:
        env_id: gymnasium id.
        agent: acts (stochastically) once `warmup` random steps are in the buffer.
        batch_size: transitions per batch.
        capacity: replay buffer size (the oldest transitions go first).
        warmup: uniform random steps taken before the first update.
        seed: resets the environment and seeds the random actions.
        generator: draws the batches, on the agent's device.
    """

    def __init__(
        self,
        env_id: str,
        agent: SAC,
        batch_size: int,
        capacity: int,
        warmup: int,
        seed: int,
        generator: torch.Generator,
    ) -> None:
        if warmup < batch_size:
            raise OmbrlError(f"warmup: {warmup} steps cannot fill a batch of {batch_size}")
        super().__init__(
            ReplayBuffer(capacity, agent.obs_dim, agent.act_dim, agent.device),
            batch_size,
            generator,
        )
        self.env, self.agent, self.warmup = gym.make(env_id), agent, warmup
        self.rng = np.random.default_rng(seed)
        self.obs = self.env.reset(seed=seed)[0]
        self.episode_return = 0.0
        self.finished: list[float] = []  # returns of the last ten training episodes
        for _ in range(warmup):
            self._step(self.rng.uniform(self.env.action_space.low, self.env.action_space.high))

    def __call__(self, update: int) -> tuple[Batch, dict[str, float]]:
        """One policy step into the buffer, then a batch, the environment steps so far and the
        mean return of the last ten finished training episodes (`train_return`, once one has)."""
        self._step(self.agent.act(self.obs, deterministic=False))
        batch, _ = super().__call__(update)
        stats = {"env_steps": float(self.warmup + update + 1)}
        if self.finished:
            stats["train_return"] = float(np.mean(self.finished))
        return batch, stats

    def _step(self, action: np.ndarray) -> None:
        next_obs, reward, terminated, truncated, _ = self.env.step(action)
        self.real.add(
            Batch(
                *(
                    torch.as_tensor(np.asarray(x), dtype=torch.float32)[None]
                    for x in (self.obs, action, reward)
                ),
                torch.as_tensor(next_obs, dtype=torch.float32)[None],
                torch.tensor([float(terminated)]),
            )
        )
        self.episode_return += float(reward)
        self.obs = next_obs
        if terminated or truncated:
            self.finished = [*self.finished[-9:], self.episode_return]
            self.episode_return = 0.0
            self.obs = self.env.reset()[0]


def train_online(
    env_id: str,
    cfg: PolicyConfig | Mapping,
    warmup: int,
    seed: int,
    device: torch.device | str,
    evaluation: Evaluation,
    on_eval: Callable[[dict], None],
    progress: bool,
) -> SAC:
    """Train SAC by acting in `env_id`: `warmup` random steps, then one step per update.

    Args:
        env_id: gymnasium id, e.g. "Pendulum-v1".
        cfg: the `sac` mode's config, or its parameter dict (`steps` counts updates).
        warmup: random steps before the first update (at least a batch).
        seed: every random number derives from it.
        device: "cpu", "cuda" or a torch.device.
        evaluation: when and how to evaluate the deterministic policy.
        on_eval: receives each evaluation record, as in `train_policy`, with `env_steps` and
            `train_return` (mean of the last ten finished training episodes) added.
        progress: show a tqdm bar.

    Returns:
        The trained agent.
    """
    if not isinstance(cfg, PolicyConfig):
        cfg = policy_config("sac", cfg)
    device = torch.device(device)
    torch.manual_seed(seed)
    agent = make_agent("sac", cfg, env_id, device, seed)
    generator = torch.Generator(device).manual_seed(seed)
    capacity = warmup + cfg.steps
    sampler = EnvSampler(env_id, agent, cfg.agent.batch_size, capacity, warmup, seed, generator)
    try:
        run_updates(
            agent,
            sampler,
            cfg.steps,
            env_id,
            evaluation,
            on_eval,
            progress,
            f"online sac seed {seed}",
        )
    finally:
        sampler.env.close()
    return agent
