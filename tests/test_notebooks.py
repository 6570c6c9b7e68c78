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
from ombrl.models.ensemble import DynamicsEnsemble, save_ensemble
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


def write_run(folder: Path, probabilistic: bool, snapshot: str, holdout_ratio: float = 0.2) -> Path:
    """Train a tiny ensemble for a few epochs; write its metrics.csv and model.json as
    train-ensemble does (`holdout_ratio` 0: every member an elite, as it must be)."""
    torch.manual_seed(0)
    model = DynamicsEnsemble(3, 1, [16, 16], MEMBERS, probabilistic, "swish", False)
    cfg = FitConfig(
        fit_epochs=6,
        batch_size=64,
        lr=3e-3,
        weight_decay=0.0,
        holdout_ratio=holdout_ratio,
        holdout_by="transition",
        patience=0,
        scheduler_gamma=None,
        bootstrap=True,
        batch_order="per_member",
        snapshot=snapshot,
        num_elites=2 if holdout_ratio > 0 else MEMBERS,
        normalization="std",
        grad_clip=None,
        compile=False,
    )
    log = CsvLog()
    result = fit_ensemble(
        model,
        toy_dataset(),
        cfg,
        seed=0,
        device=torch.device("cpu"),
        on_epoch=log.log,
        progress=False,
    )
    meta = {"config": {"snapshot": snapshot}, "best_epoch": result.best_epoch}
    save_ensemble(model, folder, {**meta, "holdout": result.holdout})
    log.write(folder / "metrics.csv")
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("runs")
    return [write_run(folder / "dnn", False, "mse"), write_run(folder / "pnn", True, "nll")]


def run_notebook(
    folder: Path, csvs: list[Path], jsons: list[Path], labels: list[str]
) -> subprocess.CompletedProcess:
    parameters = {
        "metrics_csvs": [str(p) for p in csvs],
        "model_jsons": [str(p) for p in jsons],
        "labels": labels,
        "output_pdf": str(folder / "figure/ensemble_loss.pdf"),
    }
    return papermill("ensemble_loss", folder, parameters)


def test_notebook_plots_each_ensemble_with_its_kept_calibration(tmp_path, runs):
    csvs, jsons = [r / "metrics.csv" for r in runs], [r / "model.json" for r in runs]
    done = run_notebook(tmp_path, csvs, jsons, ["dnn", "pnn"])
    assert done.returncode == 0, done.stderr[-3000:]
    pdf = tmp_path / "figure/ensemble_loss.pdf"
    assert pdf.read_bytes().startswith(b"%PDF")
    executed = json.loads((tmp_path / "ensemble_loss.ipynb").read_text())
    summary = "".join(executed["cells"][-1]["outputs"][0]["data"]["text/plain"])
    # The summary table lists both ensembles, with the kept snapshot's calibration.
    assert "dnn" in summary and "pnn" in summary and "kept holdout_z2" in summary
    z2 = json.loads(jsons[1].read_text())["meta"]["holdout"]["holdout_z2"]
    assert f"{z2:.6f}"[:5] in summary
    table = pd.read_csv(csvs[1])
    assert len(table) == 6 and f"holdout_nll_m{MEMBERS - 1}" in table.columns


def test_missing_member_column_fails_with_its_name(tmp_path, runs):
    broken = tmp_path / "broken.csv"
    pd.read_csv(runs[0] / "metrics.csv").drop(columns=["holdout_mse_m1"]).to_csv(
        broken, index=False
    )
    jsons = [r / "model.json" for r in reversed(runs)]
    done = run_notebook(tmp_path, [runs[1] / "metrics.csv", broken], jsons, ["pnn", "dnn"])
    assert done.returncode != 0
    assert f"{broken}: column(s) ['holdout_mse_m1'] missing" in done.stderr + done.stdout
    assert not (tmp_path / "figure/ensemble_loss.pdf").exists()


def test_an_ensemble_without_holdout_is_drawn_in_the_train_panel_only(tmp_path, runs):
    """A `holdout_ratio: 0` fit (mjrl's MOReL) writes no holdout column: the figure draws its
    train loss, next to an ensemble with a holdout or alone, and its summary row leaves the
    holdout values empty."""
    morel = write_run(tmp_path / "morel", False, "last", holdout_ratio=0.0)
    table = pd.read_csv(morel / "metrics.csv")
    assert len(table) == 6 and not any(c.startswith("holdout") for c in table.columns)
    for labels, folders in ((["dnn", "morel"], [runs[0], morel]), (["morel"], [morel])):
        out = tmp_path / "-".join(["render", *labels])
        out.mkdir()
        csvs, jsons = [f / "metrics.csv" for f in folders], [f / "model.json" for f in folders]
        done = run_notebook(out, csvs, jsons, labels)
        assert done.returncode == 0, done.stderr[-3000:]
        assert (out / "figure/ensemble_loss.pdf").read_bytes().startswith(b"%PDF")
        executed = json.loads((out / "ensemble_loss.ipynb").read_text())
        summary = "".join(executed["cells"][-1]["outputs"][0]["data"]["text/plain"])
        morel_row = next(line for line in summary.splitlines() if line.startswith("morel"))
        assert ("holdout" in summary) == ("dnn" in labels)
        assert ("NaN" in morel_row) == ("dnn" in labels)
