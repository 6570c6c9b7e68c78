"""Study and ensemble configs: YAML in, validated dicts with every default filled out.

The JSON Schema in `schemas/config.schema.yaml` is the single place where keys, types and
defaults live. The Snakefile and the CLI both call `load_study` (or `load_ensemble_config`),
so a bad key is reported the same way, before any job runs, one line per problem.
`--params key=value` strings are typed by the schema, so `hidden_size=256,256` is a list.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import yaml

from ombrl.errors import OmbrlError
from ombrl.methods import METHODS, method_spec

T = TypeVar("T")
SCHEMA_PATH = Path(__file__).parent / "schemas" / "config.schema.yaml"
ENSEMBLE_CONFIG_DIR = Path("config") / "ensembles"


def _load_schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


SCHEMA = _load_schema()
#: key -> {retired value -> what to write now}: a value that was renamed or changed meaning
#: fails with one line naming its replacement instead of silently meaning something else.
RENAMED_VALUES = {
    "scale": {"normalized": "target_std (offline-model-based-rl's units are obs_std)"},
}
# The choices of a mode entry's `method:` are the registry's, never written out again.
SCHEMA["$defs"]["mode_entry"]["properties"]["method"]["enum"] = list(METHODS)


def _with_defaults(validator_class: type) -> type:
    """A validator that writes each property's `default` into the instance before checking it."""
    check_properties = validator_class.VALIDATORS["properties"]

    def fill_then_check(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = _copy(subschema["default"])
        yield from check_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": fill_then_check})


def _copy(value: Any) -> Any:
    """A deep copy with no shared parts and sorted keys. YAML aliases (`*name`) load as one
    shared object, and filling one mode's defaults must not write into another's; sorted keys
    make rule params independent of the order keys are written in (Snakemake compares them
    as text)."""
    return json.loads(json.dumps(value, sort_keys=True))


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def section_properties(schema: dict) -> dict:
    """The properties a (sub)schema allows: its own and those of the `$defs` it composes
    with `allOf` (the mode sections share SAC and rollout keys that way)."""
    props: dict = {}
    for part in schema.get("allOf", []):
        props.update(section_properties(SCHEMA["$defs"][part["$ref"].split("/")[-1]]))
    props.update(schema.get("properties", {}))
    return props


def _format_error(source: str, error: jsonschema.ValidationError, at: str) -> list[str]:
    """One readable line per problem, naming the file and the dotted key (below `at`)."""
    where = ".".join([*([at] if at else []), *(str(p) for p in error.absolute_path)])
    prefix = f"{source}: {where}" if where else source
    unknown_key = error.validator in ("additionalProperties", "unevaluatedProperties")
    if unknown_key and isinstance(error.instance, dict):
        known = sorted(section_properties(error.schema))
        hint = f" (known: {', '.join(known)})" if known else ""
        dot = f"{prefix}." if where else f"{source}: "
        return [f"{dot}{key}: unknown key{hint}" for key in error.instance if key not in known]
    if "propertyNames" in error.schema_path:
        dot = f"{prefix}." if where else f"{source}: "
        if error.validator == "enum":
            choices = ", ".join(error.validator_value)
            return [f"{dot}{error.instance}: unknown name; choose from {choices}"]
        return [f"{dot}{error.instance}: invalid name (use letters, digits, '_', '.', '-')"]
    if error.validator == "enum":
        key = error.absolute_path[-1] if error.absolute_path else ""
        renamed = RENAMED_VALUES.get(str(key), {})
        if isinstance(error.instance, str) and error.instance in renamed:
            return [f"{prefix}: {error.instance!r} was renamed; use {renamed[error.instance]}"]
        choices = ", ".join(map(str, error.validator_value))
        return [f"{prefix}: {error.instance!r} is not one of {choices}"]
    return [f"{prefix}: {error.message}"]


def validate(data: Any, source: str, schema: dict | None = None, at: str = "") -> dict:
    """Check `data` against the schema (or a `$defs` entry of it), filling in defaults.

    `at` is the dotted key of `data` within `source` (e.g. `modes.bc`), for messages.

    Raises:
        OmbrlError: with every problem found, one line each, each naming `source` and the key.
    """
    schema = SCHEMA if schema is None else {**schema, "$defs": SCHEMA["$defs"]}
    if not isinstance(data, dict):
        raise OmbrlError(
            f"{source}: expected a mapping of keys to values, got {type(data).__name__}"
        )
    validator = _Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    lines = [line for error in errors for line in _format_error(source, error, at)]
    if lines:
        raise OmbrlError("\n".join(dict.fromkeys(lines)))
    return data


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names one key twice (PyYAML would silently keep the last)."""


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key written twice in one mapping: a study with two
    `modes:` blocks would otherwise run the second only, with no word about the first."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise DuplicateKeyError(
                        f"duplicate key {key!r} at lines {seen[key]} and {line} (only the last "
                        "would be used)"
                    )
                seen[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> dict:
    """Read a YAML mapping; a missing, unreadable or malformed file, or one that names a key
    twice in a mapping, is a user mistake."""
    try:
        with open(path) as f:
            data = yaml.load(f, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except DuplicateKeyError as e:
        raise OmbrlError(f"{path}: {e}") from None
    except FileNotFoundError:
        raise OmbrlError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise OmbrlError(f"{path}: is a folder, not a config file") from None
    except UnicodeDecodeError as e:
        raise OmbrlError(f"{path}: not a text file (byte {e.start} is not UTF-8)") from None
    except PermissionError:
        raise OmbrlError(f"{path}: cannot be read (permission denied)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise OmbrlError(f"{path}: not valid YAML{where}") from None
    return {} if data is None else data


def _parse_scalar(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none"):
        return None
    return text


def _allows_array(prop: dict) -> bool:
    types = prop.get("type", [])
    options = [types] if isinstance(types, str) else list(types)
    options += [o.get("type") for o in prop.get("oneOf", [])]
    return "array" in options


def _choices(prop: dict) -> list:
    """The enum of a property, following a `$ref` to a `$defs` entry."""
    if "$ref" in prop:
        prop = SCHEMA["$defs"][prop["$ref"].split("/")[-1]]
    return prop.get("enum", [])


def _only_array(prop: dict) -> bool:
    return prop.get("type") == "array"


def parse_params(items: Iterable[str], section: str) -> dict:
    """Turn `key=value` strings into typed values using the schema section `$defs.<section>`.

    Lists are comma separated (`hidden_size=256,256`); numbers, booleans and `null` are typed.

    Raises:
        OmbrlError: for a string without `=` or a key the section does not have.
    """
    props = section_properties(SCHEMA["$defs"][section])
    parsed: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise OmbrlError(f"--params {item!r}: expected key=value")
        if key not in props:
            raise OmbrlError(f"--params {key}: unknown key (known: {', '.join(sorted(props))})")
        prop = props[key]
        if text in _choices(prop):  # e.g. `scale=none` is the choice "none", not null
            parsed[key] = text
        elif _allows_array(prop) and ("," in text or _only_array(prop)):
            parsed[key] = [
                _parse_scalar(t.strip()) for t in text.strip("[]").split(",") if t.strip()
            ]
        else:
            parsed[key] = _parse_scalar(text)
    return parsed


def load_ensemble_config(path: Path | None, overrides: dict, source: str = "--params") -> dict:
    """An ensemble config: schema defaults, then the YAML file, then overrides, validated."""
    base = read_yaml(path) if path is not None else {}
    if not isinstance(base, dict):
        raise OmbrlError(f"{path}: expected a mapping of ensemble keys")
    validate(dict(base), str(path) if path else source, SCHEMA["$defs"]["ensemble"])
    merged = {**base, **overrides}
    where = f"{path} with {source}" if path else source
    cfg = validate(merged, where, SCHEMA["$defs"]["ensemble"])
    if cfg["num_elites"] > cfg["num_models"]:
        raise OmbrlError(
            f"{where}: num_elites: {cfg['num_elites']} is more than num_models "
            f"({cfg['num_models']})"
        )
    if cfg["snapshot"] == "nll" and not cfg["probabilistic"]:
        raise OmbrlError(
            f"{where}: snapshot: 'nll' needs probabilistic: true (a deterministic ensemble has "
            "no NLL); use mse or last"
        )
    conflict = holdout_conflict(
        cfg["holdout_ratio"], cfg["snapshot"], cfg["patience"], cfg["num_elites"], cfg["num_models"]
    )
    if conflict is not None:
        raise OmbrlError(f"{where}: {conflict}")
    check_model_memory(cfg["hidden_size"], cfg["num_models"], f"{where}: hidden_size")
    return cfg


def holdout_conflict(
    holdout_ratio: float, snapshot: str, patience: int, num_elites: int, num_models: int
) -> str | None:
    """What an ensemble config asks of a holdout when `holdout_ratio: 0` leaves none.

    Without a holdout (mjrl's MOReL fit trains on every transition) there is no holdout metric
    to pick an epoch by, to stop early on, or to rank members by, so each member keeps its last
    epoch, training runs every epoch and every member is an elite.

    Returns:
        "key: value why; use X" for the first key that needs a holdout, or None.
    """
    if holdout_ratio > 0:
        return None
    none = "and holdout_ratio: 0 leaves no holdout"
    if snapshot != "last":
        return f"snapshot: {snapshot!r} picks an epoch by a holdout metric, {none}; use last"
    if patience != 0:
        return f"patience: {patience} stops on a holdout metric, {none}; use 0"
    if num_elites != num_models:
        return (
            f"num_elites: {num_elites} ranks members by holdout MSE, {none}; "
            f"use num_models ({num_models})"
        )
    return None


#: Bytes per weight while training: float32 weight, gradient and Adam's two moments.
TRAINING_BYTES_PER_WEIGHT = 16


def check_model_memory(widths: list[int], members: int, where: str) -> None:
    """Refuse hidden layers whose training state cannot fit in this machine's memory.

    Counts the weights between hidden layers only (input and output sizes depend on the
    data): a lower bound, so a refusal is certain to be right.

    Raises:
        OmbrlError: naming `where`, the widths and the memory needed and available.
    """
    weights = members * sum(a * b for a, b in zip(widths, widths[1:], strict=False))
    needed = weights * TRAINING_BYTES_PER_WEIGHT
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > available:
        raise OmbrlError(
            f"{where}: {widths} x {members} member(s) needs at least "
            f"{needed / 2**30:.0f} GiB for weights, gradients and Adam state; this machine has "
            f"{available / 2**30:.0f} GiB"
        )


def load_study(data: dict, source: str, root: Path = Path(".")) -> dict:
    """Validate a study config and resolve each ensemble entry into a full ensemble config.

    Args:
        data: the parsed study YAML (Snakemake's `config`, or `read_yaml(path)`).
        source: the file name used in error messages.
        root: the directory that holds `config/ensembles/`.

    Returns:
        The study with defaults filled in and `ensembles[name]` replaced by the resolved config.
    """
    from ombrl.data.d4rl import parse_name

    study = _copy(data)
    problems: list[str] = []
    try:
        validate(study, source)
    except OmbrlError as e:  # report the mode entries' problems too, then stop
        problems.append(str(e))
        _resolve_modes(study.get("modes") if isinstance(study, dict) else None, source, problems)
        lines = [line for problem in problems for line in problem.splitlines()]
        raise OmbrlError("\n".join(dict.fromkeys(lines))) from None
    behaviours: dict[str, tuple[str, dict]] = {}
    for name, spec in study["datasets"].items():
        if spec["source"] == "generate":
            try:
                validate(
                    spec.setdefault("behaviour", {}),
                    source,
                    SCHEMA["$defs"]["behaviour"],
                    f"datasets.{name}.behaviour",
                )
            except OmbrlError as e:
                problems.append(str(e))
                continue
        try:
            if spec["source"] == "d4rl":
                parse_name(name)
            elif spec["source"] == "generate":
                _resolve_generated(name, spec, behaviours)
        except OmbrlError as e:
            problems.append(f"{source}: datasets.{name}: {e}")
    resolved = {}
    for name, entry in study["ensembles"].items():
        path = root / ENSEMBLE_CONFIG_DIR / f"{entry['config']}.yaml"
        if not path.is_file():
            problems.append(f"{source}: ensembles.{name}.config: no file {path}")
            continue
        try:
            resolved[name] = load_ensemble_config(path, entry["params"], f"ensembles.{name}.params")
        except OmbrlError as e:
            problems.append(str(e))
    study["modes"], study["overrides"], study["sweeps"] = expand_sweeps(
        study["modes"], study["overrides"], study["sweeps"], source, problems
    )
    modes = _resolve_modes(study["modes"], source, problems)
    _check_starts(modes, source, problems)
    for name, entry in modes.items():
        unknown = [
            d
            for d in entry.setdefault("datasets", list(study["datasets"]))
            if d not in study["datasets"]
        ]
        if unknown:
            problems.append(
                f"{source}: modes.{name}.datasets: {', '.join(unknown)} not an entry of datasets"
            )
        ensemble = entry.get("ensemble")
        if ensemble is not None and ensemble not in study["ensembles"]:
            problems.append(
                f"{source}: modes.{name}.ensemble: {ensemble!r} is not an entry of ensembles"
            )
        elif method_spec(entry["method"]).needs_elites and ensemble in resolved:
            members = resolved[ensemble]
            if members["num_elites"] >= members["num_models"]:
                problems.append(
                    f"{source}: modes.{name}.ensemble: {entry['method']} needs elites, but "
                    f"{ensemble} keeps all {members['num_models']} members (num_elites)"
                )
    baseline = study["scores"]["baseline"]
    if baseline is not None and baseline not in modes:
        problems.append(
            f"{source}: scores.baseline: {baseline!r} is not an entry of modes ({', '.join(modes)})"
        )
    for name, entry in modes.items():
        origin = modes.get(entry.get("from"), {})
        outside = [
            d for d in entry["datasets"] if d not in origin.get("datasets", entry["datasets"])
        ]
        if outside:
            problems.append(
                f"{source}: modes.{name}.datasets: {', '.join(outside)} not a dataset of "
                f"{entry['from']} (the entry it starts from)"
            )
    for dataset, per_mode in study["overrides"].items():
        if dataset not in study["datasets"]:
            problems.append(f"{source}: overrides.{dataset}: not an entry of datasets")
        for name, values in per_mode.items():
            if name not in modes:
                problems.append(f"{source}: overrides.{dataset}.{name}: not an entry of modes")
                continue
            merged = {**study["modes"][name], **values}
            try:
                resolve_mode(name, merged, source, f"overrides.{dataset}.{name}")
            except OmbrlError as e:
                problems.append(str(e))
    if problems:
        raise OmbrlError("\n".join(problems))
    study["ensembles"] = resolved
    study["modes"] = modes
    return study


def _resolve_generated(name: str, spec: dict, behaviours: dict[str, tuple[str, dict]]) -> None:
    """Fill a generated dataset's `ref_scores` default and check the request (its `behaviour`
    already validated) before any job runs; datasets sharing a behaviour run (same env and
    seed) must agree on its settings, since one job makes them all.

    Raises:
        OmbrlError: the first problem (`ombrl.data.requests.check_request`, or a conflict).
    """
    from ombrl.data.requests import BehaviourConfig, behaviour_name, check_request

    spec.setdefault("ref_scores", "task")
    check_request(spec, build(BehaviourConfig, spec["behaviour"]))
    run = behaviour_name(spec)
    first, settings = behaviours.setdefault(run, (name, spec["behaviour"]))
    if settings != spec["behaviour"]:
        raise OmbrlError(
            f"behaviour: differs from datasets.{first}.behaviour, but both come from the "
            f"one behaviour run {run} (same env and seed): make them equal or change seed"
        )


#: Joins a swept entry's name and each `setting=value` (`mopo@penalty_lambda=0.3`).
SWEEP_SEPARATOR = "@"
#: What a swept entry's name may hold: it is a path component and a Snakemake wildcard value.
SWEPT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@=+-]*$")


def sweep_value_text(value: Any) -> str:
    """A setting's value as a swept entry's name shows it: YAML's spelling of booleans and
    null, the shortest text that reads back as the same float (`0.3`, `1e-05`)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, list):
        return ",".join(map(sweep_value_text, value))
    return repr(value) if isinstance(value, float) else str(value)


def expand_sweeps(
    modes: dict, overrides: dict, sweeps: dict, source: str, problems: list[str]
) -> tuple[dict, dict, dict]:
    """Replace each swept mode entry by one entry per value (pair of values) of its settings.

    The expansions keep the entry's place, its keys and its per-dataset overrides (an
    override of a swept setting is a problem: the name would no longer show the value).

    Returns:
        The modes, the overrides, and each sweep resolved as `{entry: {"settings": [...],
        "entries": {name: {setting: value}}}}` (what the sweep figure reads).
    """
    expanded, resolved = {}, {}
    for name, entry in modes.items():
        settings = sorted(sweeps.get(name, {}))
        if not settings:
            expanded[name] = entry
            continue
        where = f"{source}: sweeps.{name}"
        if not isinstance(entry, dict):
            continue
        if "method" in settings:
            problems.append(f"{where}.method: a sweep varies a method's settings, not the method")
            continue
        entries = {}
        for values in itertools.product(*(sweeps[name][k] for k in settings)):
            point = dict(zip(settings, values, strict=True))
            label = SWEEP_SEPARATOR.join(f"{k}={sweep_value_text(v)}" for k, v in point.items())
            swept = f"{name}{SWEEP_SEPARATOR}{label}"
            if not SWEPT_NAME.match(swept):
                problems.append(f"{where}: {swept!r} is not a valid entry name (a value's text)")
            elif swept in modes:
                problems.append(f"{where}: {swept!r} is already an entry of modes")
            expanded[swept] = {"method": name, **entry, **point}
            entries[swept] = point
        resolved[name] = {"settings": settings, "entries": entries}
    for name in sweeps:
        if name not in modes:
            problems.append(f"{source}: sweeps.{name}: not an entry of modes")
    new_overrides = {}
    for dataset, per_mode in overrides.items():
        new_overrides[dataset] = {}
        for name, values in per_mode.items():
            if name not in resolved:
                new_overrides[dataset][name] = values
                continue
            clash = sorted(set(values) & set(resolved[name]["settings"]))
            if clash:
                problems.append(
                    f"{source}: overrides.{dataset}.{name}.{clash[0]}: the setting is swept"
                )
            for swept in resolved[name]["entries"]:
                new_overrides[dataset][swept] = values
    return expanded, new_overrides, resolved


def _check_starts(modes: dict, source: str, problems: list[str]) -> None:
    """Entries that start from another (`from:`, offline-to-online finetuning) name a
    SAC-family entry with the same networks; they run on its datasets unless they name some."""
    for name, entry in modes.items():
        spec = method_spec(entry["method"])
        origin_name = entry.get("from")
        where = f"{source}: modes.{name}.from"
        if origin_name is None:
            if spec.starts_from:
                problems.append(f"{where}: {spec.name} needs `from:`, the entry it starts from")
            continue
        if not spec.starts_from:
            starting = [m.name for m in METHODS.values() if m.starts_from]
            problems.append(f"{where}: only {', '.join(starting)} starts from another entry")
            continue
        origin = modes.get(origin_name)
        origin_spec = method_spec(origin["method"]) if origin else None
        if origin_spec is None or origin_spec.module != "sac" or origin_spec.starts_from:
            problems.append(f"{where}: {origin_name!r} is not an offline SAC-family entry of modes")
            continue
        if entry["hidden_size"] != origin["hidden_size"]:
            problems.append(
                f"{source}: modes.{name}.hidden_size: {entry['hidden_size']} differs from "
                f"{origin_name}'s {origin['hidden_size']} (the networks it starts from)"
            )
        if entry["alpha"] != origin["alpha"]:
            problems.append(
                f"{source}: modes.{name}.alpha: {entry['alpha']!r} differs from {origin_name}'s "
                f"{origin['alpha']!r} (the temperature it starts from; null: learned)"
            )
        if "datasets" in origin:
            entry.setdefault("datasets", list(origin["datasets"]))


def _resolve_modes(entries: object, source: str, problems: list[str]) -> dict:
    """`resolve_mode` for every entry of a study's `modes:` that is a mapping; the problems
    are appended to `problems`, and the resolved entries returned."""
    resolved = {}
    for name, entry in entries.items() if isinstance(entries, dict) else ():
        if isinstance(entry, dict):
            try:
                resolved[name] = resolve_mode(name, entry, source, f"modes.{name}")
            except OmbrlError as e:
                problems.append(str(e))
    return resolved


def resolve_mode(name: str, entry: Mapping, source: str, at: str = "") -> dict:
    """One `modes:` entry, validated against its method's schema section, defaults filled.

    The one place a method's settings are checked: `load_study` calls it for every entry
    (and each dataset's overrides), the CLI for `--params`.

    Args:
        name: the entry's name; also its method when the entry names none.
        entry: the entry's keys, `method` included or not.
        source: where the entry comes from (a file), for error messages.
        at: the entry's dotted key in `source` (e.g. `modes.mopo`), for error messages.

    Returns:
        `{"method": ..., ["datasets": ...,] **every key of the method's section}`.

    Raises:
        OmbrlError: an unknown method, an unknown key or a bad value (every problem listed).
    """
    params = dict(entry)
    method = params.pop("method", name)
    datasets = params.pop("datasets", None)
    start = params.pop("from", None)
    where = f"{source}: {at}" if at else source
    if method not in METHODS:
        hint = "" if "method" in entry else " (name one with `method:`)"
        raise OmbrlError(
            f"{where}{'.method' if at else ''}: {method!r} is not one of {', '.join(METHODS)}{hint}"
        )
    _check_renamed(method_spec(method).section, params, where, at)
    written = set(params)
    checked = validate(params, source, SCHEMA["$defs"][method_spec(method).section], at)
    _check_scheme_keys(written, checked, where, at)
    for key in ("hidden_size", "value_hidden_size"):
        if key in checked:
            check_model_memory(checked[key], 1, f"{where}.{key}" if at else f"{where}: {key}")
    extra = {"datasets": datasets} if datasets else {}
    extra |= {"from": start} if start is not None else {}
    return {"method": method, **extra, **checked}


#: The model-rollout keys only one `rollout_scheme` reads (the schema's "rounds:" and
#: "persistent:" descriptions).
SCHEME_KEYS = {
    "rounds": ("rollout_batch", "rollout_every", "model_retain_epochs"),
    "persistent": ("persistent_rollouts", "model_buffer_size"),
}


def unused_scheme_keys(params: Mapping) -> list[str]:
    """The keys of resolved settings that their `rollout_scheme` never reads (none for a
    method without model rollouts): the workflow leaves them out of a job's `--params`."""
    scheme = params.get("rollout_scheme")
    if scheme is None:
        return []
    return [key for other, keys in SCHEME_KEYS.items() if other != scheme for key in keys]


def _check_scheme_keys(written: set[str], checked: Mapping, where: str, at: str) -> None:
    """Fail on a key the user wrote that the entry's rollout scheme never reads: under
    `persistent` (the thesis modes' default) `rollout_batch` would otherwise be silently
    unused, and `persistent_rollouts` under `rounds`. Schema defaults are not written."""
    prefix = f"{where}." if at else f"{where}: "
    scheme = checked.get("rollout_scheme")
    for key in unused_scheme_keys(checked):
        if key in written:
            other = next(s for s, keys in SCHEME_KEYS.items() if key in keys)
            raise OmbrlError(
                f"{prefix}{key}: only rollout_scheme: {other} reads it, and this entry's "
                f"rollout_scheme is {scheme} (remove {key} or set rollout_scheme: {other})"
            )


#: Keys (`key: replacement`) and values (`(key, value): replacement`) of a method's section
#: that were renamed or re-meant: each fails with one line naming its replacement.
_NPG_RENAMED: dict = {
    "paths": "update_paths (start states per iteration, each rolled out once per elite: "
    "paths was the total)",
    "bc_epochs": "bc_steps (behaviour-cloning minibatch steps; upstream's 5 epochs over 1M "
    "transitions are 19530)",
    ("input_scaling", "morel"): "none (raw observations, what morel meant) or mask (MOReL's "
    "observation mask, what upstream's morel is)",
}
_CQL_RENAMED: dict = {
    "bc_steps": "bc_fraction (the share of `steps` trained as the warm start; the authors' "
    "40000 of 1M updates is 0.04)",
}
RENAMED = {"morel": _NPG_RENAMED, "j_morel": _NPG_RENAMED, "cql": _CQL_RENAMED}


def _check_renamed(section: str, params: Mapping, where: str, at: str) -> None:
    """Fail on the first renamed key or re-meant value of `params`, naming its replacement."""
    prefix = f"{where}." if at else f"{where}: "
    for old, new in RENAMED.get(section, {}).items():
        if isinstance(old, tuple):
            key, value = old
            if params.get(key) == value:
                raise OmbrlError(f"{prefix}{key}: {value!r} is renamed: use {new}")
        elif old in params:
            raise OmbrlError(f"{prefix}{old}: renamed: use {new}")


def mode_params(study: dict, dataset: str, name: str) -> dict:
    """A mode entry's settings for one dataset: the entry's, then that dataset's overrides."""
    return {**study["modes"][name], **study["overrides"].get(dataset, {}).get(name, {})}


def build(cls: type[T], values: Mapping) -> T:
    """A config dataclass from resolved settings: its fields are schema keys, so nothing is
    renamed and nothing defaulted here (every value was filled in by the schema)."""
    return cls(**{f.name: values[f.name] for f in fields(cls)})
