"""Tracking: CSV logs, and MLflow runs from parallel jobs into one SQLite store without losses."""

import multiprocessing
import os

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ombrl.tracking import CsvLog, init_store, mlflow_run, resolve_tracking_uri

pytestmark = pytest.mark.slow

WRITERS = 4
ROWS = 40


def write_run(uri: str, writer: int) -> None:
    """One 'job': a run whose metrics are flushed after every row (the worst case for locks)."""
    with mlflow_run(uri, "stress", f"writer{writer}", {"writer": writer}, {"rows": ROWS}) as run:
        for step in range(ROWS):
            run.log({"loss": float(step * writer), "accuracy": 0.5}, step)
            run.flush()


@pytest.fixture(autouse=True)
def own_store(monkeypatch):
    """These tests name their own stores: the suite-wide MLFLOW_TRACKING_URI would win."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.mark.parametrize("initialised", [True, False])
def test_parallel_writers_lose_no_metric(tmp_path, initialised):
    uri = resolve_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    if initialised:
        init_store(uri, ["stress"])
    # Fresh interpreters, like separate jobs (and no fork of a process holding connections).
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=write_run, args=(uri, w)) for w in range(WRITERS)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=240)
    assert [p.exitcode for p in writers] == [0] * WRITERS

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("stress").experiment_id])
    assert len(runs) == WRITERS
    for run in runs:
        assert run.info.status == "FINISHED"
        writer = int(run.data.tags["writer"])
        history = client.get_metric_history(run.info.run_id, "loss")
        assert sorted((m.step, m.value) for m in history) == [
            (step, float(step * writer)) for step in range(ROWS)
        ]


def test_a_failing_job_marks_its_run_failed(tmp_path):
    uri = resolve_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(RuntimeError):
        with mlflow_run(uri, "jobs", "broken", {}, {}) as run:
            run.log({"loss": 1.0}, 0)
            raise RuntimeError("the job died")
    client = MlflowClient(tracking_uri=uri)
    (found,) = client.search_runs([client.get_experiment_by_name("jobs").experiment_id])
    assert found.info.status == "FAILED"
    assert [m.value for m in client.get_metric_history(found.info.run_id, "loss")] == [1.0]


def test_uri_resolution(tmp_path, monkeypatch):
    assert resolve_tracking_uri("none") is None
    uri = resolve_tracking_uri(f"sqlite:///{tmp_path}/sub/mlflow.db")
    assert uri.endswith("?timeout=60") and (tmp_path / "sub").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db") == "http://127.0.0.1:5000"


def test_csv_log_has_the_union_of_columns(tmp_path):
    log = CsvLog()
    log.log({"step": 0, "return": 1.0})
    log.log({"step": 1, "loss": 0.5, "return": 2.0})
    log.write(tmp_path / "log.csv")
    table = pd.read_csv(tmp_path / "log.csv")
    assert list(table.columns) == ["step", "return", "loss"]
    assert table["loss"].isna().tolist() == [True, False]
    assert "\r" not in (tmp_path / "log.csv").read_text()
    assert os.path.getsize(tmp_path / "log.csv") > 0
