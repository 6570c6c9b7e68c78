"""PETS settings: one dataclass, presets in `config/pets/*.yaml`, one check function.

A preset names every key (no hidden defaults). The command line changes it the way upstream
handful-of-trials' `mbexp.py` did: `-ca model-type PE` (controller arguments, upstream's
spellings) and `-o key value` (any preset key; the value is read as YAML, so
`-o hidden_size [64,64]` is a list). Every problem is an `OmbrlError` raised before any
environment step or planning.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from ombrl.config import read_yaml
from ombrl.errors import OmbrlError
from ombrl.models.fit import NORMALIZATIONS
from ombrl.planning.propagation import check_model_source, check_types

PRESET_DIR = Path("config") / "pets"
OPT_TYPES = ("CEM", "Random")
# `obs_preproc`: the model sees the task's angles as sine and cosine (`Task.angle_dims`,
# upstream's per-task `obs_preproc`), or the raw observation.
OBS_PREPROC = ("task", "none")
# `-ca` names (upstream) -> preset keys.
CONTROLLER_ARGS = {"model-type": "model_type", "prop-type": "prop_type", "opt-type": "opt_type"}
#: The preset keys an offline `pets` entry may set (schema `$defs.pets`; None keeps the
#: preset's): the controller's, and `particles`, which trajectory sampling needs as a multiple
#: of the elites planned with (a preset sized for its own ensemble may not fit).
ENTRY_KEYS = [*CONTROLLER_ARGS.values(), "particles"]


@dataclass
class PetsConfig:
    """Everything a PETS run needs besides the environment, seed and device."""

    # experiment (upstream exp_cfg)
    iterations: int  # ntrain_iters: planned episodes, each after refitting the model
    init_episodes: int  # ninit_rollouts: uniform-random episodes before the first fit
    episode_length: int | None  # task_hor: step limit of an episode; null: the env's own
    # controller (upstream -ca)
    model_type: str  # D, P (one network), DE, PE (ensemble); P = probabilistic
    prop_type: str  # E, DS, TS1, TSinf, MM (see ombrl.planning.propagation)
    opt_type: str  # CEM or Random (random shooting)
    # planning (upstream ctrl_cfg.opt_cfg and prop_cfg)
    horizon: int  # plan_hor: steps planned ahead
    popsize: int  # candidate sequences per CEM iteration (Random: in total)
    num_elites: int  # CEM: candidates refitted per iteration (<= popsize)
    max_iters: int  # CEM: iterations per action
    alpha: float  # CEM: weight of the previous mean and variance, in [0, 1)
    epsilon: float  # CEM: stop once every variance is at most this
    particles: int  # npart: particles per candidate (TS: a multiple of num_models)
    # dynamics model (the vocabulary of config/ensembles/*.yaml)
    obs_preproc: str  # task (upstream: the task's angles as sine and cosine) or none
    num_models: int  # DE/PE members (D and P train one network)
    hidden_size: list[int]  # hidden layer widths
    activation: str  # swish or relu
    weight_decay: float | list[float]  # one for all layers, or one per layer (hidden + output)
    lr: float  # Adam learning rate
    fit_epochs: int  # epochs per refit (upstream: 5); weights carry over between iterations
    batch_size: int  # transitions per member per gradient step
    # 0 (upstream): every transition trains and each member keeps its last epoch; in (0, 1):
    # that fraction is held out and each member keeps its epoch of lowest holdout MSE
    holdout_ratio: float
    bootstrap: bool  # each member trains on its own bootstrap resample
    normalization: str  # std_inputs (upstream: inputs only, targets raw), std or mad

    @property
    def members(self) -> int:
        """Networks trained: num_models for DE/PE, one for D/P."""
        return self.num_models if len(self.model_type) == 2 else 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


KEYS = [f.name for f in dataclasses.fields(PetsConfig)]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def check_pets_config(cfg: PetsConfig) -> None:
    """Every value's type and range, and the combinations that cannot work.

    Raises:
        OmbrlError: the first problem, as `key: value why`.
    """
    ints = [
        ("iterations", 1),
        ("init_episodes", 1),
        ("horizon", 1),
        ("popsize", 1),
        ("num_elites", 1),
        ("max_iters", 1),
        ("particles", 1),
        ("num_models", 1),
        ("fit_epochs", 1),
        ("batch_size", 1),
    ]
    for key, low in ints:
        value = getattr(cfg, key)
        if not _is_int(value) or value < low:
            raise OmbrlError(f"{key}: {value!r} must be an integer >= {low}")
    if cfg.episode_length is not None and (
        not _is_int(cfg.episode_length) or cfg.episode_length < 1
    ):
        raise OmbrlError(f"episode_length: {cfg.episode_length!r} must be an integer >= 1 or null")
    if cfg.opt_type not in OPT_TYPES:
        raise OmbrlError(f"opt_type: {cfg.opt_type!r} is not one of {', '.join(OPT_TYPES)}")
    check_types(cfg.model_type, cfg.prop_type)
    if cfg.num_elites > cfg.popsize:
        raise OmbrlError(f"num_elites: {cfg.num_elites} is above popsize ({cfg.popsize})")
    if not _is_number(cfg.alpha) or not 0 <= cfg.alpha < 1:
        raise OmbrlError(f"alpha: {cfg.alpha!r} must be a number in [0, 1)")
    if not _is_number(cfg.epsilon) or cfg.epsilon < 0:
        raise OmbrlError(f"epsilon: {cfg.epsilon!r} must be a number >= 0")
    if cfg.model_type in ("DE", "PE") and cfg.num_models < 2:
        raise OmbrlError(
            f"num_models: {cfg.num_models} must be >= 2 for model_type {cfg.model_type}"
        )
    if cfg.prop_type.startswith("TS") and cfg.particles % cfg.members:
        raise OmbrlError(
            f"particles: {cfg.particles} must be a multiple of num_models ({cfg.members}) "
            f"for prop_type {cfg.prop_type}"
        )
    if not isinstance(cfg.hidden_size, list) or not all(
        _is_int(h) and h >= 1 for h in cfg.hidden_size
    ):
        raise OmbrlError(f"hidden_size: {cfg.hidden_size!r} must be a list of integers >= 1")
    if cfg.activation not in ("swish", "relu"):
        raise OmbrlError(f"activation: {cfg.activation!r} is not one of swish, relu")
    layers = len(cfg.hidden_size) + 1
    decay = cfg.weight_decay
    if not (
        (_is_number(decay) and decay >= 0)
        or (
            isinstance(decay, list)
            and len(decay) == layers
            and all(_is_number(c) and c >= 0 for c in decay)
        )
    ):
        raise OmbrlError(
            f"weight_decay: {decay!r} must be a number >= 0 or a list of {layers} "
            "(one per hidden layer and the output layer)"
        )
    if not _is_number(cfg.lr) or cfg.lr <= 0:
        raise OmbrlError(f"lr: {cfg.lr!r} must be a number > 0")
    if not _is_number(cfg.holdout_ratio) or not 0 <= cfg.holdout_ratio < 1:
        raise OmbrlError(f"holdout_ratio: {cfg.holdout_ratio!r} must be a number in [0, 1)")
    if not isinstance(cfg.bootstrap, bool):
        raise OmbrlError(f"bootstrap: {cfg.bootstrap!r} must be true or false")
    if cfg.obs_preproc not in OBS_PREPROC:
        raise OmbrlError(f"obs_preproc: {cfg.obs_preproc!r} is not one of {', '.join(OBS_PREPROC)}")
    if cfg.normalization not in NORMALIZATIONS:
        raise OmbrlError(
            f"normalization: {cfg.normalization!r} is not one of {', '.join(NORMALIZATIONS)}"
        )


def preset_path(preset: str | None, env_id: str) -> Path:
    """`preset` as a file, else `config/pets/{preset}.yaml`; None: the env's own preset."""
    name = preset or env_id
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return path
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) if PRESET_DIR.is_dir() else []
        what = f"preset {name!r}" if preset else f"{env_id} has no preset ({path}); --preset"
        raise OmbrlError(f"{what}: no {path} (known: {', '.join(known) or 'none'})")
    return path


