"""The behaviour run's Recorder keeps its rows without allocating per step.

Why this and not the run's resident memory: a 200k-step Hopper behaviour run reached 11.5 GB
because each step's row, kept as a few small Python objects, landed on the C heap between the
SAC update's large freed temporaries, so glibc could neither reuse nor return that space (~60 KB
of resident memory per step; with `MALLOC_MMAP_THRESHOLD_` fixed the growth vanished). Showing
that growth takes ~1000 SAC updates (over 10 s); its cause, memory kept per recorded row, is
visible to tracemalloc exactly and in a second.
"""

from __future__ import annotations

import tracemalloc

import gymnasium as gym
import numpy as np

from ombrl.data import behaviour
from ombrl.data.behaviour import Recorder, sim_state

STEPS = 500
#: Bytes kept per recorded row; rows kept as Python objects cost ~380 here (the qpos and qvel
#: copies, list slots), and ~860 with the observations gymnasium allocates.
MAX_BYTES_PER_STEP = 20


def test_recording_a_step_keeps_no_new_memory():
    env = gym.make("Hopper-v5")
    recorder = Recorder(env, STEPS)
    rng = np.random.default_rng(0)
    low, high = env.action_space.low, env.action_space.high
    obs, _ = env.reset(seed=0)
    tracemalloc.start()
    try:
        for _ in range(STEPS):
            action = rng.uniform(low, high).astype(np.float32)
            state = sim_state(env)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            recorder.add(obs, action, reward, next_obs, terminated, truncated, state)
            obs = next_obs
            if terminated or truncated:
                obs, _ = env.reset()
        # Only what behaviour.py allocated: gymnasium and numpy keep a few bytes per step
        # of their own (a 48 B object in `np.clip` of Hopper's observation), not this module's.
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    env.close()
    ours = snapshot.filter_traces([tracemalloc.Filter(True, behaviour.__file__)])
    kept = sum(stat.size for stat in ours.statistics("filename"))
    assert len(recorder) == STEPS
    assert kept / STEPS < MAX_BYTES_PER_STEP, f"{kept / STEPS:.0f} bytes kept per recorded step"
