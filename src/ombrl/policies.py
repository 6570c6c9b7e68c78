"""The policy stage: one job trains one mode entry's method on one dataset and seed (or online
in an environment), evaluating as it goes, and writes its policy, progress and provenance.

What differs between methods lives in `ombrl.methods` (one module per method family, imported
only when used); this module does what every policy job does the same way: load the inputs
the method declares (`MethodSpec`), set up the seed, threads, checkpoint and MLflow run, log
each evaluation (raw and D4RL-normalized return), and write the outputs atomically.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

from ombrl.checkpoint import job_checkpointer
from ombrl.data.d4rl import load_dataset
from ombrl.data.scores import D4RL_REF_SCORES, d4rl_family, normalized_score, reference_scores
from ombrl.errors import OmbrlError
from ombrl.io import load_model, require_finite, save_model
from ombrl.methods import METHODS, Inputs, method_module, method_spec
from ombrl.runtime import code_version, resolve_device, setup
from ombrl.tracking import (
    CsvLog,
    check_output_dir,
    mlflow_run,
    resolve_tracking_uri,
    staged_directory,
    write_json,
    write_tracking_marker,
)
from ombrl.training.loop import Evaluation

#: Random steps before online learning when `--warmup` is not given.
DEFAULT_WARMUP = 1000


@dataclass
class PolicyJob:
    """One policy job, as the CLI (and so the workflow) states it.

    Attributes:
        method: a method of `ombrl.methods.METHODS`.
        name: the mode entry's name (paths, tables, figures); the method's name by default.
        params: the method's resolved settings (`ombrl.config.resolve_mode`, minus `method`).
        output: folder for policy.safetensors, policy.json, progress.csv, eval.json.
        dataset: HDF5 path or D4RL name (offline); None online.
        env: gymnasium id to train in online; with a dataset, the environment of a file
            without metadata/env_id (None: the file's own).
        drop_nonfinite: drop the dataset's episodes holding NaN or inf instead of refusing it.
        ensemble: folder of the trained ensemble (methods that need one).
        seed: seeds every training random number.
        threads: torch threads (part of reproducibility).
        device: auto, cpu or cuda.
        evaluation: when and how to evaluate.
        warmup: online only, random steps before learning (None: `DEFAULT_WARMUP`).
        progress: show a progress bar.
        checkpoint_every: save the training state every N updates (0: never).
        checkpoint_dir: root of the checkpoints (None: the default, see `checkpoint_root`).
        tracking_uri: MLflow store (None or "none": off).
        init: folder of the offline SAC-family policy a `starts_from` method begins with.
    """

    method: str
    name: str
    params: dict
    output: Path
    dataset: str | None
    env: str | None
    ensemble: Path | None
    seed: int
    threads: int
    device: str
    evaluation: Evaluation
    warmup: int | None
    progress: bool
    checkpoint_every: int
    checkpoint_dir: str | None
    tracking_uri: str | None
    drop_nonfinite: bool = False
    init: Path | None = None


def run(job: PolicyJob) -> None:
    """Train, evaluate and write one policy job's outputs.

    Raises:
        OmbrlError: a method that cannot do what is asked (online, without an ensemble), an
            ensemble trained on another dataset, and every input problem the loaders find.
    """
    spec = method_spec(job.method)
    if job.dataset is None and not spec.online:
        online = [name for name, other in METHODS.items() if other.online]
        raise OmbrlError(
            f"--env trains online, which only --mode {', '.join(online)} does, not {job.method}"
        )
    if job.dataset is not None and job.warmup is not None:
        raise OmbrlError(
            "--warmup: random steps of online training, only with --env and no --dataset"
        )
    if spec.needs_ensemble and job.ensemble is None:
        raise OmbrlError(f"--mode {job.method} needs --ensemble DIR (a trained ensemble)")
    if spec.starts_from != (job.init is not None):
        starting = [name for name, other in METHODS.items() if other.starts_from]
        raise OmbrlError(
            f"--init DIR: the policy {', '.join(starting)} starts from; needed by it and only it"
        )
    check_output_dir(job.output)
    uri = resolve_tracking_uri(job.tracking_uri)
    device = resolve_device(job.device)
    identity = {"mode": job.name, "method": job.method, "seed": job.seed}
    meta: dict = {}
    checkpoint = None
    if job.dataset is not None:
        dataset = load_dataset(job.dataset, job.env, job.drop_nonfinite)
        ref_scores: tuple[float, float] | None = reference_scores(dataset)
        ensemble, ensemble_meta = _load_ensemble(job, dataset, device)
        identity = {"dataset": Path(job.dataset).stem, **identity}
        meta = {
            "dataset_checksum": dataset.checksum,
            "ensemble_code_version": ensemble_meta.get("code_version"),
            "env_id": dataset.env_id,
        }
        if ensemble is not None:
            meta["ensemble"] = str(job.ensemble)
        checkpoint = job_checkpointer(
            job.checkpoint_dir,
            job.checkpoint_every,
            {
                "command": "train-policy",
                "mode": job.method,
                "config": job.params,
                "device": device.type,
                "dataset_checksum": dataset.checksum,
                # model.json records the safetensors' sha256, the elites and the code version.
                "ensemble_json_sha256": (
                    hashlib.sha256((job.ensemble / "model.json").read_bytes()).hexdigest()
                    if ensemble is not None
                    else None
                ),
                "eval": [job.evaluation.every, job.evaluation.episodes, job.evaluation.seed],
            },
            job.seed,
            job.threads,
            job.output,
        )
        inputs = Inputs(
            dataset.env_id,
            dataset,
            ensemble,
            job.seed,
            device,
            job.evaluation,
            job.progress,
            checkpoint,
            start=_load_start(job.init, dataset.checksum) if job.init is not None else None,
        )
        if job.init is not None:
            meta["started_from"] = str(job.init)
        experiment = "policies"
    else:
        ref_scores = D4RL_REF_SCORES.get(d4rl_family(job.env) or "")
        warmup = DEFAULT_WARMUP if job.warmup is None else job.warmup
        identity = {"env": job.env, **identity}
        meta = {"env_id": job.env, "warmup": warmup}
        inputs = Inputs(
            job.env, None, None, job.seed, device, job.evaluation, job.progress, warmup=warmup
        )
        experiment = "online"
    setup(job.seed, job.threads)
    train = method_module(job.method).train
    log = CsvLog()
    run_name = "/".join(str(v) for v in identity.values())
    with mlflow_run(uri, experiment, run_name, identity, job.params) as tracked:

        def on_eval(record: dict) -> None:
            if not math.isfinite(record["return"]):
                raise OmbrlError(
                    f"evaluation at step {record['step']}: return is {record['return']}; "
                    "nothing written"
                )
            row = {**identity, "step": record["step"], "return": record["return"]}
            if ref_scores is not None:
                row["normalized_score"] = normalized_score(record["return"], *ref_scores)
            row.update({k: v for k, v in record.items() if k not in ("step", "return")})
            log.log(row)
            if tracked is not None:
                tracked.log({k: v for k, v in row.items() if k not in identity}, record["step"])

        agent = train(job.method, job.params, inputs, on_eval)
        require_finite(agent.state_dict(), f"{job.method} policy")
        run_id = None if tracked is None else tracked.run_id
    # What a method made its policy from beyond the config (pets: the planner's settings).
    meta.update(getattr(agent, "provenance", {}))
    ref_min, ref_max = ref_scores or (None, None)
    meta = {
        **identity,
        "config": job.params,
        "threads": job.threads,
        **meta,
        "code_version": code_version(),
        "ref_min_score": ref_min,
        "ref_max_score": ref_max,
    }
    with staged_directory(job.output) as out:
        # The run id goes into policy.json alone: eval.json stays byte-identical between a run
        # and its rerun (or resumed run), and the scores stage finds the run without MLflow.
        save_model(out, agent.state_dict(), {**meta, "mlflow_run_id": run_id}, name="policy")
        log.write(out / "progress.csv")
        write_json(out / "eval.json", {**meta, "final": log.rows[-1]})
        write_tracking_marker(out, tracked)
    if checkpoint is not None:
        checkpoint.clear()


def _load_start(folder: Path, checksum: str) -> dict:
    """The trained SAC state in `folder` (policy.safetensors/json of an offline SAC-family
    job on the same dataset).

    Raises:
        OmbrlError: a missing policy, one of another method family or trained on other data.
    """
    tensors, meta = load_model(folder, name="policy")
    method = meta.get("method")
    if method not in METHODS or METHODS[method].module != "sac" or METHODS[method].starts_from:
        raise OmbrlError(f"--init {folder}: {method!r} is not an offline SAC-family policy")
    if meta.get("dataset_checksum") != checksum:
        raise OmbrlError(f"--init {folder}: the policy was trained on another dataset")
    return tensors


def _load_ensemble(job: PolicyJob, dataset, device):
    """The job's ensemble and its model.json meta (None, {} for methods without one)."""
    if not method_spec(job.method).needs_ensemble:
        return None, {}
    from ombrl.models.ensemble import load_ensemble

    ensemble, ensemble_meta = load_ensemble(job.ensemble, device)
    if (ensemble.obs_dim, ensemble.act_dim) != (dataset.obs_dim, dataset.act_dim):
        raise OmbrlError(
            f"{job.ensemble}: ensemble dimensions (obs {ensemble.obs_dim}, act "
            f"{ensemble.act_dim}) are not {job.dataset}'s (obs {dataset.obs_dim}, act "
            f"{dataset.act_dim}): it was trained on another task's data"
        )
    if ensemble_meta.get("dataset_checksum") not in (None, dataset.checksum):
        raise OmbrlError(
            f"{job.ensemble}: ensemble was trained on another dataset than {job.dataset}"
        )
    return ensemble, ensemble_meta