def _read_preset(path: Path) -> dict:
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise OmbrlError(f"{path}: must be a mapping of PETS keys")
    return data


def load_pets_config(
    path: Path,
    controller_args: list[tuple[str, str]] = (),
    overrides: list[tuple[str, str]] = (),
) -> PetsConfig:
    """Read a preset, apply `-ca` pairs then `-o` pairs, check the result.

    Args:
        path: preset YAML naming every key of `PetsConfig`.
        controller_args: (upstream name, value) pairs: model-type, prop-type, opt-type.
        overrides: (preset key, YAML value) pairs.

    Raises:
        OmbrlError: an unknown or missing key, an unknown controller argument, a bad value.
    """
    values = _read_preset(path)
    unknown = [k for k in values if k not in KEYS]
    if unknown:
        raise OmbrlError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    missing = [k for k in KEYS if k not in values]
    if missing:
        raise OmbrlError(f"{path}: missing keys {', '.join(missing)}")
    for name, value in controller_args:
        if name not in CONTROLLER_ARGS:
            raise OmbrlError(f"-ca {name}: unknown (known: {', '.join(CONTROLLER_ARGS)})")
        values[CONTROLLER_ARGS[name]] = value
    for key, text in overrides:
        if key not in KEYS:
            raise OmbrlError(f"-o {key}: unknown key (known: {', '.join(KEYS)})")
        try:
            values[key] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise OmbrlError(f"-o {key}: {text!r} is not a YAML value") from None
    if isinstance(values["hidden_size"], int):
        values["hidden_size"] = [values["hidden_size"]]
    for key in ("alpha", "epsilon", "lr", "holdout_ratio"):
        if _is_int(values[key]):
            values[key] = float(values[key])
    cfg = PetsConfig(**values)
    check_pets_config(cfg)
    return cfg


