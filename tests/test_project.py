"""Project hygiene: conda pins agree with pyproject; the Snakemake files are lint- and fmt-clean."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in project["dependencies"]:
        name, version = re.fullmatch(r"([\w.-]+)(?:\[[\w,]+\])?==([\w.]+)", requirement).groups()
        pins[name.lower()] = version
    return pins


def conda_pins(path: Path) -> dict[str, str]:
    environment = yaml.safe_load(path.read_text())
    pins = {}
    for entry in environment["dependencies"]:
        if isinstance(entry, dict):
            for requirement in entry["pip"]:
                name, version = re.fullmatch(
                    r"([\w.-]+)(?:\[[\w,]+\])?==([\w.]+)", requirement
                ).groups()
                pins[name.lower()] = version
        elif entry.startswith("python="):
            pins["python"] = entry.split("=", 1)[1]
    return pins


def test_conda_environments_pin_what_pyproject_pins():
    expected = pyproject_pins()
    whole = conda_pins(ROOT / "environment.yml")
    assert {k: v for k, v in whole.items() if k != "python"} == expected
    for path in sorted((ROOT / "envs").glob("*.yaml")):
        pins = conda_pins(path)
        assert pins.pop("python") == "3.11", path.name
        assert pins and all(expected.get(k) == v for k, v in pins.items()), path.name


def test_every_rule_names_a_conda_environment_that_exists():
    for rules in sorted((ROOT / "workflow/rules").glob("*.smk")):
        for env in re.findall(r'conda:\n\s+"([^"]+)"', rules.read_text()):
            assert (rules.parent / env).resolve().is_file(), f"{rules.name}: {env}"


def test_snakemake_lint_and_snakefmt_are_clean():
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(ROOT)}
    env |= {k: v for k, v in os.environ.items() if k == "SLURM_CONF"}  # tests/conftest.py
    lint = subprocess.run(
        [str(BIN / "snakemake"), "--lint"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Congratulations, your workflow is in a good condition!" in lint.stdout + lint.stderr
    files = ["Snakefile", *map(str, sorted(ROOT.glob("workflow/rules/*.smk")))]
    fmt = subprocess.run(
        [str(BIN / "snakefmt"), "--check", *files], cwd=ROOT, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stderr
