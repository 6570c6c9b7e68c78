"""Policy evaluation in the real gymnasium environment.

Episode i is reset with seed `seed + i`, so every policy of a study meets the same start
states. All episodes run side by side and the policy is called once per step on the batch of
still-running episodes: one forward pass instead of `episodes`, with the same result as
running them one after another (each environment is independent and actions are
deterministic).
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from ombrl.errors import OmbrlError

ActFn = Callable[[np.ndarray], np.ndarray]


def continuous_spaces(env_id: str) -> tuple[gym.spaces.Box, gym.spaces.Box]:
    """The observation and action spaces of `env_id`, which ombrl's learners can act in.

    Raises:
        OmbrlError: an id gymnasium does not know, or an environment whose observations or
            actions are not continuous vectors (CartPole-v1's actions are discrete).
    """
    try:
        env = gym.make(env_id)
    except gym.error.Error as err:
        raise OmbrlError(f"env: cannot make {env_id!r} ({err})") from err
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    for what, space in (("observations", obs_space), ("actions", act_space)):
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise OmbrlError(
                f"env: {env_id!r} has {type(space).__name__} {what}; ombrl needs continuous "
                "vectors (a 1-d Box), e.g. Pendulum-v1 or Hopper-v4"
            )
    return obs_space, act_space


def evaluate(act_fn: ActFn, env_id: str, episodes: int, seed: int) -> list[float]:
    """Undiscounted return of each of `episodes` episodes.

    Args:
        act_fn: deterministic policy, `B x obs_dim -> B x act_dim` numpy arrays; actions are
            clipped to the environment's bounds.
        env_id: gymnasium id, e.g. "InvertedPendulum-v5" (its own time limit applies).
        episodes: number of episodes.
        seed: episode i is reset with `seed + i`.

    Returns:
        One return per episode, in episode order.

    Raises:
        OmbrlError: an environment id gymnasium does not know.
    """
    if episodes < 1:
        raise OmbrlError(f"evaluation episodes: {episodes} must be at least 1")
    try:
        envs = [gym.make(env_id) for _ in range(episodes)]
    except gym.error.Error as err:
        raise OmbrlError(f"env: cannot make {env_id!r} ({err})") from err
    try:
        low, high = envs[0].action_space.low, envs[0].action_space.high
        obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
        returns = [0.0] * episodes
        running = list(range(episodes))
        while running:
            actions = np.clip(np.asarray(act_fn(obs[running])), low, high)
            still = []
            for i, action in zip(running, actions, strict=True):
                next_obs, reward, terminated, truncated, _ = envs[i].step(action)
                returns[i] += float(reward)
                obs[i] = next_obs
                if not (terminated or truncated):
                    still.append(i)
            running = still
    finally:
        for env in envs:
            env.close()
    return returns
