"""The ensemble-loss figure notebook, executed by papermill on real `fit_ensemble` metrics."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from study_runner import papermill

from ombrl.data.dataset import Dataset
from ombrl.models.ensemble import DynamicsEnsemble
from ombrl.models.fit import FitConfig, fit_ensemble
from ombrl.tracking import CsvLog

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = 3


def toy_dataset(n: int = 300) -> Dataset:
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, 3)).astype(np.float32)
    act = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    next_obs = (obs + 0.1 * np.tanh(obs) * act).astype(np.float32)
    return Dataset(
        observations=obs,
        actions=act,
        rewards=np.zeros(n, np.float32),
        next_observations=next_obs,
        terminals=np.zeros(n, bool),
        timeouts=np.arange(n) % 50 == 49,
        episode_ids=np.arange(n) // 50,
        env_id="Toy-v0",
    )


def write_metrics(path: Path, probabilistic: bool) -> None:
    """Train a tiny ensemble for a few epochs; write its history as train-ensemble does."""
    torch.manual_seed(0)
    model = DynamicsEnsemble(3, 1, [16, 16], MEMBERS, probabilistic, "swish", False)
    cfg = FitConfig(
        fit_epochs=6,
        batch_size=64,
        lr=3e-3,
        weight_decay=0.0,
        holdout_ratio=0.2,
        holdout_by="transition",
        patience=0,
        scheduler_gamma=None,
        bootstrap=True,
        batch_order="per_member",
        snapshot="mse",
        num_elites=2,
        normalization="std",
        grad_clip=None,
        compile=False,
    )
    log = CsvLog()
    fit_ensemble(
        model,
        toy_dataset(),
        cfg,
        seed=0,
        device=torch.device("cpu"),
        on_epoch=log.log,
        progress=False,
    )
    log.write(path)


@pytest.fixture(scope="module")
def metrics(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("metrics")
    paths = [folder / "dnn.csv", folder / "pnn.csv"]
    for path, probabilistic in zip(paths, (False, True), strict=True):
        write_metrics(path, probabilistic)
    return paths


def run_notebook(folder: Path, csvs: list[Path], labels: list[str]) -> subprocess.CompletedProcess:
    parameters = {
        "metrics_csvs": [str(p) for p in csvs],
        "labels": labels,
        "output_pdf": str(folder / "figure/ensemble_loss.pdf"),
    }
    return papermill("ensemble_loss", folder, parameters)


def test_notebook_plots_each_ensemble(tmp_path, metrics):
    done = run_notebook(tmp_path, metrics, ["dnn", "pnn"])
    assert done.returncode == 0, done.stderr[-3000:]
    pdf = tmp_path / "figure/ensemble_loss.pdf"
    assert pdf.read_bytes().startswith(b"%PDF")
    executed = json.loads((tmp_path / "ensemble_loss.ipynb").read_text())
    summary = executed["cells"][-1]["outputs"][0]["data"]["text/plain"]
    # The summary table lists both ensembles with the 6 epochs each one trained.
    assert "dnn" in "".join(summary) and "pnn" in "".join(summary)
    table = pd.read_csv(metrics[1])
    assert len(table) == 6 and f"holdout_mse_m{MEMBERS - 1}" in table.columns


def test_missing_member_column_fails_with_its_name(tmp_path, metrics):
    broken = tmp_path / "broken.csv"
    pd.read_csv(metrics[0]).drop(columns=["holdout_mse_m1"]).to_csv(broken, index=False)
    done = run_notebook(tmp_path, [metrics[1], broken], ["pnn", "dnn"])
    assert done.returncode != 0
    assert f"{broken}: column(s) ['holdout_mse_m1'] missing" in done.stderr + done.stdout
    assert not (tmp_path / "figure/ensemble_loss.pdf").exists()
