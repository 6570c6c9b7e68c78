"""The ensemble stage: one job fits one dynamics ensemble config on one dataset and seed.

The resolved ensemble config (schema `$defs.ensemble` keys, `ombrl.config.load_ensemble_config`)
builds the model and the fit settings under the same names; this module loads the data, sets
the seed and threads, checkpoints, logs every epoch to CSV and MLflow (tagged with the study's
entry name and the base config it came from), and writes the model atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ombrl.checkpoint import job_checkpointer
from ombrl.config import build
from ombrl.data.d4rl import load_dataset
from ombrl.models.ensemble import DynamicsEnsemble, save_ensemble
from ombrl.models.fit import FitConfig, fit_ensemble
from ombrl.runtime import code_version, resolve_device, setup
from ombrl.tracking import (
    CsvLog,
    check_output_dir,
    check_output_file,
    mlflow_run,
    resolve_tracking_uri,
    staged_directory,
    write_tracking_marker,
)


@dataclass
class EnsembleJob:
    """One ensemble job, as the CLI (and so the workflow) states it.

    Attributes:
        dataset: HDF5 path or D4RL name.
        cfg: the resolved ensemble config.
        name: the study's ensemble entry (or the config's name outside a study).
        config_name: the base config file's name (`pnn` for config/ensembles/pnn.yaml), or
            `defaults` without one.
        output: folder for model.safetensors, model.json and metrics.csv.
        csv: also write the per-epoch metrics here (None: only beside the model).
        track_training: log the costly per-epoch metrics too (see `fit_ensemble`).
        seed: seeds the initial weights, holdout split and batch order.
        threads: torch threads (part of reproducibility).
        device: auto, cpu or cuda (None: the config's `device`).
        progress: show a progress bar.
        checkpoint_every: save the state every N epochs (0: never).
        checkpoint_dir: root of the checkpoints (None: the default).
        tracking_uri: MLflow store (None or "none": off).
        env: the environment of a dataset file without metadata/env_id (recorded only: an
            ensemble is fitted without one).
        drop_nonfinite: drop the dataset's episodes holding NaN or inf instead of refusing it.
    """

    dataset: str
    cfg: dict
    name: str
    config_name: str
    output: Path
    csv: Path | None
    track_training: bool
    seed: int
    threads: int
    device: str | None
    progress: bool
    checkpoint_every: int
    checkpoint_dir: str | None
    tracking_uri: str | None
    env: str | None = None
    drop_nonfinite: bool = False


def run(job: EnsembleJob) -> None:
    """Fit, log and write one ensemble job's outputs."""
    cfg = job.cfg
    check_output_dir(job.output)
    if job.csv is not None:
        check_output_file(job.csv, "--csv")
    uri = resolve_tracking_uri(job.tracking_uri)
    device = resolve_device(job.device or cfg["device"])
    dataset = load_dataset(job.dataset, job.env, job.drop_nonfinite, need_env=False)
    setup(job.seed, job.threads)  # before the model: its initial weights come from this seed
    model = DynamicsEnsemble(
        dataset.obs_dim,
        dataset.act_dim,
        cfg["hidden_size"],
        cfg["num_models"],
        cfg["probabilistic"],
        cfg["activation"],
        cfg["predict_reward"],
        init=cfg["init"],
    ).to(device)
    checkpoint = job_checkpointer(
        job.checkpoint_dir,
        job.checkpoint_every,
        {
            "command": "train-ensemble",
            "config": cfg,
            "track_training": job.track_training,  # changes the metric columns
            "device": device.type,
            "dataset_checksum": dataset.checksum,
        },
        job.seed,
        job.threads,
        job.output,
    )
    log = CsvLog()
    tags = {
        "dataset": Path(job.dataset).stem,
        "ensemble": job.name,
        "config": job.config_name,
        "seed": job.seed,
    }
    run_name = "/".join(str(v) for v in tags.values())
    with mlflow_run(uri, "ensembles", run_name, tags, cfg) as tracked:

        def on_epoch(row: dict) -> None:
            log.log(row)
            if tracked is not None:
                tracked.log(row, row["epoch"])

        result = fit_ensemble(
            model,
            dataset,
            build(FitConfig, cfg),
            seed=job.seed,
            device=device,
            on_epoch=on_epoch,
            progress=job.progress,
            checkpoint=checkpoint,
            track_training=job.track_training,
        )
    meta = {
        "config": cfg,
        "name": job.name,
        "config_name": job.config_name,
        "seed": job.seed,
        "threads": job.threads,
        "dataset": job.dataset,
        "dataset_checksum": dataset.checksum,
        "code_version": code_version(),
        "best_epoch": result.best_epoch,
        # The kept snapshot's holdout metrics (calibration included), named as in metrics.csv.
        "holdout": result.holdout,
    }
    with staged_directory(job.output) as out:
        save_ensemble(model, out, meta)
        log.write(out / "metrics.csv")
        write_tracking_marker(out, tracked)
    if job.csv is not None:
        log.write(job.csv)
    if checkpoint is not None:
        checkpoint.clear()
