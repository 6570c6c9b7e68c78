"""D4RL MuJoCo datasets: names, download into a cache, and reading HDF5 files as `Dataset`s.

D4RL publishes no checksums, so a download is trusted only after its structure checks out
(the expected keys, consistent lengths) and, when the server sent a Content-Length, after
the byte count matches. A file is moved into the cache atomically, so a cache entry is
either absent or complete.

Episode handling in `read_hdf5` (the rules every later stage relies on):

- an episode ends at `terminals | timeouts`; a row that is both counts as a terminal;
- v0 files have no `timeouts`: they are inferred from the 1000-step limit. Steps are counted
  from each episode's first row, so the 1000th row after a terminal (or after the previous
  timeout) is a timeout. D4RL's `qlearning_dataset` counts one step too many after a
  terminal; we do not copy that slip;
- without `next_observations`, next_obs[i] = obs[i + 1]. A timed-out step has no successor
  in the file (row i + 1 is the next episode's reset), so it is dropped, as is a last row of
  the file that ends no episode. A terminal step is kept with next_obs = obs[i + 1] (or
  obs[i] for the file's last row), as `qlearning_dataset` does: it is finite and never
  bootstrapped from, but it is not the true successor, so model fitting should skip terminal
  transitions when `metadata["next_observations"] == "shifted"`;
- in the returned Dataset every episode's last transition has `terminals` or `timeouts`
  set, including an episode cut short by dropped rows or by the end of the file.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import BinaryIO

import h5py
import numpy as np
from tqdm import tqdm

from ombrl.data.dataset import Dataset
from ombrl.data.scores import D4RL_REF_SCORES
from ombrl.errors import OmbrlError

BASE_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl/"
#: Environment variable that replaces BASE_URL (a mirror, or a local server in tests).
BASE_URL_ENV = "OMBRL_D4RL_URL"
#: Environment variable naming the folder D4RL downloads go to.
DATA_DIR_ENV = "OMBRL_DATA_DIR"

ENVS = ("hopper", "halfcheetah", "walker2d", "ant")
QUALITIES = ("random", "medium", "medium-replay", "medium-expert", "expert", "full-replay")
VERSIONS = ("v0", "v1", "v2")
#: Gymnasium environments with the MuJoCo models D4RL's data came from (see DESIGN.md).
GYM_IDS = {
    "hopper": "Hopper-v4",
    "halfcheetah": "HalfCheetah-v4",
    "walker2d": "Walker2d-v4",
    "ant": "Ant-v4",
}

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")
#: Episode limit of the D4RL MuJoCo tasks, used to infer v0 timeouts.
V0_MAX_EPISODE_STEPS = 1000

_NAME_RE = re.compile(r"^([a-z0-9]+)-([a-z-]+)-(v\d+)$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class D4RLName:
    """A parsed D4RL MuJoCo dataset name such as "hopper-medium-replay-v2"."""

    env: str
    quality: str
    version: str

    def __str__(self) -> str:
        return f"{self.env}-{self.quality}-{self.version}"

    @property
    def gym_id(self) -> str:
        """Gymnasium id to evaluate policies trained on this dataset."""
        return GYM_IDS[self.env]


def parse_name(name: str) -> D4RLName:
    """Parse a D4RL MuJoCo dataset name.

    Raises:
        OmbrlError: the name is not `{env}-{quality}-{version}` with known parts
            (full-replay exists only for v1 and v2).
    """
    match = _NAME_RE.match(name)
    if match:
        parsed = D4RLName(*match.groups())
        known = parsed.env in ENVS and parsed.quality in QUALITIES and parsed.version in VERSIONS
        if known and not (parsed.quality == "full-replay" and parsed.version == "v0"):
            return parsed
    raise OmbrlError(
        f"unknown D4RL dataset {name!r}: expected {{env}}-{{quality}}-{{version}} with env in "
        f"{'|'.join(ENVS)}, quality in {'|'.join(QUALITIES)}, version in {'|'.join(VERSIONS)} "
        "(full-replay only for v1/v2)"
    )


def server_path(name: str | D4RLName) -> str:
    """Where the server keeps a D4RL dataset, relative to its base URL.

    v1/v2: `gym_mujoco_{version}/{env}_{quality with _}-{version}.hdf5`; v0:
    `gym_mujoco/{env}_{quality with _}.hdf5`, except medium-replay, published as
    `{env}_mixed.hdf5` (walker2d: `walker_mixed.hdf5`).
    """
    parsed = parse_name(name) if isinstance(name, str) else name
    quality = parsed.quality.replace("-", "_")
    if parsed.version == "v0":
        if parsed.quality == "medium-replay":
            env = "walker" if parsed.env == "walker2d" else parsed.env
            return f"gym_mujoco/{env}_mixed.hdf5"
        return f"gym_mujoco/{parsed.env}_{quality}.hdf5"
    return f"gym_mujoco_{parsed.version}/{parsed.env}_{quality}-{parsed.version}.hdf5"


def dataset_url(name: str | D4RLName) -> str:
    """Download URL of a D4RL dataset (`server_path`), under $OMBRL_D4RL_URL when set."""
    base = os.environ.get(BASE_URL_ENV) or BASE_URL
    return base.rstrip("/") + "/" + server_path(name)


def _server_stems() -> dict[str, D4RLName]:
    """Every D4RL file name the server uses (and so the d4rl package caches), by stem."""
    names = [
        D4RLName(env, quality, version)
        for env in ENVS
        for quality in QUALITIES
        for version in VERSIONS
        if not (quality == "full-replay" and version == "v0")
    ]
    return {Path(server_path(name)).stem: name for name in names}


SERVER_STEMS = _server_stems()


def parse_file_stem(stem: str) -> D4RLName | None:
    """The D4RL dataset a file stem names (`hopper-medium-v2` or the server's
    `hopper_medium-v2`, `hopper_medium`, `walker_mixed`), or None."""
    try:
        return parse_name(stem)
    except OmbrlError:
        return SERVER_STEMS.get(stem)


def download(name: str, cache_dir: Path, timeout: float = 60) -> Path:
    """Return the cached file of a D4RL dataset, downloading it first if needed.

    Args:
        name: D4RL name, e.g. "hopper-medium-v2".
        cache_dir: folder holding `<name>.hdf5` (or the server's file name, as the d4rl
            package caches it: `hopper_medium-v2.hdf5`); created if missing.
        timeout: seconds to wait for the server on connect and on each read.

    Returns:
        The cached file, checked to be a readable D4RL file.

    Raises:
        OmbrlError: bad name, unreachable server or HTTP error, truncated or invalid
            download (nothing is left in the cache in those cases).
    """
    parsed = parse_name(name)
    cache_dir = Path(cache_dir)
    target = cache_dir / f"{parsed}.hdf5"
    served = cache_dir / Path(server_path(parsed)).name  # as the d4rl package caches it
    for cached in (target, served):
        if cached.is_file():
            try:
                check_hdf5(cached)
                return cached
            except OmbrlError as err:
                print(f"ombrl: cached {err}; downloading it again", file=sys.stderr)
    url = dataset_url(parsed)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=f".{parsed}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            received, expected = _fetch(url, out, timeout, target)
        if expected is not None and received != expected:
            raise OmbrlError(
                f"download of {url} is truncated ({received} of {expected} bytes); "
                f"try again or place the file by hand at {target}"
            )
        try:
            check_hdf5(tmp)
        except OmbrlError as err:
            raise OmbrlError(
                f"download of {url} is not a valid D4RL file ({err}); "
                f"try again or place the file by hand at {target}"
            ) from None
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _fetch(url: str, out: BinaryIO, timeout: float, target: Path) -> tuple[int, int | None]:
    """Stream `url` into `out`; return (bytes received, Content-Length or None)."""
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            with tqdm(
                total=expected, unit="B", unit_scale=True, desc=target.name, file=sys.stderr
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        raise OmbrlError(
            f"cannot download {url} (HTTP {err.code}); place the file by hand at {target}"
        ) from None
    except (urllib.error.URLError, HTTPException, OSError) as err:
        reason = getattr(err, "reason", None) or err
        reason = " ".join(str(reason).split()) or type(err).__name__
        raise OmbrlError(
            f"cannot download {url} ({reason}); place the file by hand at {target}"
        ) from None
    return received, expected


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file, read in chunks (D4RL files reach ~1 GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_hdf5(path: Path) -> int:
    """Check that `path` is a D4RL-format HDF5 file and return its number of rows.

    Raises:
        OmbrlError: not a file, not HDF5, a required key missing, or inconsistent shapes.
    """
    with _open(Path(path)) as handle:
        return _check_structure(handle, Path(path))


def read_hdf5(
    path: Path,
    env_id: str | None = None,
    drop_nonfinite: bool = False,
    need_env: bool = True,
) -> Dataset:
    """Read a D4RL-format HDF5 file as transitions that never cross an episode boundary.

    Args:
        path: the file; its stem names the D4RL dataset when it is one (our cache layout
            `hopper-medium-v2` or the server's `hopper_medium-v2`, `hopper_mixed`, ...).
        env_id: gymnasium id to record (`--env`); default: the file's `metadata/env_id`,
            else the D4RL environment named by the file stem.
        drop_nonfinite: drop every episode holding a NaN or infinite value (and say how
            many on stderr) instead of refusing the file.
        need_env: False for stages that never act in the environment (inspect, ensemble
            fitting): an unknown environment is then recorded as None.

    Returns:
        A Dataset of N' <= N rows (see the module docstring for the rules), with
        observations/next_observations N' x obs_dim and actions N' x act_dim float32.

    Raises:
        OmbrlError: unreadable file, missing key, inconsistent lengths, a non-finite value
            (naming the key and first bad row), or unknown env_id where one is needed.
    """
    path = Path(path)
    with _open(path) as handle:
        _check_structure(handle, path)
        observations = handle["observations"][:].astype(np.float32)
        actions = handle["actions"][:].astype(np.float32)
        rewards = handle["rewards"][:].astype(np.float32)
        terminals = handle["terminals"][:].astype(bool)
        timeouts = handle["timeouts"][:].astype(bool) if "timeouts" in handle else None
        next_observations = (
            handle["next_observations"][:].astype(np.float32)
            if "next_observations" in handle
            else None
        )
        file_meta = _read_metadata(handle)

    timeouts_inferred = timeouts is None
    if timeouts is None:
        timeouts = infer_timeouts(terminals, V0_MAX_EPISODE_STEPS)
    arrays = {"observations": observations, "actions": actions, "rewards": rewards}
    if next_observations is not None:
        arrays["next_observations"] = next_observations
    keep = finite_rows(arrays, terminals | timeouts, path, drop_nonfinite)
    if keep is not None:
        observations, actions, rewards = observations[keep], actions[keep], rewards[keep]
        terminals, timeouts = terminals[keep], timeouts[keep]
        if next_observations is not None:
            next_observations = next_observations[keep]
    rows, next_obs, terminals_out, timeouts_out, episode_ids = split_episodes(
        observations, terminals, timeouts, next_observations
    )
    if len(rows) == 0:
        raise OmbrlError(f"{path}: no complete transition (every row was dropped)")

    d4rl_name = parse_file_stem(path.stem)
    env = env_id or file_meta.get("env_id") or (d4rl_name.gym_id if d4rl_name else None)
    if not env and need_env:
        raise OmbrlError(
            f"{path}: unknown environment: no metadata/env_id and {path.stem!r} is not a "
            "D4RL name; pass --env ENV_ID (e.g. --env Hopper-v4)"
        )
    ref_min, ref_max = D4RL_REF_SCORES[d4rl_name.env] if d4rl_name else (None, None)
    metadata = {
        **file_meta,
        "source": str(d4rl_name) if d4rl_name else str(path),
        "timeouts_inferred": timeouts_inferred,
        "next_observations": "shifted" if next_observations is None else "file",
    }
    return Dataset(
        observations=observations[rows],
        actions=actions[rows],
        rewards=rewards[rows],
        next_observations=next_obs,
        terminals=terminals_out,
        timeouts=timeouts_out,
        episode_ids=episode_ids,
        env_id=str(env) if env else None,
        ref_min_score=_float_or(file_meta.get("ref_min_score"), ref_min),
        ref_max_score=_float_or(file_meta.get("ref_max_score"), ref_max),
        checksum=file_sha256(path),
        metadata=metadata,
    )


def finite_rows(
    arrays: dict[str, np.ndarray], ends: np.ndarray, path: Path, drop: bool
) -> np.ndarray | None:
    """Check that every value is finite; with `drop`, the rows of the episodes that are.

    Args:
        arrays: the file's float arrays by key, N rows each.
        ends: N bool, the rows that end an episode (terminals | timeouts).
        path: the file, for messages.
        drop: drop the affected episodes whole instead of refusing the file.

    Returns:
        None when every value is finite, else an N bool mask of the rows kept.

    Raises:
        OmbrlError: a non-finite value (without `drop`: naming the key, first bad row and
            value; with it: when no episode is left).
    """
    bad = np.zeros(len(ends), dtype=bool)
    for key, array in arrays.items():
        rows = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
        if rows.any() and not drop:
            row = int(np.flatnonzero(rows)[0])
            value = array[row] if array.ndim == 1 else array[row][~np.isfinite(array[row])][0]
            raise OmbrlError(
                f"{path}: key {key!r} has a non-finite value ({value}) at row {row} "
                f"({int(rows.sum())} rows in all); fix the file or pass --drop-nonfinite to "
                "drop the affected episodes"
            )
        bad |= rows
    if not bad.any():
        return None
    episode = np.concatenate([[0], np.cumsum(ends[:-1])])
    dropped = np.unique(episode[bad])
    keep = ~np.isin(episode, dropped)
    if not keep.any():
        raise OmbrlError(f"{path}: every episode holds a non-finite value; nothing is left")
    print(
        f"ombrl: warning: {path}: dropped {len(dropped)} of {episode[-1] + 1} episodes "
        f"({int((~keep).sum())} rows) holding non-finite values (--drop-nonfinite)",
        file=sys.stderr,
    )
    return keep


def infer_timeouts(terminals: np.ndarray, max_steps: int) -> np.ndarray:
    """Timeouts of a file without them: every `max_steps`-th row of an episode.

    Args:
        terminals: N bool.
        max_steps: the environment's episode limit.

    Returns:
        N bool, true at rows 999, 1999, ... counted from each episode's first row (an episode
        starts at row 0 and after each terminal; a timeout restarts the count implicitly).
    """
    rows = np.arange(len(terminals))
    starts = np.zeros(len(terminals), dtype=np.int64)
    starts[1:] = np.where(terminals[:-1], rows[1:], 0)
    position = rows - np.maximum.accumulate(starts)
    return ((position + 1) % max_steps == 0) & ~terminals


def split_episodes(
    observations: np.ndarray,
    terminals: np.ndarray,
    timeouts: np.ndarray,
    next_observations: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Turn file rows into transitions that stay within their episode.

    Args:
        observations: N x obs_dim.
        terminals: N bool.
        timeouts: N bool (a row set in both counts as terminal).
        next_observations: N x obs_dim from the file, or None to shift `observations`.

    Returns:
        (rows, next_observations, terminals, timeouts, episode_ids): the kept row indices
        (N'), their N' x obs_dim successors, N' bool flags where every episode's last
        transition is terminal or timeout, and N' int64 episode ids numbered 0, 1, ...
    """
    timeouts = timeouts & ~terminals
    ends = terminals | timeouts
    if next_observations is None:
        next_observations = np.concatenate([observations[1:], observations[-1:]])
        keep = ~timeouts
        keep[-1] = terminals[-1]
    else:
        keep = np.ones(len(observations), dtype=bool)
    raw_episode = np.concatenate([[0], np.cumsum(ends[:-1])])
    rows = np.flatnonzero(keep)
    episode = raw_episode[rows]
    last = np.ones(len(rows), dtype=bool)
    last[:-1] = episode[1:] != episode[:-1]
    terminals_out = terminals[rows]
    episode_ids = np.concatenate([[0], np.cumsum(last[:-1])]).astype(np.int64)[: len(rows)]
    return rows, next_observations[rows], terminals_out, last & ~terminals_out, episode_ids


