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

Tracking is best effort: the model and its CSV logs are the science, MLflow a copy of the
numbers. A store that cannot be reached or fails mid-run (full disk, server gone) gives one
warning line with the underlying cause; the job trains on and writes its outputs plus
`TRACKING_INCOMPLETE` beside them. A remote server gets a short connection timeout and few
retries, so an unreachable one costs seconds, not MLflow's default of minutes.
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
#: A remote store's HTTP settings unless the user set MLflow's own variables.
HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}
#: URI schemes a tracking store may have (an MLflow server, a SQLite file, a local folder).
URI_SCHEMES = ("sqlite:///", "http://", "https://", "file:", "databricks")
#: Written beside a job's outputs when its MLflow record is incomplete.
INCOMPLETE_MARKER = "TRACKING_INCOMPLETE"
T = TypeVar("T")


class CsvLog:
    """Collects metric rows in memory and writes them as one CSV file."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def log(self, row: dict) -> None:
        self.rows.append(dict(row))

    def write(self, path: Path) -> None:
        """Write the rows through a temporary file renamed into place (never half a file)."""
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        with atomic_file(Path(path), newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.rows)


@contextmanager
def atomic_file(path: Path, mode: str = "w", **kwargs) -> Iterator:
    """An open temporary file beside `path`, renamed to `path` when the block succeeds and
    removed when it fails (a full disk included)."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_output_dir(directory: Path, flag: str = "--output") -> None:
    """Before any work: `directory` is (or can be made) a writable folder.

    Raises:
        OmbrlError: it is an existing file, or its nearest existing folder cannot be
            written (read-only disk, permissions); checked by creating a scratch file there.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise OmbrlError(f"{flag} {directory}: is an existing file, not a folder")
    _check_writable(directory, flag)


def check_output_file(path: Path, flag: str) -> None:
    """Before any work: `path` can be written as a file (its folder exists and is writable).

    Raises:
        OmbrlError: `path` is a folder, or its folder is missing or cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise OmbrlError(f"{flag} {path}: is a folder, not a file")
    if not path.parent.is_dir():
        raise OmbrlError(f"{flag} {path}: folder {path.parent} does not exist")
    _check_writable(path.parent, flag)


def _check_writable(path: Path, flag: str) -> None:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OmbrlError(f"{flag} {path}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise OmbrlError(f"{flag} {path}: cannot write in {existing} ({err.strerror})") from None


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

    with atomic_file(Path(path)) as f:
        f.write(json.dumps(clean(document), indent=2, sort_keys=True) + "\n")


@contextmanager
def staged_directory(directory: Path) -> Iterator[Path]:
    """Yield a scratch folder beside `directory`; move its files into `directory` on success.

    A job that fails leaves nothing behind in `directory` (no partial outputs); one that
    succeeds replaces each file atomically. A write that fails (a full disk) is one
    OmbrlError naming the folder and the cause.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        yield scratch
        directory.mkdir(exist_ok=True)
        for item in scratch.iterdir():
            os.replace(item, directory / item.name)
    except OSError as err:
        raise OmbrlError(
            f"{directory}: cannot write the outputs ({err.strerror or err}); nothing written"
        ) from err
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
    unknown_scheme = "://" in uri and not uri.startswith(URI_SCHEMES)
    if unknown_scheme or (uri.startswith("sqlite:") and not uri.startswith("sqlite:///")):
        raise OmbrlError(
            f"tracking URI {uri!r}: expected sqlite:///PATH, http(s)://HOST:PORT, file:PATH, "
            "a folder, or none"
        )
    if uri.startswith(("http://", "https://")):
        for name, value in HTTP_SETTINGS.items():
            os.environ.setdefault(name, value)
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
                raise OmbrlError(f"MLflow tracking ({what}): {root_cause(error)}") from error
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def root_cause(error: BaseException) -> str:
    """The innermost cause of a chain of exceptions, in one line: MLflow wraps SQLAlchemy,
    which wraps sqlite3 or urllib3, and only the innermost says "database or disk is full"
    or "Connection refused"."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    text = " ".join(str(error).split("[SQL:")[0].split())
    return f"{type(error).__name__}: {text}"[:300]


#: Loggers that print a whole traceback (MLflow's SQL errors) or a line per HTTP retry for
#: failures this module reports itself, as one line with the cause.
_NOISY_LOGGERS = ("mlflow.store.db.utils", "urllib3.connectionpool")


def _client(uri: str):
    import logging

    from mlflow.tracking import MlflowClient

    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
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
    """One MLflow run: params and tags at the start, metrics buffered, flushed in batches.

    Best effort: the first failure (at the start or mid-run) is warned about once, with its
    cause, and every later call does nothing; `error` then holds the cause.
    """

    def __init__(self, uri: str, experiment: str, name: str, tags: dict, params: dict) -> None:
        self.pending: list = []
        self.last_flush = time.monotonic()
        self.error: str | None = None
        self.run_id: str | None = None
        self._guard(lambda: self._start(uri, experiment, name, tags, params))

    def _start(self, uri: str, experiment: str, name: str, tags: dict, params: dict) -> None:
        from mlflow.entities import Param

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

    def _guard(self, action: Callable[[], object]) -> None:
        """Run `action` unless tracking already failed; a failure becomes one warning."""
        if self.error is not None:
            return
        try:
            action()
        except Exception as error:  # whatever the store throws, training goes on
            cause = str(error) if isinstance(error, OmbrlError) else root_cause(error)
            self.error = cause
            self.pending = []
            print(
                f"ombrl: warning: tracking stopped, the job goes on without it: {cause}",
                file=sys.stderr,
            )

    def log(self, row: dict, step: int) -> None:
        """Queue every finite number of `row` as a metric at `step`."""
        if self.error is not None:
            return
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        for key, value in row.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                if math.isfinite(value):
                    self.pending.append(Metric(key, float(value), stamp, int(step)))
        if time.monotonic() - self.last_flush > FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        self._guard(self._flush)

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        for i in range(0, len(batch), 1000):
            chunk = batch[i : i + 1000]
            _retry(lambda c=chunk: self.client.log_batch(self.run_id, metrics=c), "logging")
        self.last_flush = time.monotonic()

    def finish(self, status: str = "FINISHED") -> None:
        self.flush()
        self._guard(
            lambda: _retry(
                lambda: self.client.set_terminated(self.run_id, status), "closing the run"
            )
        )


@contextmanager
def mlflow_run(
    uri: str | None, experiment: str, name: str, tags: dict, params: dict
) -> Iterator[MlflowRun | None]:
    """An MlflowRun (None when tracking is off) that is marked FAILED if the job fails.

    The run is closed (and its last metrics flushed) when the block ends, so a caller that
    writes `TRACKING_INCOMPLETE` (`write_tracking_marker`) after the block sees every failure.
    """
    if uri is None:
        yield None
        return
    run = MlflowRun(uri, experiment, name, tags, params)
    try:
        yield run
    except BaseException:
        run.finish("FAILED")
        raise
    run.finish()


def write_tracking_marker(directory: Path, run: MlflowRun | None) -> None:
    """Write `TRACKING_INCOMPLETE` (the cause) into a job's staged outputs when its MLflow
    record is incomplete, so a study's tracking gaps can be found with `find -name`."""
    if run is not None and run.error is not None:
        (Path(directory) / INCOMPLETE_MARKER).write_text(f"{run.error}\n")
