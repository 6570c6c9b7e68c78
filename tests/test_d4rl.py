"""D4RL names, URLs and HDF5 reading: episode splitting on files written by hand."""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from ombrl.data.d4rl import (
    dataset_url,
    infer_timeouts,
    parse_file_stem,
    parse_name,
    read_hdf5,
)
from ombrl.data.dataset import Dataset
from ombrl.data.inspect import summarize
from ombrl.data.scores import D4RL_REF_SCORES, normalized_score, reference_scores
from ombrl.errors import OmbrlError

BASE = "http://rail.eecs.berkeley.edu/datasets/offline_rl/"


def write_h5(path: Path, n: int, terminals=(), timeouts=(), next_obs=True, with_timeouts=True):
    """A D4RL-style file whose row i has observation [i, -i] and reward i."""
    obs = np.stack([np.arange(n), -np.arange(n)], axis=1).astype(np.float32)
    term = np.zeros(n, bool)
    term[list(terminals)] = True
    tout = np.zeros(n, bool)
    tout[list(timeouts)] = True
    with h5py.File(path, "w") as f:
        f["observations"] = obs
        f["actions"] = np.ones((n, 1), np.float32)
        f["rewards"] = np.arange(n, dtype=np.float32)
        f["terminals"] = term
        if with_timeouts:
            f["timeouts"] = tout
        if next_obs:
            f["next_observations"] = obs + 0.5  # marks "came from the file"
    return path


def rows_of(ds: Dataset) -> np.ndarray:
    return ds.observations[:, 0].astype(int)


def test_split_with_next_observations_keeps_every_row(tmp_path):
    ds = read_hdf5(write_h5(tmp_path / "a.hdf5", 10, terminals=[3], timeouts=[6]), env_id="X-v0")
    assert rows_of(ds).tolist() == list(range(10))
    np.testing.assert_array_equal(ds.next_observations, ds.observations + 0.5)
    assert np.flatnonzero(ds.terminals).tolist() == [3]
    # row 9 ends no episode in the file: cut by the end of the data, marked as a timeout
    assert np.flatnonzero(ds.timeouts).tolist() == [6, 9]
    assert ds.episode_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert ds.metadata["next_observations"] == "file"
    assert ds.metadata["timeouts_inferred"] is False


def test_split_without_next_observations_drops_steps_without_successor(tmp_path):
    path = write_h5(tmp_path / "b.hdf5", 10, terminals=[3], timeouts=[6], next_obs=False)
    ds = read_hdf5(path, env_id="X-v0")
    # row 6 (timeout) and row 9 (last row, episode open) have no successor in the file
    assert rows_of(ds).tolist() == [0, 1, 2, 3, 4, 5, 7, 8]
    successor = ds.next_observations[:, 0].astype(int).tolist()
    assert successor == [1, 2, 3, 4, 5, 6, 8, 9]  # the terminal row 3 uses obs[4]
    assert np.flatnonzero(ds.terminals).tolist() == [3]
    assert np.flatnonzero(ds.timeouts).tolist() == [5, 7]  # new last rows of their episodes
    assert ds.episode_ids.tolist() == [0, 0, 0, 0, 1, 1, 2, 2]
    assert ds.rewards.tolist() == [0, 1, 2, 3, 4, 5, 7, 8]
    assert ds.metadata["next_observations"] == "shifted"


def test_no_transition_crosses_an_episode_boundary(tmp_path):
    ends = [4, 9, 15, 22, 30]
    path = write_h5(
        tmp_path / "c.hdf5", 35, terminals=[9, 22], timeouts=[4, 15, 30], next_obs=False
    )
    ds = read_hdf5(path, env_id="X-v0")
    episode_of_row = np.searchsorted(ends, np.arange(35))  # file episode of each row
    src = rows_of(ds)
    dst = ds.next_observations[:, 0].astype(int)
    inside = ~ds.terminals
    assert (episode_of_row[src[inside]] == episode_of_row[dst[inside]]).all()
    assert (dst[inside] == src[inside] + 1).all()
    # every episode of the result ends with exactly one terminal or timeout flag
    last = np.r_[ds.episode_ids[1:] != ds.episode_ids[:-1], True]
    np.testing.assert_array_equal(last, ds.terminals | ds.timeouts)
    assert not (ds.terminals & ds.timeouts).any()
    assert ds.num_episodes == 6


def test_terminal_and_timeout_on_the_same_row_counts_as_terminal(tmp_path):
    ds = read_hdf5(write_h5(tmp_path / "d.hdf5", 6, terminals=[2], timeouts=[2]), env_id="X-v0")
    assert ds.terminals[2] and not ds.timeouts[2]


