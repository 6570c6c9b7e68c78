"""MkDocs hook: the reference pages generated from the code, and the hand-written pages checked
against it, so neither can drift from what ombrl accepts.

Generated at build time (never committed): `reference/config.md` from the JSON schema
(`ombrl.config.SCHEMA`), `reference/cli.md` from the argparse parser (`ombrl.cli.build_parser`)
and `reference/methods.md` from the method registry (`ombrl.methods.METHODS`).

Checked on every hand-written page, each problem one warning naming the page and line (so
`mkdocs build --strict` fails):
- every `ombrl ...` command line in a code block parses with the real parser (a line with
  placeholders, `DIR`, `[--flag]`, `$var`, `...`, has its flags checked instead), and its
  `--params key=value` keys exist in the verb's schema section;
- every inline `ombrl VERB --flag` and bare `--flag` names an option of ombrl;
- every inline config path (`evaluation.seed`, `modes.<entry>.steps`) resolves in the schema,
  every inline `key: value` or `{key: value, ...}` names schema keys (and a choice the key has);
- every ```yaml block is a study config, or part of one, valid under the schema (a YAML block
  that is something else is marked ```text).

A page that names another tool's flags or keys in inline code (Snakemake's `--profile`, a
SLURM profile's `gpu`) lists them in a comment, `<!-- not ombrl's: --profile gpu -->`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

# The docs describe this checkout's code: import it rather than whatever `ombrl` the
# environment has installed (a shared venv may hold another checkout's).
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from ombrl.cli import build_parser  # noqa: E402
from ombrl.config import (  # noqa: E402
    SCHEMA,
    load_study,
    parse_params,
    resolve_mode,
    section_properties,
    validate,
)
from ombrl.errors import OmbrlError  # noqa: E402
from ombrl.methods import METHODS  # noqa: E402

log = logging.getLogger("mkdocs.plugins.ombrl")

GENERATED = ("reference/config.md", "reference/cli.md", "reference/methods.md")

# ---------------------------------------------------------------------------------------------
# the schema


#: JSON Schema keywords the config schema may use; any other key in a property's schema is a
#: typo or, in a YAML flow mapping, a description cut at an unquoted comma.
SCHEMA_KEYWORDS = {
    "$schema", "$ref", "$defs", "description", "type", "enum", "const", "default", "properties",
    "additionalProperties", "unevaluatedProperties", "required", "items", "minItems", "maxItems",
    "uniqueItems", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minProperties",
    "maxProperties", "propertyNames", "pattern", "allOf", "oneOf", "anyOf", "if", "then", "else",
}  # fmt: skip


def schema_problems(schema: dict, at: str = "schema") -> list[str]:
    """Keys of `schema` (recursively) that are not JSON Schema keywords."""
    problems = []
    for key, value in schema.items():
        if key not in SCHEMA_KEYWORDS:
            problems.append(
                f"{at}: {key!r} is not a JSON Schema keyword (an unquoted comma in a flow "
                "mapping's description?)"
            )
        if key in ("properties", "$defs"):
            for name, sub in value.items():
                problems += schema_problems(sub, f"{at}.{name}")
        elif key in ("items", "additionalProperties", "if", "then", "else") and isinstance(
            value, dict
        ):
            problems += schema_problems(value, f"{at}.{key}")
        elif key in ("allOf", "oneOf", "anyOf"):
            for i, sub in enumerate(value):
                problems += schema_problems(sub, f"{at}.{key}[{i}]")
    return problems


def _def(prop: dict) -> dict:
    """A property's schema with its `$ref` followed; the property's own keys win."""
    if "$ref" in prop:
        return {**SCHEMA["$defs"][prop["$ref"].split("/")[-1]], **prop}
    return prop


def _type(prop: dict) -> str:
    prop = _def(prop)
    if "oneOf" in prop:
        return " or ".join(_type(option) for option in prop["oneOf"])
    if "enum" in prop and "type" not in prop:
        return "choice"
    types = prop.get("type", "any")
    text = " or ".join(types) if isinstance(types, list) else types
    if text == "array" and "items" in prop:
        return f"array of {_type(prop['items'])}"
    return text


def _allowed(prop: dict) -> str:
    prop = _def(prop)
    if "enum" in prop:
        return ", ".join(f"`{v}`" for v in prop["enum"])
    if "items" in prop and "enum" in _def(prop["items"]):
        return "each of " + _allowed(prop["items"])
    bounds = [
        f"{op} {prop[key]}"
        for key, op in (
            ("minimum", ">="),
            ("exclusiveMinimum", ">"),
            ("maximum", "<="),
            ("exclusiveMaximum", "<"),
        )
        if key in prop
    ]
    return ", ".join(bounds)


def _default(prop: dict) -> str:
    if "default" in _def(prop):
        text = yaml.safe_dump(_def(prop)["default"], default_flow_style=True)
        return f"`{text.strip().removesuffix('...').strip()}`"
    return "required" if prop.get("_required") else ""


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _table(rows: dict[str, dict], prefix: str, required: tuple = ()) -> list[str]:
    lines = ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    for name, prop in rows.items():
        prop = {**prop, "_required": name in required}
        description = prop.get("description") or _def(prop).get("description", "")
        lines.append(
            f"| `{prefix}{name}` | {_type(prop)} | {_default(prop)} | {_cell(_allowed(prop))} "
            f"| {_cell(description)} |"
        )
    return lines


def config_reference() -> str:
    """reference/config.md: every study key, from the schema."""
    top = SCHEMA["properties"]
    defs = SCHEMA["$defs"]
    out = [
        "# Study config keys",
        "",
        "Generated from the schema (`src/ombrl/schemas/config.schema.yaml`) when the site is "
        "built: every key a study config may hold, its type, default and allowed values. A key "
        "without a default is required where its section is used.",
        "",
        "## Top level",
        "",
        _cell(SCHEMA["description"]),
        "",
        *_table(top, "", tuple(SCHEMA["required"])),
    ]
    for name in ("evaluation", "scores", "pets_propagation"):
        out += ["", f"## {name}", "", _cell(top[name].get("description", "")), ""]
        out += _table(top[name]["properties"], f"{name}.")
    dataset = defs["dataset"]
    out += ["", "## datasets.&lt;name&gt;", "", _cell(top["datasets"]["description"]), ""]
    out += _table(dataset["properties"], "datasets.<name>.", tuple(dataset["required"]))
    out += [
        "",
        "`source: collect` requires `env`, `policy`, `transitions`; `source: generate` requires "
        "`env`, `quality`.",
        "",
        "### datasets.&lt;name&gt;.behaviour",
        "",
        _cell(defs["behaviour"]["description"]),
        "",
        *_table(defs["behaviour"]["properties"], "behaviour."),
    ]
    out += ["", "## ensembles.&lt;name&gt;", "", _cell(top["ensembles"]["description"]), ""]
    out += _table(defs["ensemble_entry"]["properties"], "ensembles.<name>.")
    out += ["", "### Ensemble config keys", "", _cell(defs["ensemble"]["description"]), ""]
    out += _table(defs["ensemble"]["properties"], "")
    out += ["", "## modes.&lt;entry&gt;", "", _cell(top["modes"]["description"]), ""]
    out += _table(defs["mode_entry"]["properties"], "modes.<entry>.")
    for spec in METHODS.values():
        section = defs[spec.section]
        parts = [section, *(_def(part) for part in section.get("allOf", []))]
        required = tuple(key for part in parts for key in part.get("required", []))
        out += ["", f"### method: {spec.name}", "", _cell(section.get("description", "")), ""]
        out += [f"Schema section `$defs.{spec.section}`.", ""]
        out += _table(section_properties(section), "", required)
    for name in ("sweeps", "overrides"):
        out += ["", f"## {name}", "", _cell(top[name]["description"])]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# the command line


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def _commands(parser, prefix=("ombrl",)) -> list[tuple[tuple[str, ...], str, Any]]:
    """(words, help, parser) of every leaf subcommand, in the parser's order."""
    found = []
    helps = _helps(parser)
    for name, sub in _subparsers(parser).items():
        words = (*prefix, name)
        if _subparsers(sub):
            found += _commands(sub, words)
        else:
            found.append((words, helps.get(name, ""), sub))
    return found


