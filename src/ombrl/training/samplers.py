"""Where training batches come from: the dataset alone, the dataset mixed with model rollouts,
or (online) a replay buffer filled by acting in the environment.

A sampler is `update index -> (batch, statistics)` with `state`/`restore`, so the training
loop (`ombrl.training.loop`) checkpoints it like the agent. All randomness comes from the one
generator it is given.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from ombrl.agents.base import Agent
from ombrl.agents.buffer import Batch, ReplayBuffer
from ombrl.checkpoint import prefixed, subset
from ombrl.errors import OmbrlError
from ombrl.models.ensemble import DynamicsEnsemble
from ombrl.models.model_env import HALTING_KINDS, Pessimism, model_step, rollout
from ombrl.models.pessimism import RolloutConfig, resolved_numbers
from ombrl.models.uncertainty import member_indices
from ombrl.tasks import Task


class RealSampler:
    """Training batches of real transitions (model-free modes: bc, sac).

    Args:
        real: the dataset's transitions.
        batch_size: transitions per batch.
        generator: on the buffer's device; the only source of randomness.
    """

    def __init__(self, real: ReplayBuffer, batch_size: int, generator: torch.Generator) -> None:
        self.real, self.batch_size, self.generator = real, batch_size, generator

    def __call__(self, update: int) -> tuple[Batch, dict[str, float]]:
        """`update index -> (training batch, last rollout statistics)`."""
        return self.real.sample(self.batch_size, self.generator), {}

    def state(self) -> tuple[dict[str, Tensor], dict]:
        """What a checkpoint must hold to continue drawing the same batches."""
        return {"generator": self.generator.get_state()}, {}

    def restore(self, tensors: dict[str, Tensor], meta: dict) -> None:
        """Inverse of `state`."""
        self.generator.set_state(tensors["generator"])


class RolloutSampler(RealSampler):
    """Model-based batches: real transitions mixed with a model buffer of the current policy's
    rollouts, filled by one of two schemes (`rc.rollout_scheme`):

    - `rounds` (MBPO, MOPO): every `rollout_every` updates a round of `rollout_batch` rollouts
      of up to `rollout_length` steps; the buffer keeps the last `model_retain_epochs` rounds.
    - `persistent` (offline-model-based-rl's train.py and utils/virtual_rollouts.py):
      `persistent_rollouts` rollouts, each advanced one step per update; one that ends
      (terminal, HALT, a non-finite prediction) or reaches `rollout_length` steps is replaced
      by a fresh dataset state at the next update. The buffer keeps the last
      `model_buffer_size` transitions.

    Steps taken before update `random_updates` act uniformly at random within `action_bounds`
    (offline-model-based-rl's `random_steps`), not by the policy.

    Args:
        real: the dataset's transitions (also the rollouts' start states).
        batch_size: transitions per batch.
        generator: start states, member choice, model noise and batch draws.
        ensemble: the trained dynamics model.
        task: reward and termination functions of the environment.
        rc: rollout settings.
        pessimism: resolved pessimism (see `resolve_pessimism`).
        policy: `obs B x obs_dim -> act B x act_dim` (stochastic).
        action_bounds: low and high action (act_dim each), for the random start.
        random_updates: updates before which rollouts act at random.
    """

    def __init__(
        self,
        real: ReplayBuffer,
        batch_size: int,
        generator: torch.Generator,
        ensemble: DynamicsEnsemble,
        task: Task,
        rc: RolloutConfig,
        pessimism: Pessimism,
        policy: Callable[[Tensor], Tensor],
        action_bounds: tuple[Tensor, Tensor],
        random_updates: int = 0,
    ) -> None:
        super().__init__(real, batch_size, generator)
        self.ensemble, self.task, self.rc, self.policy = ensemble, task, rc, policy
        self.pessimism = pessimism
        self.members = member_indices(ensemble, rc.members)
        self.low, self.high = (b.to(real.device) for b in action_bounds)
        self.random_updates = random_updates
        if rc.rollout_scheme == "persistent":
            capacity = rc.model_buffer_size
        else:
            capacity = rc.model_retain_epochs * rc.rollout_batch * rc.rollout_length
        self.model = ReplayBuffer(capacity, real.obs.shape[1], real.act.shape[1], real.device)
        self.num_real = int(round(batch_size * rc.real_ratio))
        self.stats: dict[str, float] = {}
        # persistent: the live rollouts' states and their steps so far
        self.live_obs = real.obs[:0]
        self.live_steps = torch.zeros(0, dtype=torch.int64, device=real.device)

    def __call__(self, update: int) -> tuple[Batch, dict[str, float]]:
        rc, g = self.rc, self.generator
        if rc.rollout_scheme == "persistent":
            self._advance(update)
        elif update % rc.rollout_every == 0:
            n, device = len(self.real), self.real.device
            index = torch.randint(n, (rc.rollout_batch,), generator=g, device=device)
            transitions, stats = rollout(
                self.ensemble.predict,
                self.members,
                self.policy if update >= self.random_updates else self._random_policy,
                self.real.obs[index],
                rc.rollout_length,
                None if self.ensemble.predict_reward else self.task.reward,
                self.task.terminal,
                self.pessimism,
                rc.reward_source,
                g,
                rc.member_draw,
            )
            self.model.add(transitions)
            self.stats = {**stats, **resolved_numbers(self.pessimism)}
        if len(self.model) == 0:  # every model transition so far was non-finite
            return self.real.sample(self.batch_size, g), dict(self.stats)
        parts = [self.real.sample(self.num_real, g)] if self.num_real else []
        if self.batch_size > self.num_real:
            parts.append(self.model.sample(self.batch_size - self.num_real, g))
        return Batch.cat(parts), dict(self.stats)

    def _advance(self, update: int) -> None:
        """persistent: top the live rollouts up to `persistent_rollouts` with dataset states,
        advance each by one step into the buffer, and keep those that go on."""
        rc, g, device = self.rc, self.generator, self.real.device
        fresh = rc.persistent_rollouts - len(self.live_obs)
        if fresh > 0:
            index = torch.randint(len(self.real), (fresh,), generator=g, device=device)
            self.live_obs = torch.cat([self.live_obs, self.real.obs[index]])
            zeros = torch.zeros(fresh, dtype=torch.int64, device=device)
            self.live_steps = torch.cat([self.live_steps, zeros])
        policy = self.policy if update >= self.random_updates else self._random_policy
        step = model_step(
            self.ensemble.predict,
            torch.as_tensor(self.members, dtype=torch.long, device=device),
            self.live_obs,
            policy(self.live_obs),
            None if self.ensemble.predict_reward else self.task.reward,
            self.task.terminal,
            self.pessimism,
            rc.reward_source,
            g,
            rc.member_draw,
        )
        kept = step.batch.select(step.valid)
        self.model.add(kept)
        steps = self.live_steps + 1
        ended = ~step.valid | step.batch.terminal.bool() | (steps >= rc.rollout_length)
        count = max(len(kept), 1)
        stats = {
            "rollout_reward": float(kept.rew.mean()) if len(kept) else 0.0,
            "rollout_length": float(steps[ended].float().mean()) if ended.any() else 0.0,
            "rollout_terminal": float(kept.terminal.sum()) / len(steps),
        }
        if step.u is not None:
            stats["rollout_uncertainty"] = float(step.u[step.valid].sum()) / count
        if self.pessimism.kind in HALTING_KINDS:
            stats["rollout_halted"] = float((step.halt & step.valid).sum()) / len(steps)
        self.stats = {**stats, **resolved_numbers(self.pessimism)}
        self.live_obs, self.live_steps = step.batch.next_obs[~ended], steps[~ended]

    def _random_policy(self, obs: Tensor) -> Tensor:
        """Uniform random actions within the bounds, one row per observation."""
        shape = (obs.shape[0], self.low.shape[0])
        u = torch.rand(shape, generator=self.generator, device=obs.device)
        return self.low + u * (self.high - self.low)

    def state(self) -> tuple[dict[str, Tensor], dict]:
        tensors, meta = super().state()
        live = {"live_obs": self.live_obs, "live_steps": self.live_steps}
        return {**tensors, **live, **prefixed(self.model.state_dict(), "model")}, {
            "stats": self.stats
        }

    def restore(self, tensors: dict[str, Tensor], meta: dict) -> None:
        super().restore(tensors, meta)
        self.model.load_state_dict(subset(tensors, "model"))
        device = self.real.device
        self.live_obs = tensors["live_obs"].to(device)
        self.live_steps = tensors["live_steps"].to(device)
        self.stats = dict(meta["stats"])


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
        initial: transitions in the buffer before the first step (finetuning keeps part of
            the offline data); they count toward filling the first batch.
    """

    def __init__(
        self,
        env_id: str,
        agent: Agent,
        batch_size: int,
        capacity: int,
        warmup: int,
        seed: int,
        generator: torch.Generator,
        initial: Batch | None = None,
    ) -> None:
        kept = 0 if initial is None else len(initial)
        if warmup + kept < batch_size:
            raise OmbrlError(
                f"warmup: {warmup} steps and {kept} kept transitions cannot fill a batch of "
                f"{batch_size}"
            )
        super().__init__(
            ReplayBuffer(capacity + kept, agent.obs_dim, agent.act_dim, agent.device),
            batch_size,
            generator,
        )
        if initial is not None:
            self.real.add(initial)
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