def test_timeout_is_not_terminal_terminal_last_row_is_kept(tmp_path):
    path = write_h5(tmp_path / "e.hdf5", 5, terminals=[4], timeouts=[1], next_obs=False)
    ds = read_hdf5(path, env_id="X-v0")
    assert rows_of(ds).tolist() == [0, 2, 3, 4]
    assert ds.timeouts.tolist() == [True, False, False, False]
    assert ds.terminals.tolist() == [False, False, False, True]
    assert ds.next_observations[-1, 0] == 4  # no row after the file's end: obs[i] itself
    assert np.isfinite(ds.next_observations).all()


def v0_file(path: Path, next_obs: bool) -> Path:
    # 5-step episode ending in a terminal, two 1000-step timed-out episodes, 7 open rows
    return write_h5(path, 2012, terminals=[4], next_obs=next_obs, with_timeouts=False)


def test_v0_timeouts_inferred_from_the_1000_step_limit(tmp_path):
    ds = read_hdf5(v0_file(tmp_path / "v0.hdf5", next_obs=False), env_id="X-v0")
    assert ds.metadata["timeouts_inferred"] is True
    dropped = sorted(set(range(2012)) - set(rows_of(ds).tolist()))
    assert dropped == [1004, 2004, 2011]  # rows 999 of episodes 1 and 2, and the open last row
    assert np.flatnonzero(ds.terminals).tolist() == [4]
    assert rows_of(ds)[ds.timeouts].tolist() == [1003, 2003, 2010]
    assert np.bincount(ds.episode_ids).tolist() == [5, 999, 999, 6]


def test_v0_with_next_observations_keeps_timed_out_steps(tmp_path):
    ds = read_hdf5(v0_file(tmp_path / "v0n.hdf5", next_obs=True), env_id="X-v0")
    assert len(ds) == 2012
    assert np.flatnonzero(ds.timeouts).tolist() == [1004, 2004, 2011]
    assert np.bincount(ds.episode_ids).tolist() == [5, 1000, 1000, 7]


def test_infer_timeouts_restarts_the_count_after_a_terminal():
    terminals = np.zeros(30, bool)
    terminals[[3, 12]] = True
    timeouts = infer_timeouts(terminals, max_steps=5)
    # episodes start at 0, 4, 13; a timeout also restarts the count
    assert np.flatnonzero(timeouts).tolist() == [8, 17, 22, 27]


def test_d4rl_name_sets_env_reference_scores_and_checksum(tmp_path):
    path = write_h5(tmp_path / "hopper-medium-v2.hdf5", 8, timeouts=[3])
    ds = read_hdf5(path)
    assert ds.env_id == "Hopper-v4"
    assert (ds.ref_min_score, ds.ref_max_score) == D4RL_REF_SCORES["hopper"]
    assert ds.checksum == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ds.metadata["source"] == "hopper-medium-v2"
    assert read_hdf5(path, env_id="Hopper-v5").env_id == "Hopper-v5"


def test_metadata_scalars_are_read_and_arrays_skipped(tmp_path):
    path = write_h5(tmp_path / "m.hdf5", 4)
    with h5py.File(path, "a") as f:
        meta = f.create_group("metadata")
        meta["env_id"] = "InvertedPendulum-v5"
        meta["ref_min_score"] = 5.5
        meta["ref_max_score"] = np.float32(1000.0)
        meta.attrs["policy"] = "medium"
        meta["policy_weights"] = np.zeros((3, 3))
        meta.create_group("policy")["fc0"] = np.zeros(2)
    ds = read_hdf5(path)
    assert ds.env_id == "InvertedPendulum-v5"
    assert (ds.ref_min_score, ds.ref_max_score) == (5.5, 1000.0)
    assert ds.metadata["policy"] == "medium"
    assert "policy_weights" not in ds.metadata


def test_unknown_environment_is_an_error(tmp_path):
    path = write_h5(tmp_path / "mystery.hdf5", 4)
    with pytest.raises(OmbrlError, match="mystery.hdf5.*env_id"):
        read_hdf5(path)


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda f: f.__delitem__("rewards"), "rewards"),
        (lambda f: f.__delitem__("terminals"), "terminals"),
        (
            lambda f: (f.__delitem__("actions"), f.create_dataset("actions", data=np.ones((9, 1)))),
            "actions",
        ),
        (
            lambda f: (
                f.__delitem__("timeouts"),
                f.create_dataset("timeouts", data=np.ones(11, bool)),
            ),
            "timeouts",
        ),
        (
            lambda f: (
                f.__delitem__("rewards"),
                f.create_dataset("rewards", data=np.ones((10, 2))),
            ),
            "rewards",
        ),
        (
            lambda f: (
                f.__delitem__("next_observations"),
                f.create_dataset("next_observations", data=np.ones((10, 3))),
            ),
            "next_observations",
        ),
    ],
)
def test_bad_structure_names_file_and_key(tmp_path, edit, key):
    path = write_h5(tmp_path / "bad.hdf5", 10)
    with h5py.File(path, "a") as f:
        edit(f)
    with pytest.raises(OmbrlError) as err:
        read_hdf5(path, env_id="X-v0")
    assert str(path) in str(err.value) and repr(key) in str(err.value)