def cli_reference() -> str:
    """reference/cli.md: every subcommand and flag, from the parser."""
    parser = build_parser()
    out = [
        "# The `ombrl` command",
        "",
        "Generated from the argparse parser (`src/ombrl/cli.py`) when the site is built. "
        "`ombrl VERB --help` prints the same. Every mistake is one line, `ombrl: error: ...`, "
        "and exit code 2 ([Errors](errors.md)).",
    ]
    for words, help_text, sub in _commands(parser):
        usage = " ".join(sub.format_usage().split()).removeprefix("usage: ")
        out += ["", f"## {' '.join(words)}", "", _cell(help_text), "", "```text", usage, "```", ""]
        out += ["| argument | value | default | description |", "|---|---|---|---|"]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            name = ", ".join(action.option_strings) or action.dest
            if action.choices:
                value = " \\| ".join(map(str, action.choices))
            elif action.nargs == 0:
                value = "(flag)"
            else:
                meta = action.metavar or (action.dest.upper() if action.option_strings else "")
                value = " ".join(meta) if isinstance(meta, tuple) else meta
                if action.nargs in ("*", "+"):
                    value += " ..."
            if action.required or (not action.option_strings and action.nargs not in "?*"):
                default = "required"
            elif action.default is None or action.default is False or action.default == []:
                default = ""
            else:
                default = f"`{action.default}`"
            out.append(f"| `{name}` | {_cell(value)} | {default} | {_cell(action.help or '')} |")
    return "\n".join(out) + "\n"


