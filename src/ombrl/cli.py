"""The `ombrl` command: one subcommand per workflow stage.

Thin by design: parse flags, load and validate config, call the library, write outputs.
Every user mistake is an `OmbrlError`, printed as `ombrl: error: ...` (one line per problem)
with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import NoReturn

from ombrl.config import RENAMED_VALUES, SCHEMA
from ombrl.errors import OmbrlError
from ombrl.evaluate import continuous_spaces
from ombrl.methods import METHODS
from ombrl.tracking import DEFAULT_TRACKING_URI

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


def cmd_behaviour(args: argparse.Namespace) -> None:
    from ombrl.config import SCHEMA as schema
    from ombrl.config import build, parse_params, validate
    from ombrl.data import behaviour

    params = parse_params(args.params, "behaviour")
    cfg = validate(params, "--params", schema["$defs"]["behaviour"])
    behaviour.run(
        env_id=args.env,
        seed=args.seed,
        cfg=build(behaviour.BehaviourConfig, cfg),
        output=Path(args.output),
        threads=args.threads,
        checkpoint_every=args.checkpoint_every,
        checkpoint_dir=args.checkpoint_dir,
    )


def cmd_generate(args: argparse.Namespace) -> None:
    from ombrl.data.generate import generate

    path = generate(
        behaviour=Path(args.behaviour),
        quality=args.quality,
        transitions=args.transitions,
        ref_scores=args.ref_scores,
        output=Path(args.output),
        medium_return=args.medium_return,
    )
    if not args.quiet:
        print(f"ombrl: wrote {args.quality} to {path}", file=sys.stderr)


def cmd_dataset_fetch(args: argparse.Namespace) -> None:
    from ombrl.data.d4rl import data_dir, download, parse_name

    parse_name(args.name)
    output = Path(args.output) if args.output else None
    cache = output.parent if output else data_dir()
    path = download(args.name, cache)
    if output is not None and path != output:
        os.replace(path, output)


def cmd_dataset_inspect(args: argparse.Namespace) -> None:
    from ombrl.data.d4rl import load_dataset
    from ombrl.data.inspect import summarize

    dataset = load_dataset(args.dataset, args.env, args.drop_nonfinite, need_env=False)
    print(json.dumps(summarize(dataset), indent=2))


# ---------------------------------------------------------------------------------------------
# ensembles


def cmd_train_ensemble(args: argparse.Namespace) -> None:
    from ombrl import ensembles
    from ombrl.config import load_ensemble_config, parse_params

    overrides = parse_params(args.params, "ensemble")
    if args.holdout_ratio is not None:
        overrides["holdout_ratio"] = args.holdout_ratio
    config = Path(args.config) if args.config else None
    config_name = config.stem if config else "defaults"
    ensembles.run(
        ensembles.EnsembleJob(
            dataset=args.dataset,
            cfg=load_ensemble_config(config, overrides),
            name=args.name or config_name,
            config_name=config_name,
            output=Path(args.output),
            csv=Path(args.csv) if args.csv else None,
            track_training=args.track_training,
            seed=args.seed,
            threads=args.threads,
            device=args.device,
            progress=not args.quiet,
            checkpoint_every=args.checkpoint_every,
            checkpoint_dir=args.checkpoint_dir,
            tracking_uri=args.tracking_uri,
            env=args.env,
            drop_nonfinite=args.drop_nonfinite,
        )
    )


# ---------------------------------------------------------------------------------------------
# policies


def cmd_train_policy(args: argparse.Namespace) -> None:
    """Offline (`--dataset`, any method) or online (`--env`, SAC acting in the environment)."""
    from ombrl import policies
    from ombrl.config import parse_params, resolve_mode, section_properties
    from ombrl.methods import method_spec
    from ombrl.training.loop import Evaluation

    if args.dataset is None and args.env is None:
        raise OmbrlError("train-policy: give --dataset (offline) or --env (online)")
    spec = method_spec(args.mode)
    params = parse_params(args.params, spec.section)
    if args.track_eval:  # J-MOReL's habit: evaluate in the real environment every iteration
        if "eval_every" not in section_properties(SCHEMA["$defs"][spec.section]):
            raise OmbrlError(f"--track-eval: for methods evaluated per iteration, not {spec.name}")
        params["eval_every"] = 1
    if spec.needs_ensemble and args.ensemble is not None:
        params["ensemble"] = str(args.ensemble)
    if not spec.needs_ensemble or args.ensemble is not None:
        params = resolve_mode(args.mode, params, f"--params for mode {args.mode}")
        params.pop("method")
    policies.run(
        policies.PolicyJob(
            method=args.mode,
            name=args.name or args.mode,
            params=params,
            output=Path(args.output),
            dataset=args.dataset,
            env=args.env,
            ensemble=Path(args.ensemble) if args.ensemble else None,
            seed=args.seed,
            threads=args.threads,
            device=args.device,
            evaluation=Evaluation(args.eval_every, args.eval_episodes, args.eval_seed),
            warmup=args.warmup,
            progress=not args.quiet,
            checkpoint_every=args.checkpoint_every,
            checkpoint_dir=args.checkpoint_dir,
            tracking_uri=args.tracking_uri,
            drop_nonfinite=args.drop_nonfinite,
            init=Path(args.init) if args.init else None,
        )
    )


def cmd_uncertainty(args: argparse.Namespace) -> None:
    from ombrl.data.d4rl import load_dataset
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
    dataset = load_dataset(args.dataset, args.env, args.drop_nonfinite, need_env=False)
    ensemble, _ = load_ensemble(Path(args.ensemble), device)
    if (ensemble.obs_dim, ensemble.act_dim) != (dataset.obs_dim, dataset.act_dim):
        raise OmbrlError(
            f"{args.ensemble}: ensemble dimensions ({ensemble.obs_dim}, {ensemble.act_dim}) do "
            f"not match {args.dataset}'s ({dataset.obs_dim}, {dataset.act_dim})"
        )
    members = ensemble.elites if args.members == "elites" else None
    if args.scale == "morel" and dataset.env_id is None:
        raise OmbrlError(f"--scale morel: {args.dataset} names no environment; pass --env ENV_ID")
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
    from ombrl.scores import (
        aggregates,
        aggregates_markdown,
        check_output_files,
        final_scores,
        final_scores_markdown,
        gather,
        runs_table,
        write_tables,
    )

    outputs = {"--output": args.output, "--final": args.final, "--aggregates": args.aggregates}
    check_output_files({flag: Path(path) for flag, path in outputs.items() if path})
    table = gather([Path(p) for p in args.progress])
    final = final_scores(table, args.last_k)
    # An explicit --baseline must be a mode of the scores; the default (bc) may be absent, and
    # the aggregates then say so in their note column instead of comparing.
    summary = aggregates(
        final,
        baseline=args.baseline or "bc",
        baseline_required=args.baseline is not None,
        threshold=args.optimality_threshold,
        all_objectives=args.all_objectives,
    )
    outputs = [(args.output, table, None), (args.final, final, final_scores_markdown(final))]
    if args.aggregates:
        outputs.append((args.aggregates, summary, aggregates_markdown(summary)))
    if args.runs:
        outputs.append((args.runs, runs_table([Path(p) for p in args.progress]), None))
    write_tables(outputs)


def cmd_tracking_init(args: argparse.Namespace) -> None:
    from ombrl.tracking import init_store, resolve_tracking_uri, write_json

    uri = resolve_tracking_uri(args.tracking_uri)
    if uri is not None:
        init_store(uri, ["ensembles", "policies", "pets"])
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


def cmd_checkpoints(args: argparse.Namespace) -> None:
    from ombrl.checkpoint import checkpoint_root, checkpoints_report

    print(checkpoints_report(checkpoint_root(args.checkpoint_dir), args.clean))


def cmd_check_config(args: argparse.Namespace) -> None:
    from ombrl.config import load_study, read_yaml
    from ombrl.preflight import study_problems

    study = load_study(read_yaml(Path(args.config)), args.config)
    problems = study_problems(study, args.config)
    if problems:
        raise OmbrlError("\n".join(problems))
    jobs = len(study["seeds"]) * len(study["datasets"])
    print(
        f"{args.config}: valid ({jobs} dataset x seed combinations, modes: "
        f"{', '.join(study['modes'])})"
    )


def cmd_plan(args: argparse.Namespace) -> None:
    from ombrl import plan as planner
    from ombrl.plan import DEFAULT_CALIBRATION, format_calibration, format_plan

    calibration = Path(args.calibration) if args.calibration else DEFAULT_CALIBRATION
    if not (args.configfile or args.calibrate):
        raise OmbrlError("plan: give --configfile STUDY (and/or --calibrate)")
    # First use, or a changed library: calibrate once, say so, and keep it for the next plans.
    if args.calibrate or not planner.is_current(calibration):
        why = "" if args.calibrate else " (none yet for this code version)"
        start = time.perf_counter()
        units = planner.calibrate(calibration)["units"]
        print(f"calibrated this machine{why} in {time.perf_counter() - start:.0f} s")
        if args.calibrate:
            print(format_calibration(units, calibration))
    if args.configfile:
        extra = shlex.split(args.snakemake_args or "")
        rows = planner.plan(Path(args.configfile), calibration, extra=extra)
        print(format_plan(rows, Path(args.configfile)))


# ---------------------------------------------------------------------------------------------
# PETS (planning): one self-contained block, `cmd_pets` and `_add_pets_parser`


def cmd_pets(args: argparse.Namespace) -> None:
    """PETS in a gymnasium env: preset + `-ca` + `-o`, then the online loop; outputs staged."""
    from ombrl.planning.pets import run_job

    run_job(
        env_id=args.env,
        preset=args.preset,
        controller_args=args.controller_args or [],
        overrides=args.overrides or [],
        output=Path(args.output),
        seed=args.seed,
        threads=args.threads,
        device=args.device,
        progress=not args.quiet,
        checkpoint_every=args.checkpoint_every,
        checkpoint_dir=args.checkpoint_dir,
        tracking_uri=args.tracking_uri,
    )


def _add_pets_parser(sub) -> None:
    p = sub.add_parser("pets", help="PETS: plan with CEM on a learned ensemble, acting online")
    p.add_argument(
        "--env", type=_env_id, required=True, help="InvertedPendulum-v5, Reacher-v5, Pusher-v5, ..."
    )
    p.add_argument(
        "--preset", help="config/pets/NAME.yaml or a YAML path (default: the --env preset)"
    )
    _add_controller_args(p)
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


def _add_controller_args(parser: argparse.ArgumentParser) -> None:
    """PETS's controller arguments (`-ca NAME VALUE`, upstream's spellings)."""
    parser.add_argument(
        "-ca",
        dest="controller_args",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="controller argument, repeatable: model-type D|P|DE|PE, "
        "prop-type E|DS|TS1|TSinf|MM, opt-type CEM|Random",
    )


# ---------------------------------------------------------------------------------------------
# rendering: one episode of a policy folder or of a planner on an ensemble


def cmd_render(args: argparse.Namespace) -> None:
    from ombrl.planning.settings import CONTROLLER_ARGS, ENTRY_KEYS
    from ombrl.render import check_output, planner_actor, policy_actor, render_episode
    from ombrl.runtime import resolve_device, setup

    if (args.policy is None) == (args.ensemble is None):
        raise OmbrlError("render: give --policy DIR (a policy job's folder) or --ensemble DIR")
    if args.ensemble is not None and args.env is None:
        raise OmbrlError("render --ensemble: --env ENV_ID names the task to plan for")
    if args.policy is not None and (
        args.controller_args or args.preset or args.particles is not None
    ):
        raise OmbrlError("render --policy: the planner's settings are the policy folder's")
    output = Path(args.output)
    check_output(output)
    setup(args.seed, args.threads)
    device = str(resolve_device(args.device))
    if args.policy is not None:
        make_act, env_id = policy_actor(Path(args.policy), device, args.seed)
    else:
        settings = {
            "preset": args.preset or "small",
            **dict.fromkeys(ENTRY_KEYS),
            "particles": args.particles,
        }
        for name, value in args.controller_args or []:
            if name not in CONTROLLER_ARGS:
                raise OmbrlError(f"-ca {name}: unknown (known: {', '.join(CONTROLLER_ARGS)})")
            settings[CONTROLLER_ARGS[name]] = value
        env_id = args.env
        make_act = planner_actor(Path(args.ensemble), env_id, settings, device, args.seed)
    done = render_episode(
        make_act, env_id, output, args.seed, args.max_steps, args.width, args.height, args.fps
    )
    end = "terminated" if done.terminated else "step limit"
    if not args.quiet:
        print(
            f"{done.path}: {done.frames} frames of {env_id}, {done.steps} steps ({end}), "
            f"return {done.total:.1f}"
        )


def _add_render_parser(sub) -> None:
    p = sub.add_parser(
        "render", help="one episode of a trained policy or a PETS planner as MP4 or GIF"
    )
    p.add_argument("--policy", metavar="DIR", help="a policy job's folder (any method, pets too)")
    p.add_argument("--ensemble", metavar="DIR", help="plan with this trained ensemble (PETS)")
    p.add_argument("--env", type=_env_id, help="with --ensemble: the task to plan for")
    p.add_argument("--preset", help="with --ensemble: config/pets/NAME.yaml or a path (small)")
    _add_controller_args(p)
    p.add_argument(
        "--particles",
        type=_at_least(1),
        help="with --ensemble: particles per candidate, a multiple of the elites for TS1 and "
        "TSinf (the preset's)",
    )
    p.add_argument("--output", required=True, help="video file: .mp4 or .gif")
    p.add_argument(
        "--max-steps", type=_at_least(1), help="end after N steps (default: the env's limit)"
    )
    p.add_argument("--width", type=_at_least(16), default=320, help="pixels")
    p.add_argument("--height", type=_at_least(16), default=240, help="pixels")
    p.add_argument("--fps", type=_at_least(1), default=30, help="frames per second")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    _add_run_flags(p)
    p.set_defaults(func=cmd_render)


# ---------------------------------------------------------------------------------------------
# argument types: a value out of range is argparse's one-line error, before any work


def _scale_name(text: str) -> str:
    """An argparse type: a `scale` name; a renamed one fails naming its replacement."""
    if text in RENAMED_VALUES["scale"]:
        raise argparse.ArgumentTypeError(
            f"{text!r} was renamed; use {RENAMED_VALUES['scale'][text]}"
        )
    choices = SCHEMA["$defs"]["scale"]["enum"]
    if text not in choices:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(choices)}")
    return text


def _at_least(minimum: int):
    """An argparse type: an integer >= `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be at least {minimum}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _env_id(text: str) -> str:
    """An argparse type: a gymnasium id with continuous observations and actions."""
    try:
        continuous_spaces(text)
    except OmbrlError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("env: ")) from None
    return text


def _add_checkpoint_flags(parser: argparse.ArgumentParser, every: int, unit: str) -> None:
    parser.add_argument(
        "--checkpoint-every",
        type=_at_least(0),
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


def _add_dataset_flags(parser: argparse.ArgumentParser, env: bool = True) -> None:
    """Flags of every verb that reads a dataset."""
    if env:
        parser.add_argument(
            "--env",
            type=_env_id,
            metavar="ENV_ID",
            help="gymnasium id of the data's environment, for a file without metadata/env_id",
        )
    parser.add_argument(
        "--drop-nonfinite",
        action="store_true",
        help="drop the episodes holding NaN or inf (and say how many) instead of refusing the file",
    )


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seed", type=_at_least(0), default=0, help="seeds torch, numpy and the env"
    )
    parser.add_argument(
        "--threads", type=_at_least(1), default=1, help="torch threads (reproducibility)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_tracking_flag(parser: argparse.ArgumentParser) -> None:
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
    p.add_argument(
        "--env", type=_env_id, required=True, help="gymnasium id, e.g. InvertedPendulum-v5"
    )
    p.add_argument("--policy", required=True, help="random | medium | expert")
    p.add_argument("--transitions", type=_at_least(1), required=True)
    p.add_argument("--output", required=True, help="HDF5 file to write")
    _add_run_flags(p)
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser(
        "behaviour", help="train the online SAC behaviour run that generated datasets come from"
    )
    p.add_argument("--env", required=True, help="gymnasium MuJoCo id, e.g. Hopper-v5")
    p.add_argument("--params", nargs="*", default=[], metavar="KEY=VALUE", help="$defs.behaviour")
    p.add_argument("--output", required=True, help="folder for snapshots and replay.hdf5")
    _add_checkpoint_flags(p, every=10000, unit="env steps (saved at the next episode end)")
    _add_run_flags(p)
    p.set_defaults(func=cmd_behaviour)

    p = sub.add_parser("generate", help="write a D4RL quality of a behaviour run")
    p.add_argument("--behaviour", required=True, help="folder written by `ombrl behaviour`")
    p.add_argument(
        "--quality", required=True, help="random | medium | medium-replay | expert | medium-expert"
    )
    p.add_argument("--transitions", type=int, help="rows per part (not for medium-replay)")
    p.add_argument("--ref-scores", default="task", help="task (D4RL's constants) | own")
    p.add_argument(
        "--medium-return", type=float, help="medium's target (default: a third of the task's max)"
    )
    p.add_argument("--output", required=True, help="HDF5 file to write")
    p.add_argument("--quiet", action="store_true", help="no closing message")
    p.set_defaults(func=cmd_generate)

    dataset = sub.add_parser("dataset", help="fetch or inspect datasets")
    dsub = dataset.add_subparsers(dest="dataset_command", required=True)
    p = dsub.add_parser("fetch", help="download a D4RL dataset by name")
    p.add_argument("name", help="e.g. hopper-medium-v2")
    p.add_argument("--output", help="file to write (default: $OMBRL_DATA_DIR/NAME.hdf5)")
    p.set_defaults(func=cmd_dataset_fetch)
    p = dsub.add_parser("inspect", help="print a JSON summary of a dataset")
    p.add_argument("dataset", help="D4RL name or HDF5 path")
    _add_dataset_flags(p)
    p.set_defaults(func=cmd_dataset_inspect)

    p = sub.add_parser("train-ensemble", help="fit a dynamics ensemble")
    p.add_argument("--dataset", required=True, help="D4RL name or HDF5 path")
    _add_dataset_flags(p)
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
    p.add_argument("--name", help="the study's ensemble entry, recorded in MLflow and model.json")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--output", required=True, help="folder for model.safetensors + model.json")
    _add_checkpoint_flags(p, every=10, unit="epochs")
    _add_run_flags(p)
    _add_tracking_flag(p)
    p.set_defaults(func=cmd_train_ensemble)

    p = sub.add_parser("train-policy", help="train a policy in one offline mode")
    p.add_argument("--dataset", help="D4RL name or HDF5 path: train offline")
    p.add_argument(
        "--env",
        type=_env_id,
        metavar="ENV_ID",
        help="gymnasium id, e.g. Pendulum-v1: alone, train SAC online, acting in it; with "
        "--dataset, the data's environment (for a file without metadata/env_id)",
    )
    _add_dataset_flags(p, env=False)
    p.add_argument("--mode", required=True, choices=list(METHODS), help="the method")
    p.add_argument(
        "--name", help="the study's mode entry, recorded in outputs and logs (default: --mode)"
    )
    p.add_argument("--ensemble", help="folder of a trained ensemble (model-based modes)")
    p.add_argument(
        "--init",
        metavar="DIR",
        help="folder of the offline SAC-family policy finetune starts from (policy.safetensors)",
    )
    p.add_argument("--params", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--eval-every", type=_at_least(1), default=1000, help="updates between evaluations"
    )
    p.add_argument(
        "--track-eval",
        "--track_eval",
        action="store_true",
        dest="track_eval",
        help="NPG methods (morel, j-morel): evaluate every iteration (params eval_every=1)",
    )
    p.add_argument("--eval-episodes", type=_at_least(1), default=5)
    p.add_argument(
        "--eval-seed", type=_at_least(0), default=100000, help="first evaluation env seed"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--warmup",
        type=_at_least(0),
        help="with --env: random steps before learning (default 1000)",
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
    _add_dataset_flags(p)
    p.add_argument("--ensemble", required=True, help="folder of a trained ensemble")
    p.add_argument(
        "--scale",
        default="obs_std",
        type=_scale_name,
        help="per-dimension weights, as the modes' `scale` key (default obs_std: the units of "
        "the thesis modes' lambdas and thresholds)",
    )
    p.add_argument(
        "--members",
        default="all",
        choices=["elites", "all"],
        help="members measured, as the modes' `members` key (default all, as the thesis modes)",
    )
    p.add_argument(
        "--batch-size", type=_at_least(1), default=8192, help="transitions per forward pass"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_run_flags(p)
    p.set_defaults(func=cmd_uncertainty)

    p = sub.add_parser("scores", help="gather progress files into scores tables")
    p.add_argument("progress", nargs="+", help="progress.csv files of policy runs")
    p.add_argument("--output", required=True, help="every evaluation (scores.csv)")
    p.add_argument("--final", required=True, help="final score per dataset and mode (+ .md)")
    p.add_argument("--aggregates", help="IQM, optimality gap, P(improvement) per mode (+ .md)")
    p.add_argument(
        "--runs",
        help="per run: output folder, MLflow run id, code version (read from policy.json)",
    )
    p.add_argument(
        "--last-k",
        type=_at_least(1),
        default=1,
        metavar="K",
        help="a run's final score: the mean of its last K evaluations (default 1: the last)",
    )
    p.add_argument(
        "--baseline",
        metavar="MODE",
        help="mode compared against by P(improvement); must be a mode of the scores "
        "(default bc, skipped with a note where bc did not run)",
    )
    p.add_argument(
        "--optimality-threshold",
        type=float,
        default=100.0,
        metavar="SCORE",
        help="optimality gap's target normalized score (default 100: the expert)",
    )
    p.add_argument(
        "--all-objectives",
        action="store_true",
        help="aggregate survival and offline exploration modes too (left out by default: "
        "they optimise something other than the task's return)",
    )
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

    p = sub.add_parser(
        "checkpoints", help="list saved training states; --clean removes the stale ones"
    )
    p.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        help="root of the checkpoints (default: $OMBRL_CHECKPOINT_DIR, else .checkpoints)",
    )
    p.add_argument(
        "--clean",
        action="store_true",
        help="remove the checkpoints no rerun can resume (saved by other code, unreadable)",
    )
    p.set_defaults(func=cmd_checkpoints)

    p = sub.add_parser("check-config", help="validate a study config against the schema")
    p.add_argument("config", help="study YAML, e.g. config/config.yaml")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("plan", help="jobs per rule and their estimated cost, before a run")
    p.add_argument("--configfile", help="the study, as given to snakemake")
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="measure the per-unit costs on this machine again (about 15 s; the first plan, "
        "and the first after a library change, calibrate themselves)",
    )
    p.add_argument(
        "--calibration", help="calibration JSON (default: ~/.cache/ombrl/calibration.json)"
    )
    p.add_argument(
        "--snakemake-args",
        metavar="ARGS",
        help="more arguments for the dry run, one string: --snakemake-args='--profile "
        "profiles/slurm' (its GPU requests become the GPU-hours column)",
    )
    p.set_defaults(func=cmd_plan)

    _add_pets_parser(sub)
    _add_render_parser(sub)
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