def test_not_hdf5_and_missing_file_name_the_file(tmp_path):
    text = tmp_path / "notes.hdf5"
    text.write_text("not an hdf5 file\n")
    with pytest.raises(OmbrlError, match="notes.hdf5 is not a readable HDF5"):
        read_hdf5(text, env_id="X-v0")
    with pytest.raises(OmbrlError, match="absent.hdf5: no such file"):
        read_hdf5(tmp_path / "absent.hdf5", env_id="X-v0")


@pytest.mark.parametrize(
    ("name", "rel"),
    [
        ("hopper-medium-v2", "gym_mujoco_v2/hopper_medium-v2.hdf5"),
        ("hopper-medium-replay-v2", "gym_mujoco_v2/hopper_medium_replay-v2.hdf5"),
        ("halfcheetah-full-replay-v1", "gym_mujoco_v1/halfcheetah_full_replay-v1.hdf5"),
        ("ant-medium-expert-v2", "gym_mujoco_v2/ant_medium_expert-v2.hdf5"),
        ("hopper-medium-v0", "gym_mujoco/hopper_medium.hdf5"),
        ("hopper-medium-replay-v0", "gym_mujoco/hopper_mixed.hdf5"),
        ("halfcheetah-medium-replay-v0", "gym_mujoco/halfcheetah_mixed.hdf5"),
        ("walker2d-medium-replay-v0", "gym_mujoco/walker_mixed.hdf5"),
        ("walker2d-medium-expert-v0", "gym_mujoco/walker2d_medium_expert.hdf5"),
        ("walker2d-random-v0", "gym_mujoco/walker2d_random.hdf5"),
    ],
)
def test_dataset_url(name, rel, monkeypatch):
    monkeypatch.delenv("OMBRL_D4RL_URL", raising=False)
    assert dataset_url(name) == BASE + rel
    assert str(parse_name(name)) == name
    # A file under its server name (as the d4rl package caches it) is the same dataset.
    assert parse_file_stem(Path(rel).stem) == parse_name(name)


def test_dataset_url_base_override(monkeypatch):
    monkeypatch.setenv("OMBRL_D4RL_URL", "http://127.0.0.1:9/mirror")
    assert (
        dataset_url("walker2d-medium-replay-v0")
        == "http://127.0.0.1:9/mirror/gym_mujoco/walker_mixed.hdf5"
    )


def test_parse_name_parts():
    parsed = parse_name("walker2d-medium-expert-v0")
    assert (parsed.env, parsed.quality, parsed.version) == ("walker2d", "medium-expert", "v0")
    assert parsed.gym_id == "Walker2d-v4"


@pytest.mark.parametrize(
    "name",
    [
        "hopper-medium",
        "cartpole-medium-v2",
        "hopper-full-replay-v0",
        "hopper-medium-v3",
        "Hopper-medium-v2",
        "hopper-good-v2",
    ],
)
def test_parse_name_rejects(name):
    with pytest.raises(OmbrlError, match=f"unknown D4RL dataset '{name}'.*medium-replay"):
        parse_name(name)


def test_normalized_score_and_reference_scores(tmp_path):
    assert normalized_score(-20.0, -20.0, 180.0) == 0.0
    assert normalized_score(180.0, -20.0, 180.0) == 100.0
    assert normalized_score(80.0, -20.0, 180.0) == 50.0
    with pytest.raises(OmbrlError):
        normalized_score(1.0, 2.0, 2.0)
    ds = read_hdf5(write_h5(tmp_path / "w.hdf5", 4), env_id="Walker2d-v5")
    assert reference_scores(ds) == D4RL_REF_SCORES["walker2d"]  # D4RL fallback by family
    ds.ref_max_score = 10.0
    assert reference_scores(ds) == (D4RL_REF_SCORES["walker2d"][0], 10.0)  # own value wins
    ds.env_id = "Swimmer-v5"
    ds.ref_min_score = None
    with pytest.raises(OmbrlError, match="Swimmer-v5"):
        reference_scores(ds)


def test_summarize(tmp_path):
    path = write_h5(tmp_path / "s.hdf5", 10, terminals=[3], timeouts=[6])
    summary = summarize(read_hdf5(path, env_id="X-v0"))
    # episodes: rows 0-3 (return 6), 4-6 (15), 7-9 (24)
    assert summary["transitions"] == 10 and summary["episodes"] == 3
    assert (summary["obs_dim"], summary["act_dim"]) == (2, 1)
    assert (summary["return_min"], summary["return_mean"], summary["return_max"]) == (6, 15, 24)
    assert summary["env_id"] == "X-v0" and len(summary["checksum"]) == 64
    assert summary["ref_min_score"] is None
