"""Behaviour policies for collecting datasets: uniform random, and scripted controllers.

The scripted controllers are linear state feedback u = -K x on the pendulum's state. The
gains are discrete-time LQR solutions for the environment's own dynamics, linearised at the
upright rest state by central finite differences of one environment step (frame_skip
MuJoCo steps), with R = 1 and Q = diag(5, 50, 1, 1) (InvertedPendulum-v5) or
diag(1, 1, 1, 0.1, 0.1, 0.1) (InvertedDoublePendulum-v5, state [x, q1, q2, dx, dq1, dq2]).

`medium` is the expert with a systematic flaw plus Gaussian action noise: its cart-position
gain has the wrong sign, so the cart drifts until it hits the end of the rail and the pole
falls. A flaw (rather than noise alone) matters: behaviour cloning of a noisy expert
recovers the expert, so such data cannot tell offline methods apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ombrl.errors import OmbrlError

#: A behaviour policy: (observation obs_dim, rng) -> action act_dim, within the bounds.
Policy = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _pendulum_state(obs: np.ndarray) -> np.ndarray:
    """InvertedPendulum-v5 observes [cart x, pole angle, cart vel, pole ang vel]: the state."""
    return obs


def _double_pendulum_state(obs: np.ndarray) -> np.ndarray:
    """[x, q1, q2, dx, dq1, dq2] from InvertedDoublePendulum-v5's
    [x, sin q1, sin q2, cos q1, cos q2, dx, dq1, dq2, constraint force]."""
    angles = np.arctan2(obs[1:3], obs[3:5])
    return np.concatenate([obs[:1], angles, obs[5:8]])


@dataclass(frozen=True)
class _Scripted:
    """Gains and flaws of one environment's scripted controllers."""

    state: Callable[[np.ndarray], np.ndarray]
    gains: tuple[float, ...]  # K of u = -K x (expert)
    medium_position_gain: float  # factor on K[0] for `medium` (negative: wrong sign)
    medium_noise: float  # std of `medium`'s Gaussian action noise


SCRIPTED: dict[str, _Scripted] = {
    "InvertedPendulum-v5": _Scripted(
        state=_pendulum_state,
        gains=(-1.25913758, -10.19391451, -1.60480849, -1.67285268),
        medium_position_gain=-0.5,
        medium_noise=0.3,
    ),
    "InvertedDoublePendulum-v5": _Scripted(
        state=_double_pendulum_state,
        gains=(0.22878543, 1.55135135, 4.93478629, 0.30789927, 0.79849367, 0.75914348),
        medium_position_gain=-0.25,
        medium_noise=0.1,
    ),
}


def policy_names(env_id: str) -> tuple[str, ...]:
    """Behaviour policies available for `env_id` ("random" everywhere)."""
    return ("random", "medium", "expert") if env_id in SCRIPTED else ("random",)


def make_policy(
    env_id: str, policy: str, low: np.ndarray, high: np.ndarray, action_noise: float | None = None
) -> Policy:
    """Build a behaviour policy.

    Args:
        env_id: gymnasium id.
        policy: "random" (uniform in [low, high]), or "expert" / "medium" where scripted.
        low, high: action bounds, act_dim each.
        action_noise: std of Gaussian noise added to every action before clipping; None keeps
            the policy's own (0 for random and expert, the built-in noise for medium).

    Raises:
        OmbrlError: the policy is not available for env_id.
    """
    if policy not in policy_names(env_id):
        valid = ", ".join(f"{env}: {'|'.join(policy_names(env))}" for env in SCRIPTED)
        raise OmbrlError(
            f"no policy {policy!r} for {env_id!r}; valid: random for any MuJoCo env; {valid}"
        )
    if action_noise is not None and action_noise < 0:
        raise OmbrlError(f"action_noise must be >= 0, got {action_noise}")
    low = np.asarray(low, dtype=np.float64)
    high = np.asarray(high, dtype=np.float64)
    shape = low.shape
    if policy == "random":
        span = high - low

        def base(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            return low + span * rng.random(shape)

        default_noise = 0.0
    else:
        spec = SCRIPTED[env_id]
        gains = np.array(spec.gains)
        default_noise = 0.0
        if policy == "medium":
            gains[0] *= spec.medium_position_gain
            default_noise = spec.medium_noise
        state = spec.state

        def base(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            return np.full(shape, -(gains @ state(obs)))

    noise = default_noise if action_noise is None else action_noise

    # np.minimum/np.maximum rather than np.clip: a few microseconds less per step.
    def act(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        action = base(obs, rng)
        if noise:
            action += noise * rng.standard_normal(shape)
        return np.minimum(np.maximum(action, low), high)

    return act