def methods_reference() -> str:
    """reference/methods.md: the method registry."""
    out = [
        "# Methods",
        "",
        "Generated from the method registry (`src/ombrl/methods/__init__.py`) when the site is "
        "built. A study's `modes:` entry runs one of these (`method:`, default: the entry's "
        "name); its keys are the method's schema section ([Study config keys](config.md)). "
        "What each method computes: [Methods](../methods/index.md).",
        "",
        "| method | family (module) | schema section | ensemble needed | online | progress unit "
        "| task objective | starts from an entry |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for spec in METHODS.values():
        ensemble = "no"
        if spec.needs_ensemble:
            ensemble = "yes, with elites" if spec.needs_elites else "yes"
        progress = spec.progress or "none (one evaluation)"
        out.append(
            f"| `{spec.name}` | `{spec.module}` | [`{spec.section}`](config.md#method-"
            f"{spec.name}) | {ensemble} | {'yes' if spec.online else 'no'} | {progress} | "
            f"{'yes' if spec.task_objective else 'no'} | {'yes' if spec.starts_from else 'no'} |"
        )
    out += ["", "Descriptions, from the schema:", ""]
    for spec in METHODS.values():
        description = SCHEMA["$defs"][spec.section].get("description", "")
        out.append(f"- `{spec.name}`: {_cell(description)}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# checking hand-written pages

FENCE = re.compile(r"^\s*(`{3,})\s*([\w-]*)")
SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
CONFIG_PATH = re.compile(r"^[a-z_]+(\.(<[^>]+>|[A-Za-z0-9_*-]+|\*))+$")
FILE_SUFFIX = re.compile(r"\.(csv|md|pdf|png|json|ya?ml|hdf5|py|smk|ipynb|db|html|txt)$")
KEY_VALUE = re.compile(r"^([a-z_]+): (\S.*)$")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$|[\[\]$<>]|\.\.\.")
FOREIGN = re.compile(r"<!--\s*not ombrl's:([^>]*)-->")
SHELL_ENDS = {"&&", "||", "|", ";", "&", ">", ">>", "2>", "2>&1"}


def _all_keys() -> dict[str, list]:
    """Every key name the schema knows, with the union of its choices (empty: any value)."""
    keys: dict[str, list] = {}

    def walk(schema: dict) -> None:
        for name, prop in schema.get("properties", {}).items():
            choices = _def(prop).get("enum")
            current = keys.setdefault(name, [])
            if choices is None or current is None:
                keys[name] = None  # some use of the key takes any value
            else:
                current.extend(c for c in choices if c not in current)
            walk(prop)
        for part in ("additionalProperties", "items"):
            if isinstance(schema.get(part), dict):
                walk(schema[part])

    walk(SCHEMA)
    for section in SCHEMA["$defs"].values():
        walk(section)
    return keys


def _entry_keys() -> set[str]:
    keys = set(SCHEMA["$defs"]["mode_entry"]["properties"])
    for spec in METHODS.values():
        keys |= set(section_properties(SCHEMA["$defs"][spec.section]))
    return keys


def _props(schema: dict) -> dict:
    """The properties a (sub)schema allows, its `allOf` parts' included."""
    props: dict = {}
    for part in schema.get("allOf", []):
        props.update(_props(_def(part)))
    props.update(schema.get("properties", {}))
    return props


def resolve_path(path: str) -> str | None:
    """None when the dotted config path exists, else what is wrong."""
    parts = path.split(".")
    schema: dict | None = SCHEMA
    for i, part in enumerate(parts):
        name_slot = part.startswith("<") or part == "*"
        at = ".".join(parts[: i + 1])
        if schema is None:
            return f"{at}: below a value that has no keys"
        if schema.get("$ref") == "#/$defs/mode_entry":  # a method's keys, whichever method
            if not name_slot and part not in _entry_keys():
                return f"{at}: no method of a modes entry has the key {part!r}"
            schema = None
            continue
        props = _props(_def(schema))
        if part in props and not name_slot:
            schema = props[part]
        elif isinstance(schema.get("additionalProperties"), dict):
            schema = schema["additionalProperties"]
        elif name_slot and _def(schema).get("additionalProperties") is not False:
            schema = {}
        else:
            known = ", ".join(sorted(props))
            return f"{at}: unknown key {part!r}" + (f" (known: {known})" if known else "")
    return None


def check_snippet(data: Any, source: str) -> list[str]:
    """Problems of a study config, or a part of one (some of its top-level keys)."""
    if not isinstance(data, dict):
        return [f"{source}: a YAML block is a study config (a mapping); mark other YAML ```text"]
    try:
        if all(key in data for key in SCHEMA["required"]):
            load_study(data, source, root=ROOT)
            return []
        unknown = [key for key in data if key not in SCHEMA["properties"]]
        if unknown:
            known = ", ".join(SCHEMA["properties"])
            return [f"{source}: {key}: unknown top-level key (known: {known})" for key in unknown]
        part = {
            "type": "object",
            "properties": {key: SCHEMA["properties"][key] for key in data},
        }
        validate(data, source, part)
        for name, entry in (data.get("modes") or {}).items():
            resolve_mode(name, entry, source, f"modes.{name}")
    except OmbrlError as error:
        return str(error).splitlines()
    return []


def _command_tokens(text: str) -> list[str] | None:
    """The `ombrl` words of a shell line (None when it does not run ombrl)."""
    try:
        words = shlex.split(text, comments=True)
    except ValueError:
        return None
    while words and (words[0] in ("$", "time", "nice") or re.match(r"^\w+=", words[0])):
        words.pop(0)
    if not words or words[0] != "ombrl" or any(w.endswith(":") for w in words[:2]):
        return None  # not ombrl, or its output (`ombrl: error: ...`)
    for i, word in enumerate(words):
        if word in SHELL_ENDS:
            return words[:i]
    return words


def _verb(words: list[str]) -> tuple[argparse.ArgumentParser | None, list[str], str]:
    """The subparser the words name, the words after it, and its name."""
    parser, rest, names = build_parser(), list(words[1:]), ["ombrl"]
    while rest and _subparsers(parser):
        choices = _subparsers(parser)
        if rest[0] not in choices:
            return None, rest, " ".join(names)
        names.append(rest.pop(0))
        parser = choices[names[-1]]
    return parser, rest, " ".join(names)


def check_flags(words: list[str], foreign: set[str]) -> list[str]:
    """Problems of an `ombrl` line's verb and flags (no values are parsed)."""
    parser, rest, name = _verb(words)
    if parser is None:
        return [f"`{name} {rest[0]}`: no such subcommand"]
    options = parser._option_string_actions
    return [
        f"`{name}` has no flag {flag}"
        for flag in (word.split("=", 1)[0] for word in rest if re.match(r"^--?[a-zA-Z]", word))
        if flag not in options and flag not in foreign
    ]


def check_preset_keys(rest: list[str]) -> list[str]:
    """Problems of `ombrl pets`/`render`'s `-o KEY VALUE` and `-ca NAME VALUE` names, against
    the PETS preset's keys and upstream's controller arguments."""
    from ombrl.planning.settings import CONTROLLER_ARGS, KEYS

    problems = []
    for flag, known in (("-o", KEYS), ("-ca", list(CONTROLLER_ARGS))):
        for i, word in enumerate(rest[:-1]):
            name = rest[i + 1]
            if word == flag and name not in known and not PLACEHOLDER.search(name):
                problems.append(f"{flag} {name}: not one of {', '.join(known)}")
    return problems


def check_params(words: list[str]) -> list[str]:
    """Problems of a line's `--params key=value` keys, against its verb's schema section (and
    of its PETS preset keys)."""
    parser, rest, name = _verb(words)
    if name in ("ombrl pets", "ombrl render"):
        return check_preset_keys(rest)
    if parser is None or "--params" not in rest:
        return []
    if name == "ombrl behaviour":
        section = "behaviour"
    elif name == "ombrl train-ensemble":
        section = "ensemble"
    elif name == "ombrl train-policy" and "--mode" in rest:
        mode = rest[rest.index("--mode") + 1]
        if mode not in METHODS:
            return []  # the parse says so
        section = METHODS[mode].section
    else:
        return []
    start = rest.index("--params") + 1
    items = []
    for word in rest[start:]:
        if word.startswith("-"):
            break
        if not PLACEHOLDER.search(word):
            items.append(word)
    try:
        parse_params(items, section)
    except OmbrlError as error:
        return [str(error)]
    return []


def check_command(text: str, foreign: set[str]) -> list[str]:
    """Problems of a code block's shell line: parsed by the real parser unless it has
    placeholders (then its flags are checked)."""
    words = _command_tokens(text)
    if words is None:
        return []
    problems = check_flags(words, foreign) + check_params(words)
    if problems or any(PLACEHOLDER.search(word) for word in words[1:]):
        return problems
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            build_parser().parse_args(words[1:])
        except SystemExit as exit:
            if exit.code:
                return [err.getvalue().strip() or f"exit {exit.code}"]
    return []


def check_span(span: str, foreign: set[str]) -> list[str]:
    """Problems of one inline code span that names ombrl flags or config keys."""
    span = span.strip()
    if span.startswith("ombrl "):
        words = _command_tokens(span)
        return [] if words is None else check_flags(words, foreign) + check_params(words)
    if re.match(r"^--[a-zA-Z]", span):
        flag = span.split()[0].split("=", 1)[0]
        options = {o for _, _, sub in _commands(build_parser()) for o in sub._option_string_actions}
        return [] if flag in options | foreign else [f"{flag}: no ombrl subcommand has this flag"]
    if CONFIG_PATH.match(span) and span.split(".")[0] in SCHEMA["properties"]:
        if FILE_SUFFIX.search(span):
            return []
        problem = resolve_path(span)
        return [problem] if problem else []
    if (span.startswith("{") or KEY_VALUE.match(span)) and '"' not in span:  # not JSON
        try:
            data = yaml.safe_load(span if span.startswith("{") else "{" + span + "}")
        except yaml.YAMLError:
            return []
        if not isinstance(data, dict) or all(value is None for value in data.values()):
            return []  # not a mapping of keys to values (a set, `{a, b}`)
        if all(key in SCHEMA["properties"] for key in data):
            return check_snippet(data, span)
        keys = _all_keys()
        problems = []
        for key, value in data.items():
            if not isinstance(key, str) or not re.match(r"^[a-z_]+$", key):
                return []  # not a config mapping (a JSON excerpt, a formula)
            if key in foreign:
                continue
            if key not in keys:
                problems.append(f"{key}: no study or ensemble config has this key")
            elif keys[key] and isinstance(value, str | bool) and value not in keys[key]:
                choices = ", ".join(map(str, keys[key]))
                if not PLACEHOLDER.search(str(value)):
                    problems.append(f"{key}: {value!r} is not one of {choices}")
        return problems
    return []


def check_page(markdown: str, page: str) -> list[str]:
    """Every problem of a hand-written page, as `page:line: problem`."""
    foreign = {flag for match in FOREIGN.finditer(markdown) for flag in match.group(1).split()}
    problems: list[str] = []
    lines = markdown.splitlines()
    fence, info, block, block_start, pending, pending_start = None, "", [], 0, "", 0
    for number, line in enumerate(lines, 1):
        match = FENCE.match(line)
        if fence is None and match:
            fence, info, block, block_start = match.group(1), match.group(2), [], number + 1
            continue
        if fence is not None and line.strip() == fence:
            if info == "yaml":
                try:
                    data = yaml.safe_load("\n".join(block))
                except yaml.YAMLError as error:
                    data, problems = None, [*problems, f"{page}:{block_start}: not YAML: {error}"]
                if data is not None:
                    source = f"{page}:{block_start}"
                    problems += [
                        p if p.startswith(source) else f"{source}: {p}"
                        for p in check_snippet(data, source)
                    ]
            fence = None
            continue
        if fence is not None:
            block.append(line)
            if info in ("", "bash", "sh", "console", "text", "shell"):
                if not pending:
                    pending_start = number
                pending += line.rstrip().removesuffix("\\") + " "
                if not line.rstrip().endswith("\\"):
                    for problem in check_command(pending, foreign):
                        problems.append(f"{page}:{pending_start}: {problem}")
                    pending = ""
            continue
        for span in SPAN.findall(line):
            problems += [f"{page}:{number}: {p}" for p in check_span(span, foreign)]
    return problems


# ---------------------------------------------------------------------------------------------
# the hooks


def on_files(files, config):
    from mkdocs.structure.files import File

    for problem in schema_problems(SCHEMA):
        log.warning(problem)
    pages = {
        "reference/config.md": config_reference(),
        "reference/cli.md": cli_reference(),
        "reference/methods.md": methods_reference(),
    }
    for path, content in pages.items():
        files.append(File.generated(config, path, content=content))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri not in GENERATED:
        for problem in check_page(markdown, page.file.src_uri):
            log.warning(problem)
    return markdown
