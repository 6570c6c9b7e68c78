"""The `ombrl` command: one subcommand per workflow stage.

Thin by design: parse flags, load and validate config, call the library, write outputs.
Every user mistake is an `OmbrlError`, printed as `ombrl: error: ...` (one line per problem)
with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from ombrl.config import MODE_NAMES, SCHEMA
from ombrl.errors import OmbrlError

if TYPE_CHECKING:
    from ombrl.checkpoint import Checkpointer

DATA_DIR_ENV = "OMBRL_DATA_DIR"


def _data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV, "resources/datasets"))


def load_dataset(name_or_path: str):
    """A dataset from an HDF5 path, or a D4RL name fetched into the data directory."""
    from ombrl.data.d4rl import download, parse_name, read_hdf5

    path = Path(name_or_path)
    if path.suffix in (".hdf5", ".h5") or path.exists():
        if not path.is_file():
            raise OmbrlError(f"{path}: no such dataset file")
        return read_hdf5(path)
    parse_name(name_or_path)
    return read_hdf5(download(name_or_path, _data_dir()))


def _checkpointer(args: argparse.Namespace, identity: dict) -> Checkpointer | None:
    """The job's `Checkpointer` (None when `--checkpoint-every 0`).

    `identity` holds everything that determines the job's numbers; the job's output folder
    and the code version are added here, so two jobs never share a checkpoint and a changed
    job never resumes a stale one.
    """
    from ombrl.checkpoint import Checkpointer, checkpoint_root
    from ombrl.runtime import code_version

    if args.checkpoint_every < 0:
        raise OmbrlError(f"--checkpoint-every: {args.checkpoint_every} must be >= 0 (0: none)")
    if args.checkpoint_every == 0:
        return None
    identity = {
        **identity,
        "seed": args.seed,
        "threads": args.threads,
        "output": str(Path(args.output).resolve()),
        "code_version": code_version(),
    }
    return Checkpointer(checkpoint_root(args.checkpoint_dir), identity, args.checkpoint_every)


def _config_name(path: str | None) -> str:
    return Path(path).stem if path else "defaults"


def _run_name(tags: dict) -> str:
    return "/".join(str(v) for v in tags.values())


# ---------------------------------------------------------------------------------------------
# datasets


def cmd_collect(args: argparse.Namespace) -> None:
    from ombrl.data.collect import collect

    collect(
        env_id=args.env,
        policy=args.policy,
        num_transitions=args.transitions,
        seed=args.seed,
        path=Path(args.output),
    )


def cmd_dataset_fetch(args: argparse.Namespace) -> None:
    from ombrl.data.d4rl import download, parse_name

    parse_name(args.name)
    output = Path(args.output) if args.output else None
    cache = output.parent if output else _data_dir()
    path = download(args.name, cache)
    if output is not None and path != output:
        os.replace(path, output)


def cmd_dataset_inspect(args: argparse.Namespace) -> None:
    from ombrl.data.inspect import summarize

    print(json.dumps(summarize(load_dataset(args.dataset)), indent=2))


# ---------------------------------------------------------------------------------------------
# ensembles


def cmd_train_ensemble(args: argparse.Namespace) -> None:
    from ombrl.config import load_ensemble_config, parse_params
    from ombrl.models.ensemble import DynamicsEnsemble, save_ensemble
    from ombrl.models.fit import FitConfig, fit_ensemble
    from ombrl.runtime import code_version, resolve_device, setup
    from ombrl.tracking import CsvLog, mlflow_run, resolve_tracking_uri, staged_directory

    overrides = parse_params(args.params, "ensemble")
    if args.holdout_ratio is not None:
        overrides["holdout_ratio"] = args.holdout_ratio
    cfg = load_ensemble_config(Path(args.config) if args.config else None, overrides)
    device = resolve_device(args.device or cfg["device"])
    dataset = load_dataset(args.dataset)
    setup(args.seed, args.threads)  # before the model: its initial weights come from this seed
    model = DynamicsEnsemble(
        obs_dim=dataset.obs_dim,
        act_dim=dataset.act_dim,
        hidden_sizes=cfg["hidden_size"],
        num_members=cfg["num_models"],
        probabilistic=cfg["probabilistic"],
        activation=cfg["activation"],
        predict_reward=cfg["predict_reward"],
    ).to(device)
    fit = FitConfig(
        epochs=cfg["fit_epochs"],
        batch_size=cfg["batch_size"],
        lr=cfg["lr"],
        weight_decay=cfg["weight_decay"],
        holdout_ratio=cfg["holdout_ratio"],
        holdout_by=cfg["holdout_by"],
        patience=cfg["patience"],
        scheduler_gamma=cfg["scheduler_gamma"],
        bootstrap=cfg["bootstrap"],
        num_elites=min(cfg["num_elites"], cfg["num_models"]),
        normalization=cfg["normalization"],
        grad_clip=cfg["grad_clip"],
        compile=cfg["compile"],
        track_training=args.track_training,
    )
    checkpoint = _checkpointer(
        args,
        {
            "command": "train-ensemble",
            "config": cfg,
            "track_training": args.track_training,  # changes the metric columns
            "device": device.type,
            "dataset_checksum": dataset.checksum,
        },
    )
    log = CsvLog()
    tags = {
        "dataset": Path(args.dataset).stem,
        "config": _config_name(args.config),
        "seed": args.seed,
    }
    uri = resolve_tracking_uri(args.tracking_uri)
    with mlflow_run(uri, "ensembles", _run_name(tags), tags, cfg) as run:

        def on_epoch(row: dict) -> None:
            log.log(row)
            if run is not None:
                run.log(row, row["epoch"])

        result = fit_ensemble(
            model,
            dataset,
            fit,
            seed=args.seed,
            device=device,
            on_epoch=on_epoch,
            progress=not args.quiet,
            checkpoint=checkpoint,
        )
    meta = {
        "config": cfg,
        "seed": args.seed,
        "threads": args.threads,
        "dataset": args.dataset,
        "dataset_checksum": dataset.checksum,
        "code_version": code_version(),
        "best_epoch": result.best_epoch,
    }
    with staged_directory(Path(args.output)) as out:
        save_ensemble(model, out, meta)
        log.write(out / "metrics.csv")
    if args.csv:
        log.write(Path(args.csv))
    if checkpoint is not None:
        checkpoint.clear()


# ---------------------------------------------------------------------------------------------
# policies


def cmd_train_policy(args: argparse.Namespace) -> None:
    """Offline (`--dataset`, any mode) or online (`--env`, SAC acting in the environment)."""
    from ombrl.config import parse_params, validate
    from ombrl.data.scores import normalized_score
    from ombrl.io import save_model
    from ombrl.policies import MODES
    from ombrl.runtime import code_version, resolve_device, setup
    from ombrl.tracking import (
        CsvLog,
        mlflow_run,
        resolve_tracking_uri,
        staged_directory,
        write_json,
    )

    if args.env is not None and args.mode != "sac":
        raise OmbrlError(f"--env trains online, which only --mode sac does, not {args.mode}")
    if args.env is None and args.warmup is not None:
        raise OmbrlError("--warmup: random steps of online training, only with --env")
    section = MODES[args.mode].section
    params = parse_params(args.params, section)
    if MODES[args.mode].model:
        if args.ensemble is None:
            raise OmbrlError(f"--mode {args.mode} needs --ensemble DIR (a trained ensemble)")
        params["ensemble"] = str(args.ensemble)
    cfg = validate(params, f"--params for mode {args.mode}", SCHEMA["$defs"][section])
    device = resolve_device(args.device)
    job = _offline_job(args, cfg, device) if args.env is None else _online_job(args, cfg, device)
    setup(args.seed, args.threads)
    log = CsvLog()
    identity = {**job.identity, "mode": args.mode, "seed": args.seed}

    uri = resolve_tracking_uri(args.tracking_uri)
    with mlflow_run(uri, job.experiment, _run_name(identity), identity, cfg) as run:

        def on_eval(record: dict) -> None:
            row = {**identity, "step": record["step"], "return": record["return"]}
            if job.ref_scores is not None:
                row["normalized_score"] = normalized_score(record["return"], *job.ref_scores)
            row.update({k: v for k, v in record.items() if k not in ("step", "return")})
            log.log(row)
            if run is not None:
                run.log({k: v for k, v in row.items() if k not in identity}, record["step"])

        agent = job.train(on_eval)
    ref_min, ref_max = job.ref_scores or (None, None)
    meta = {
        **identity,
        "config": cfg,
        "threads": args.threads,
        **job.meta,
        "code_version": code_version(),
        "ref_min_score": ref_min,
        "ref_max_score": ref_max,
    }
    with staged_directory(Path(args.output)) as out:
        save_model(out, agent.state_dict(), meta, name="policy")
        log.write(out / "progress.csv")
        write_json(out / "eval.json", {**meta, "final": log.rows[-1]})
    if job.checkpoint is not None:
        job.checkpoint.clear()


@dataclass
class _PolicyJob:
    """What differs between offline and online policy training in `cmd_train_policy`.

    Attributes:
        identity: the run's tags besides mode and seed (dataset or env).
        experiment: the MLflow experiment.
        ref_scores: (random, expert) returns to normalise with; None: no normalised score.
        meta: provenance recorded in the policy's JSON.
        train: `on_eval -> trained agent`.
        checkpoint: cleared once the outputs are written; None: no checkpoints.
    """

    identity: dict
    experiment: str
    ref_scores: tuple[float, float] | None
    meta: dict
    train: Callable
    checkpoint: Checkpointer | None = None


def _offline_job(args: argparse.Namespace, cfg: dict, device) -> _PolicyJob:
    from ombrl.data.scores import reference_scores
    from ombrl.models.ensemble import load_ensemble
    from ombrl.policies import MODES, Evaluation, train_policy

    dataset = load_dataset(args.dataset)
    ref_scores = reference_scores(dataset)
    ensemble = None
    ensemble_meta: dict = {}
    if MODES[args.mode].model:
        ensemble, ensemble_meta = load_ensemble(Path(args.ensemble), device)
        if ensemble_meta.get("dataset_checksum") not in (None, dataset.checksum):
            raise OmbrlError(
                f"{args.ensemble}: ensemble was trained on another dataset than {args.dataset}"
            )
    checkpoint = _checkpointer(
        args,
        {
            "command": "train-policy",
            "mode": args.mode,
            "config": cfg,
            "device": device.type,
            "dataset_checksum": dataset.checksum,
            # model.json records the safetensors' sha256, the elites and the code version.
            "ensemble_json_sha256": (
                hashlib.sha256((Path(args.ensemble) / "model.json").read_bytes()).hexdigest()
                if ensemble is not None
                else None
            ),
            "eval": [args.eval_every, args.eval_episodes, args.eval_seed],
        },
    )

    def train(on_eval: Callable[[dict], None]):
        return train_policy(
            args.mode,
            dataset,
            ensemble,
            cfg,
            seed=args.seed,
            device=device,
            evaluation=Evaluation(args.eval_every, args.eval_episodes, args.eval_seed),
            on_eval=on_eval,
            progress=not args.quiet,
            checkpoint=checkpoint,
        )

    meta = {
        "dataset_checksum": dataset.checksum,
        "ensemble_code_version": ensemble_meta.get("code_version"),
        "env_id": dataset.env_id,
    }
    identity = {"dataset": Path(args.dataset).stem}
    return _PolicyJob(identity, "policies", ref_scores, meta, train, checkpoint)


def _online_job(args: argparse.Namespace, cfg: dict, device) -> _PolicyJob:
    from ombrl.data.scores import D4RL_REF_SCORES, d4rl_family
    from ombrl.online import train_online
    from ombrl.policies import Evaluation

    warmup = 1000 if args.warmup is None else args.warmup

    def train(on_eval: Callable[[dict], None]):
        evaluation = Evaluation(args.eval_every, args.eval_episodes, args.eval_seed)
        return train_online(
            args.env, cfg, warmup, args.seed, device, evaluation, on_eval, not args.quiet
        )

    ref_scores = D4RL_REF_SCORES.get(d4rl_family(args.env) or "")
    meta = {"env_id": args.env, "warmup": warmup}
    return _PolicyJob({"env": args.env}, "online", ref_scores, meta, train)


def cmd_uncertainty(args: argparse.Namespace) -> None:
    from ombrl.models.ensemble import load_ensemble
    from ombrl.models.uncertainty import (
        ALEATORIC_KINDS,
        dataset_statistics,
        disagreement_scale,
        position_dims,
    )
    from ombrl.runtime import resolve_device, setup
    from ombrl.tasks import get_task

    setup(args.seed, args.threads)
    device = resolve_device(args.device)
    dataset = load_dataset(args.dataset)
    ensemble, _ = load_ensemble(Path(args.ensemble), device)
    if (ensemble.obs_dim, ensemble.act_dim) != (dataset.obs_dim, dataset.act_dim):
        raise OmbrlError(
            f"{args.ensemble}: ensemble dimensions ({ensemble.obs_dim}, {ensemble.act_dim}) do "
            f"not match {args.dataset}'s ({dataset.obs_dim}, {dataset.act_dim})"
        )
    members = ensemble.elites if args.members == "elites" else None
    positions = position_dims(get_task(dataset.env_id).name) if args.scale == "morel" else None
    scale = disagreement_scale(
        args.scale, ensemble, dataset.observations, dataset.actions, positions, members
    )
    kinds = ["epistemic", *(ALEATORIC_KINDS if ensemble.probabilistic else ())]
    stats = dataset_statistics(ensemble, dataset, kinds, args.batch_size, scale, members)
    if args.json:
        print(json.dumps(stats, indent=2))
        return
    who = f"elites {ensemble.elites}" if members is not None else "all members"
    print(
        f"uncertainty of {len(dataset)} transitions of {args.dataset} under {args.ensemble} "
        f"({who}, scale {args.scale})"
    )
    columns = list(next(iter(stats.values())))
    print(f"{'kind':<10}" + "".join(f"{c:>12}" for c in columns))
    for kind, row in stats.items():
        print(f"{kind:<10}" + "".join(f"{row[c]:>12.5g}" for c in columns))


# ---------------------------------------------------------------------------------------------
# scores and config


def cmd_scores(args: argparse.Namespace) -> None:
    from ombrl.scores import final_scores, gather

    table = gather([Path(p) for p in args.progress])
    for path, frame in ((args.output, table), (args.final, final_scores(table))):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)


def cmd_tracking_init(args: argparse.Namespace) -> None:
    from ombrl.tracking import init_store, resolve_tracking_uri, write_json

    uri = resolve_tracking_uri(args.tracking_uri)
    if uri is not None:
        init_store(uri, ["ensembles", "policies"])
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(args.output), {"tracking_uri": uri})


def cmd_convert_ensemble(args: argparse.Namespace) -> None:
    from ombrl.models.convert import convert_upstream
    from ombrl.models.ensemble import save_ensemble
    from ombrl.runtime import code_version
    from ombrl.tracking import staged_directory

    model, provenance = convert_upstream(Path(args.input))
    with staged_directory(Path(args.output)) as out:
        save_ensemble(model, out, {**provenance, "code_version": code_version()})


def cmd_check_config(args: argparse.Namespace) -> None:
    from ombrl.config import load_study, read_yaml

    study = load_study(read_yaml(Path(args.config)), args.config)
    jobs = len(study["seeds"]) * len(study["datasets"])
    print(
        f"{args.config}: valid ({jobs} dataset x seed combinations, modes: "
        f"{', '.join(study['modes'])})"
    )


# ---------------------------------------------------------------------------------------------
# PETS (planning): one self-contained block, `cmd_pets` and `_add_pets_parser`


def cmd_pets(args: argparse.Namespace) -> None:
    """PETS in a gymnasium env: preset + `-ca` + `-o`, then `train_pets`; outputs staged."""
    from ombrl.models.ensemble import save_ensemble
    from ombrl.planning import load_pets_config, preset_path, train_pets, write_episodes
    from ombrl.runtime import code_version, resolve_device, setup
    from ombrl.tasks import get_task
    from ombrl.tracking import (
        CsvLog,
        mlflow_run,
        resolve_tracking_uri,
        staged_directory,
        write_json,
    )

    get_task(args.env)  # an env without task functions fails before anything else
    path = preset_path(args.preset, args.env)
    cfg = load_pets_config(path, args.controller_args or [], args.overrides or [])
    device = resolve_device(args.device)
    setup(args.seed, args.threads)
    settings = cfg.to_dict()
    checkpoint = _checkpointer(
        args, {"command": "pets", "env": args.env, "config": settings, "device": device.type}
    )
    tags = {"env": args.env, "preset": path.stem, "seed": args.seed}
    log = CsvLog()
    uri = resolve_tracking_uri(args.tracking_uri)
    with mlflow_run(uri, "pets", _run_name(tags), tags, settings) as run:

        def on_row(row: dict) -> None:
            log.log(row)
            if run is not None:
                run.log(row, row["episode"])

        ensemble, result = train_pets(
            args.env, cfg, args.seed, device, on_row, not args.quiet, checkpoint
        )
    meta = {
        "env": args.env,
        "preset": str(path),
        "config": settings,
        "seed": args.seed,
        "threads": args.threads,
        "code_version": code_version(),
    }
    with staged_directory(Path(args.output)) as out:
        save_ensemble(ensemble, out, meta)
        write_episodes(out / "episodes.hdf5", result.episodes, result.returns)
        log.write(out / "progress.csv")
        write_json(out / "returns.json", {**meta, "returns": result.returns})
    for i, value in enumerate(result.returns, start=1):
        print(f"iteration {i}: return {value:.1f}")
    if checkpoint is not None:
        checkpoint.clear()


def _add_pets_parser(sub) -> None:
    p = sub.add_parser("pets", help="PETS: plan with CEM on a learned ensemble, acting online")
    p.add_argument("--env", required=True, help="InvertedPendulum-v5, Reacher-v5, Pusher-v5, ...")
    p.add_argument(
        "--preset", help="config/pets/NAME.yaml or a YAML path (default: the --env preset)"
    )
    p.add_argument(
        "-ca",
        dest="controller_args",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="controller argument, repeatable: model-type D|P|DE|PE, "
        "prop-type E|DS|TS1|TSinf|MM, opt-type CEM|Random",
    )
    p.add_argument(
        "-o",
        dest="overrides",
        nargs=2,
        action="append",
        metavar=("KEY", "VALUE"),
        help="override a preset key (value read as YAML), repeatable: -o horizon 15",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--output", required=True, help="folder for model, episodes.hdf5, progress.csv")
    _add_checkpoint_flags(p, every=1, unit="iterations")
    _add_run_flags(p)
    _add_tracking_flag(p)
    p.set_defaults(func=cmd_pets)


# ---------------------------------------------------------------------------------------------


def _add_checkpoint_flags(parser: argparse.ArgumentParser, every: int, unit: str) -> None:
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=every,
        metavar="N",
        help=f"save the training state every N {unit}; a rerun of the same command resumes "
        "from it (0: no checkpoints)",
    )
    parser.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        help="root of the checkpoints, outside the outputs "
        "(default: $OMBRL_CHECKPOINT_DIR, else .checkpoints)",
    )


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="seeds torch, numpy and the env")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (reproducibility)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_tracking_flag(parser: argparse.ArgumentParser) -> None:
    from ombrl.tracking import DEFAULT_TRACKING_URI

    parser.add_argument(
        "--tracking-uri",
        default=DEFAULT_TRACKING_URI,
        help="MLflow store ('none': off); MLFLOW_TRACKING_URI overrides it",
    )


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error format: a mistyped flag is one line and exit code 2,
    like every other user mistake (argparse's own format adds the usage, several lines)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"ombrl: error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ombrl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("collect", help="generate a D4RL-format dataset with gymnasium")
    p.add_argument("--env", required=True, help="gymnasium id, e.g. InvertedPendulum-v5")
    p.add_argument("--policy", required=True, help="random | medium | expert")
    p.add_argument("--transitions", type=int, required=True)
    p.add_argument("--output", required=True, help="HDF5 file to write")
    _add_run_flags(p)
    p.set_defaults(func=cmd_collect)

    dataset = sub.add_parser("dataset", help="fetch or inspect datasets")
    dsub = dataset.add_subparsers(dest="dataset_command", required=True)
    p = dsub.add_parser("fetch", help="download a D4RL dataset by name")
    p.add_argument("name", help="e.g. hopper-medium-v2")
    p.add_argument("--output", help=f"file to write (default: ${DATA_DIR_ENV}/NAME.hdf5)")
    p.set_defaults(func=cmd_dataset_fetch)
    p = dsub.add_parser("inspect", help="print a JSON summary of a dataset")
    p.add_argument("dataset", help="D4RL name or HDF5 path")
    p.set_defaults(func=cmd_dataset_inspect)

    p = sub.add_parser("train-ensemble", help="fit a dynamics ensemble")
    p.add_argument("--dataset", required=True, help="D4RL name or HDF5 path")
    p.add_argument("--config", help="ensemble YAML, e.g. config/ensembles/pnn.yaml")
    p.add_argument(
        "--params",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys; lists comma separated (hidden_size=256,256)",
    )
    p.add_argument("--holdout-ratio", "--holdout_ratio", type=float, dest="holdout_ratio")
    p.add_argument(
        "--track-training",
        "--track_training",
        action="store_true",
        dest="track_training",
        help="also log the costly per-epoch metrics: full-dataset MSE/NLL (one more pass "
        "over the training split) and holdout calibration of the predicted variance",
    )
    p.add_argument("--csv", help="also write the per-epoch metrics here")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--output", required=True, help="folder for model.safetensors + model.json")
    _add_checkpoint_flags(p, every=10, unit="epochs")
    _add_run_flags(p)
    _add_tracking_flag(p)
    p.set_defaults(func=cmd_train_ensemble)

    p = sub.add_parser("train-policy", help="train a policy in one offline mode")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="D4RL name or HDF5 path: train offline")
    source.add_argument(
        "--env", help="gymnasium id, e.g. Pendulum-v1: train SAC online, acting in it"
    )
    p.add_argument("--mode", required=True, choices=MODE_NAMES)
    p.add_argument("--ensemble", help="folder of a trained ensemble (model-based modes)")
    p.add_argument("--params", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--eval-every", type=int, default=1000, help="updates between evaluations")
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--eval-seed", type=int, default=100000, help="first evaluation env seed")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--warmup", type=int, help="with --env: random steps before learning (default 1000)"
    )
    p.add_argument("--output", required=True, help="folder for policy, progress.csv, eval.json")
    _add_checkpoint_flags(p, every=1000, unit="updates (offline only)")
    _add_run_flags(p)
    _add_tracking_flag(p)
    p.set_defaults(func=cmd_train_policy)

    p = sub.add_parser(
        "uncertainty", help="print a dataset's uncertainty statistics under an ensemble"
    )
    p.add_argument("--dataset", required=True, help="D4RL name or HDF5 path")
    p.add_argument("--ensemble", required=True, help="folder of a trained ensemble")
    p.add_argument(
        "--scale",
        default="none",
        choices=SCHEMA["$defs"]["scale"]["enum"],
        help="per-dimension weights, as the modes' `scale` key",
    )
    p.add_argument(
        "--members",
        default="elites",
        choices=["elites", "all"],
        help="members measured (rollouts use the elites)",
    )
    p.add_argument("--batch-size", type=int, default=8192, help="transitions per forward pass")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_run_flags(p)
    p.set_defaults(func=cmd_uncertainty)

    p = sub.add_parser("scores", help="gather progress files into scores tables")
    p.add_argument("progress", nargs="+", help="progress.csv files of policy runs")
    p.add_argument("--output", required=True, help="every evaluation (scores.csv)")
    p.add_argument("--final", required=True, help="final score per dataset and mode")
    p.set_defaults(func=cmd_scores)

    p = sub.add_parser("tracking-init", help="create the MLflow store once, before parallel jobs")
    _add_tracking_flag(p)
    p.add_argument("--output", help="marker file recording the store's URI (for the workflow)")
    p.set_defaults(func=cmd_tracking_init)

    p = sub.add_parser(
        "convert-ensemble", help="import an ensemble trained by upstream dynamics-ensembles-rl"
    )
    p.add_argument("input", help="upstream folder: metadata.yaml and model_{i}/*.pt")
    p.add_argument("--output", required=True, help="folder for model.safetensors + model.json")
    p.set_defaults(func=cmd_convert_ensemble)

    p = sub.add_parser("check-config", help="validate a study config against the schema")
    p.add_argument("config", help="study YAML, e.g. config/config.yaml")
    p.set_defaults(func=cmd_check_config)

    _add_pets_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except OmbrlError as error:
        for line in str(error).splitlines():
            print(f"ombrl: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
