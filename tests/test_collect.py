"""Data collection with gymnasium MuJoCo and the scripted pendulum controllers."""

from __future__ import annotations

import gymnasium as gym
import h5py
import numpy as np
import pytest

from ombrl.data.collect import collect, episode_returns
from ombrl.data.controllers import make_policy
from ombrl.data.d4rl import read_hdf5
from ombrl.errors import OmbrlError

ENV = "InvertedPendulum-v5"
D4RL_KEYS = {"observations", "actions", "rewards", "next_observations", "terminals", "timeouts"}


def complete_episode_returns(ds) -> np.ndarray:
    """Returns of episodes that ended in the environment (not cut by the dataset's size)."""
    return ds.episode_returns()[:-1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("collect")
    return {
        "random": collect(ENV, "random", 400, 0, out / "random.hdf5"),
        "random_again": collect(ENV, "random", 400, 0, out / "sub" / "random_again.hdf5"),
        "random_seed1": collect(ENV, "random", 400, 1, out / "random_seed1.hdf5"),
        "expert": collect(ENV, "expert", 2500, 0, out / "expert.hdf5"),
        "medium": collect(ENV, "medium", 4000, 0, out / "medium.hdf5"),
    }


def test_file_has_d4rl_layout_and_metadata(files):
    with h5py.File(files["random"], "r") as f:
        assert D4RL_KEYS <= set(f)
        assert f["observations"].shape == (400, 4) and f["actions"].shape == (400, 1)
        assert f["observations"].dtype == np.float32 and f["rewards"].dtype == np.float32
        assert f["terminals"].dtype == bool and f["timeouts"].dtype == bool
        assert f["metadata/env_id"][()].decode() == ENV
        assert f["metadata/policy"][()].decode() == "random"
        assert f["metadata/seed"][()] == 0
        assert "code_version" in f["metadata"]
    assert not list(files["random"].parent.glob("*.part"))


def test_round_trip_through_read_hdf5(files):
    ds = read_hdf5(files["random"])
    with h5py.File(files["random"], "r") as f:
        for key in D4RL_KEYS:
            np.testing.assert_array_equal(getattr(ds, key), f[key][:])
    assert ds.env_id == ENV and len(ds) == 400
    assert ds.terminals[-1] or ds.timeouts[-1]  # the budget's end closes the last episode
    assert (np.abs(ds.actions) <= 3).all()
    # within an episode the next observation is the following row's observation
    inside = ~(ds.terminals | ds.timeouts)
    np.testing.assert_array_equal(
        ds.next_observations[:-1][inside[:-1]], ds.observations[1:][inside[:-1]]
    )
    assert ds.num_episodes > 20  # random actions drop the pole within a few steps


def test_reference_scores_in_metadata(files):
    refs = {(read_hdf5(p).ref_min_score, read_hdf5(p).ref_max_score) for p in files.values()}
    assert len(refs) == 1  # the same for every dataset of the environment
    ref_min, ref_max = refs.pop()
    assert ref_max == 1000.0  # the expert balances every reference episode to the time limit
    assert 0 < ref_min < 50


def test_same_seed_same_data_other_seed_other_data(files):
    a, b, c = (read_hdf5(files[k]) for k in ("random", "random_again", "random_seed1"))
    for key in D4RL_KEYS:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert a.checksum == b.checksum  # byte-identical files
    assert not np.array_equal(a.actions, c.actions)


def test_expert_balances_near_the_centre_and_beats_random(files):
    expert = read_hdf5(files["expert"])
    assert expert.timeouts.sum() == 3 and not expert.terminals.any()  # 1000, 1000, 500 cut
    assert np.abs(expert.observations[:, 0]).max() < 0.1  # cart stays near the centre
    random = read_hdf5(files["random"])
    assert complete_episode_returns(expert).mean() > 50 * complete_episode_returns(random).mean()


def test_medium_is_mediocre(files):
    medium = read_hdf5(files["medium"])
    returns = complete_episode_returns(medium)
    assert len(returns) >= 5
    assert 0.2 * 1000 <= returns.mean() <= 0.5 * 1000
    assert medium.terminals.sum() == len(returns)  # every complete episode fell


def test_action_noise_overrides_the_default(tmp_path):
    quiet = read_hdf5(collect(ENV, "medium", 300, 0, tmp_path / "q.hdf5", action_noise=0.0))
    noisy = read_hdf5(collect(ENV, "medium", 300, 0, tmp_path / "n.hdf5"))
    assert not np.array_equal(quiet.actions, noisy.actions)
    env = gym.make(ENV)
    policy = make_policy(ENV, "medium", env.action_space.low, env.action_space.high, 0.0)
    rng = np.random.default_rng(0)
    expected = np.stack([policy(obs, rng) for obs in quiet.observations])
    np.testing.assert_allclose(quiet.actions, expected, atol=1e-5)  # float32 obs: tiny diffs


def test_double_pendulum_controllers():
    env = gym.make("InvertedDoublePendulum-v5")
    low, high = env.action_space.low, env.action_space.high
    expert = episode_returns(env, make_policy(env.spec.id, "expert", low, high), 2, seed=3)
    medium = episode_returns(env, make_policy(env.spec.id, "medium", low, high), 3, seed=3)
    random = episode_returns(env, make_policy(env.spec.id, "random", low, high), 3, seed=3)
    assert expert.min() > 9000  # ~9.36 per step for all 1000 steps
    assert medium.mean() < 0.6 * expert.mean()
    assert random.mean() < 0.1 * medium.mean()


def test_unknown_env_policy_and_counts(tmp_path):
    with pytest.raises(OmbrlError, match="unknown env 'CartPole-v1'.*InvertedPendulum-v5"):
        collect("CartPole-v1", "random", 10, 0, tmp_path / "x.hdf5")
    with pytest.raises(OmbrlError, match="no policy 'expert' for 'Hopper-v5'.*InvertedPendulum-v5"):
        collect("Hopper-v5", "expert", 10, 0, tmp_path / "x.hdf5")
    with pytest.raises(OmbrlError, match="no policy 'best'"):
        collect(ENV, "best", 10, 0, tmp_path / "x.hdf5")
    with pytest.raises(OmbrlError, match="num_transitions"):
        collect(ENV, "random", 0, 0, tmp_path / "x.hdf5")
    with pytest.raises(OmbrlError, match="action_noise"):
        collect(ENV, "medium", 10, 0, tmp_path / "x.hdf5", action_noise=-1.0)
    assert list(tmp_path.iterdir()) == []
