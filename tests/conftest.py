"""Suite-wide settings."""

import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def tracking_store(tmp_path_factory):
    """Every `ombrl` run of the tests logs to one throwaway MLflow store, never the checkout's."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if before is None:
        del os.environ["MLFLOW_TRACKING_URI"]
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small models run as fast on one thread, and two threads slow ~10x when the 2 cores are
    shared with other processes (OpenMP threads wait on each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