def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise OmbrlError(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        detail = " ".join(str(err).split())
        raise OmbrlError(f"{path} is not a readable HDF5 file ({detail})") from None


def _check_structure(handle: h5py.File, path: Path) -> int:
    """Check keys and shapes; return the number of rows."""
    for key in REQUIRED_KEYS:
        if not isinstance(handle.get(key), h5py.Dataset):
            raise OmbrlError(f"{path}: missing key {key!r} (required: {', '.join(REQUIRED_KEYS)})")
    n = handle["observations"].shape[0] if handle["observations"].ndim else 0
    if n == 0:
        raise OmbrlError(f"{path}: key 'observations' is empty")
    expected_ndim = {"observations": 2, "actions": 2, "rewards": 1, "terminals": 1}
    expected_ndim |= {"timeouts": 1, "next_observations": 2}
    for key, ndim in expected_ndim.items():
        if key not in handle:
            continue
        shape = handle[key].shape
        if len(shape) != ndim or shape[0] != n:
            raise OmbrlError(
                f"{path}: key {key!r} has shape {shape}, expected {n} rows and {ndim} dims "
                "(as 'observations')"
            )
    if (
        "next_observations" in handle
        and handle["next_observations"].shape[1:] != handle["observations"].shape[1:]
    ):
        raise OmbrlError(f"{path}: key 'next_observations' differs in shape from 'observations'")
    return n


def _read_metadata(handle: h5py.File) -> dict:
    """Scalar entries of the `metadata` group (attributes or 0-d datasets) as Python values.

    Arrays (D4RL stores the behaviour policy's weights there) are skipped.
    """
    group = handle.get("metadata")
    if not isinstance(group, h5py.Group):
        return {}
    items = dict(group.attrs.items())
    items |= {k: v[()] for k, v in group.items() if isinstance(v, h5py.Dataset) and v.shape == ()}
    out = {}
    for key, value in items.items():
        if isinstance(value, bytes):
            out[key] = value.decode()
        elif np.ndim(value) == 0:
            out[key] = value.item() if isinstance(value, np.generic) else value
    return out


def _float_or(value: object, default: float | None) -> float | None:
    return default if value is None else float(value)


def load_dataset(
    name_or_path: str,
    env_id: str | None = None,
    drop_nonfinite: bool = False,
    need_env: bool = True,
) -> Dataset:
    """A dataset from an HDF5 path, or a D4RL name fetched into the data directory
    (`$OMBRL_DATA_DIR`, else resources/datasets); the other arguments as `read_hdf5`'s."""
    path = Path(name_or_path)
    if path.suffix in (".hdf5", ".h5") or path.exists():
        if not path.is_file():
            raise OmbrlError(f"{path}: no such dataset file")
    else:
        parse_name(name_or_path)
        path = download(name_or_path, data_dir())
    return read_hdf5(path, env_id, drop_nonfinite, need_env)


def data_dir() -> Path:
    """Where D4RL downloads go: `$OMBRL_DATA_DIR`, else resources/datasets."""
    return Path(os.environ.get(DATA_DIR_ENV, "resources/datasets"))