def entry_settings(entry: dict, env_id: str, members: int) -> PetsConfig:
    """The planner of an offline `pets` entry planning with `members` elites: its preset
    (`preset_path(entry["preset"], env_id)`) with the entry's `ENTRY_KEYS` that are not None.

    Raises:
        OmbrlError: an unknown preset, or a setting that does not fit, naming the elites.
    """
    path = preset_path(entry["preset"], env_id)
    chosen = [(k, json.dumps(entry[k])) for k in ENTRY_KEYS if entry.get(k) is not None]
    # The preset's num_models is the ensemble it would train; here it is the elites planned with.
    try:
        return load_pets_config(path, (), [*chosen, ("num_models", str(members))])
    except OmbrlError as error:
        raise OmbrlError(f"pets with {members} elite(s): {error}") from None


def planner_problems(planners: dict, ensembles: dict, source: str) -> list[str]:
    """What a loaded study's offline planner entries (`pets`, chosen by `ombrl.preflight`)
    would refuse: each one's preset and settings against its ensemble config's elites
    (trajectory sampling's particles, P or PE from a deterministic ensemble), one line each."""
    problems = []
    for name, entry in planners.items():
        ensemble, where = ensembles[entry["ensemble"]], f"{source}: modes.{name}"
        try:  # a study always names its preset: no env's own preset is looked up
            settings = entry_settings(entry, "", ensemble["num_elites"])
            check_model_source(settings.model_type, ensemble["probabilistic"], entry["ensemble"])
        except OmbrlError as error:
            problems.append(f"{where}: {error}")
    return problems
