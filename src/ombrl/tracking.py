"""Where a job's numbers go: a CSV file beside its outputs and a run in MLflow.

CSV rows may carry different keys (evaluation rows add returns to training metrics); the header
is the union in first-seen order, written once at the end so the file is always rectangular.

MLflow's default store is one SQLite file shared by every job of a study. SQLite allows one
writer at a time, so parallel jobs meet "database is locked" and, when the file is new, race to
create its schema (half-created tables, "duplicate column"). Hence: the workflow creates the
store once (`ombrl tracking-init`) before any job, and every process creates or opens it under
an exclusive file lock; the URI carries a busy timeout; metrics are buffered and written in
batches; and a write that still meets a lock is retried with backoff. On a cluster, point
MLFLOW_TRACKING_URI at an MLflow server instead (SQLite on a network file system is not safe).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from ombrl.errors import OmbrlError

DEFAULT_TRACKING_URI = "sqlite:///results/mlflow.db"
BUSY_TIMEOUT_S = 60
RETRIES = 8
FLUSH_EVERY_S = 30.0
T = TypeVar("T")


class CsvLog:
    """Collects metric rows in memory and writes them as one CSV file."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def log(self, row: dict) -> None:
        self.rows.append(dict(row))

    def write(self, path: Path) -> None:
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.rows)


def write_json(path: Path, document: dict) -> None:
    """Pretty, key-sorted JSON (NaN written as null), so diffs between runs are readable."""

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    Path(path).write_text(json.dumps(clean(document), indent=2, sort_keys=True) + "\n")


@contextmanager
def staged_directory(directory: Path) -> Iterator[Path]:
    """Yield a scratch folder beside `directory`; move its files into `directory` on success.

    A job that fails leaves nothing behind in `directory` (no partial outputs); one that
    succeeds replaces each file atomically.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        yield scratch
        directory.mkdir(exist_ok=True)
        for item in scratch.iterdir():
            os.replace(item, directory / item.name)
    finally:
        for item in scratch.iterdir() if scratch.exists() else []:
            item.unlink()
        if scratch.exists():
            scratch.rmdir()


def resolve_tracking_uri(configured: str | None) -> str | None:
    """MLFLOW_TRACKING_URI wins over the configured URI; "none" switches tracking off.

    A SQLite URI gets a busy timeout, so a writer waits for the lock instead of failing.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    if uri is None or uri.lower() == "none":
        return None
    if uri.startswith("sqlite:///") and "timeout=" not in uri:
        uri += ("&" if "?" in uri else "?") + f"timeout={BUSY_TIMEOUT_S}"
        database = Path(uri.removeprefix("sqlite:///").split("?")[0])
        database.parent.mkdir(parents=True, exist_ok=True)
    return uri


def _retry(action: Callable[[], T], what: str) -> T:
    """Run `action`, retrying with backoff while the store reports a lock or a busy schema."""
    for attempt in range(RETRIES):
        try:
            return action()
        except Exception as error:  # mlflow wraps sqlalchemy errors in several types
            text = str(error).lower()
            transient = "locked" in text or "busy" in text or "already exists" in text
            if not transient or attempt == RETRIES - 1:
                raise OmbrlError(f"MLflow tracking ({what}): {error}".splitlines()[0]) from error
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@contextmanager
def _schema_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock beside a SQLite store while its schema may be created."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    database = Path(uri.removeprefix("sqlite:///").split("?")[0])
    with open(database.with_name(database.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def init_store(uri: str, experiments: list[str]) -> None:
    """Create the store's schema and the experiments once, before parallel jobs use them."""

    def create() -> None:
        client = _client(uri)
        for name in experiments:
            if client.get_experiment_by_name(name) is None:
                client.create_experiment(name)

    with _schema_lock(uri):
        _retry(create, f"creating {uri}")


class MlflowRun:
    """One MLflow run: params and tags at the start, metrics buffered, flushed in batches."""

    def __init__(self, uri: str, experiment: str, name: str, tags: dict, params: dict) -> None:
        from mlflow.entities import Param

        self.pending: list = []
        self.last_flush = time.monotonic()
        with _schema_lock(uri):
            self.client = _client(uri)
            found = _retry(lambda: self.client.get_experiment_by_name(experiment), "opening")
            if found is None:
                experiment_id = _retry(lambda: self.client.create_experiment(experiment), "opening")
            else:
                experiment_id = found.experiment_id

        def start():
            run = self.client.create_run(
                experiment_id, run_name=name, tags={k: str(v) for k, v in tags.items()}
            )
            flat = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
            for i in range(0, len(flat), 100):
                self.client.log_batch(run.info.run_id, params=flat[i : i + 100])
            return run.info.run_id

        self.run_id = _retry(start, f"starting a run in {experiment}")

    def log(self, row: dict, step: int) -> None:
        """Queue every finite number of `row` as a metric at `step`."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        for key, value in row.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                if math.isfinite(value):
                    self.pending.append(Metric(key, float(value), stamp, int(step)))
        if time.monotonic() - self.last_flush > FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        for i in range(0, len(batch), 1000):
            chunk = batch[i : i + 1000]
            _retry(lambda c=chunk: self.client.log_batch(self.run_id, metrics=c), "logging")
        self.last_flush = time.monotonic()

    def finish(self, status: str = "FINISHED") -> None:
        self.flush()
        _retry(lambda: self.client.set_terminated(self.run_id, status), "closing the run")


@contextmanager
def mlflow_run(
    uri: str | None, experiment: str, name: str, tags: dict, params: dict
) -> Iterator[MlflowRun | None]:
    """An MlflowRun (None when tracking is off) that is marked FAILED if the job fails."""
    if uri is None:
        yield None
        return
    run = MlflowRun(uri, experiment, name, tags, params)
    try:
        yield run
    except BaseException:
        try:
            run.finish("FAILED")
        except OmbrlError as error:
            print(f"ombrl: warning: {error}", file=sys.stderr)
        raise
    run.finish()
