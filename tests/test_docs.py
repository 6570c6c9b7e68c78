"""The documentation: the strict site build, the generated reference pages, and the checks that
hold the hand-written pages to the code (docs/_hooks/reference.py)."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ombrl.cli import build_parser
from ombrl.config import SCHEMA, section_properties
from ombrl.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "docs/_hooks/reference.py")
reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reference)


@pytest.mark.slow
def test_the_site_builds_strictly_with_the_generated_reference(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr  # --strict: any warning fails the build
    config = (tmp_path / "site/reference/config/index.html").read_text()
    assert "evaluation.seed" in config and "separate from training seeds" in config
    cli = (tmp_path / "site/reference/cli/index.html").read_text()
    assert "ombrl train-policy" in cli and "--drop-nonfinite" in cli
    methods = (tmp_path / "site/reference/methods/index.html").read_text()
    assert all(name in methods for name in METHODS)
    assert (tmp_path / "site/results/hopper/index.html").is_file()


def test_config_reference_names_every_key_of_every_section():
    text = reference.config_reference()
    for key in SCHEMA["properties"]:
        assert f"| `{key}` |" in text
    for spec_ in METHODS.values():
        assert f"### method: {spec_.name}" in text
    sections = ["behaviour", "ensemble", *(s.section for s in METHODS.values())]
    for section in sections:
        for key in section_properties(SCHEMA["$defs"][section]):
            assert f"{key}` |" in text, (section, key)
    for key in SCHEMA["$defs"]["dataset"]["properties"]:
        assert f"{key}` |" in text, (section, key)
    assert "| `evaluation.seed` | integer | `100000` | >= 0 |" in text


def test_cli_reference_names_every_subcommand_and_flag():
    text = reference.cli_reference()
    parser = build_parser()
    verbs = reference._subparsers(parser)
    assert set(verbs) >= {"collect", "train-policy", "pets", "render", "plan", "dataset"}
    for name, sub in verbs.items():
        if name == "dataset":
            for inner in reference._subparsers(sub):
                assert f"## ombrl dataset {inner}" in text
            continue
        assert f"## ombrl {name}\n" in text
        for option in sub._option_string_actions:
            if option not in ("-h", "--help"):
                assert option in text, (name, option)


def test_methods_reference_has_one_row_per_method():
    rows = [line for line in reference.methods_reference().splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == list(METHODS)
    pets = next(row for row in rows if row.startswith("| `pets`"))
    assert "none (one evaluation)" in pets
    assert "yes, with elites" in next(row for row in rows if row.startswith("| `j-morel`"))


def test_the_schema_has_no_stray_keywords_and_a_cut_description_is_found():
    assert reference.schema_problems(SCHEMA) == []
    cut = yaml.safe_load(
        "{properties: {seed: {description: First (fixed, separate)., type: integer}}}"
    )
    [problem] = reference.schema_problems(cut)
    assert "schema.seed" in problem and "'separate).'" in problem


GOOD_PAGE = """# A page

Set `evaluation.seed` or `modes.<entry>.penalty_lambda`; `snapshot: nll` keeps another epoch;
`{source: generate, env: Hopper-v5, quality: medium}`; `--drop-nonfinite` drops episodes;
`{max_norm, max_var}` is a set of names, not a mapping.
`ombrl scores --last-k 5` and `ombrl: error: study.yaml: modes.bc.stepz: unknown key` (output).

```yaml
scores:
  last_k: 5
```

```bash
ombrl check-config config/config.yaml
ombrl train-policy --dataset d.hdf5 --mode aleatoric-penalty --ensemble ens/ \\
    --params penalty_lambda=2 --output pol/
ombrl render --policy DIR --output episode.mp4 [--seed 0]
ombrl pets --env ENV -ca prop-type TS1 -o horizon 15 --output out/
```
"""


def test_a_page_that_matches_the_code_passes():
    assert reference.check_page(GOOD_PAGE, "good.md") == []


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ("Set `evaluation.sed` first.\n", ["bad.md:1: evaluation.sed: unknown key 'sed'"]),
        ("\n`modes.<entry>.stepz`\n", ["bad.md:2: modes.<entry>.stepz: no method"]),
        ("`snapshot: best`\n", ["bad.md:1: snapshot: 'best' is not one of mse, nll, last"]),
        ("`{source: d4rl, colour: red}`\n", ["bad.md:1: colour: no study or ensemble config"]),
        ("`--no-such-flag`\n", ["bad.md:1: --no-such-flag: no ombrl subcommand has this flag"]),
        ("`ombrl scores --last-kk 5`\n", ["bad.md:1: `ombrl scores` has no flag --last-kk"]),
        ("```\nombrl trian-policy --output p\n```\n", ["bad.md:2: `ombrl trian-policy`: no such"]),
        ("```bash\nombrl check-config\n```\n", ["bad.md:2: ombrl: error: ombrl check-config:"]),
        (
            "x\n```bash\nombrl train-policy --dataset d.hdf5 --mode bc \\\n  --params stepz=3 "
            "--output p/\n```\n",
            ["bad.md:3: --params stepz: unknown key"],
        ),
        ("`ombrl pets --env ENV -o plan_hor 30`\n", ["bad.md:1: -o plan_hor: not one of"]),
        ("`ombrl pets --env ENV -ca model_type PE`\n", ["bad.md:1: -ca model_type: not one of"]),
        ("```yaml\nscores:\n  last_k: 0\n```\n", ["bad.md:2: scores.last_k: 0 is less than"]),
        ("```yaml\nscore:\n  last_k: 5\n```\n", ["bad.md:2: score: unknown top-level key"]),
        (
            "```yaml\nseeds: [0]\ndatasets: {hopper-medium-v2: {source: d4rl}}\n"
            "modes: {bc: {stepz: 1}}\n```\n",
            ["bad.md:2: modes.bc.stepz: unknown key"],
        ),
        ("```yaml\n- a list\n```\n", ["bad.md:2: a YAML block is a study config"]),
    ],
)
def test_a_page_that_names_what_the_code_lacks_fails(page, expected):
    problems = reference.check_page(page, "bad.md")
    assert len(problems) == len(expected), problems
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start), problem


def test_a_page_may_name_another_tools_flags_and_keys():
    page = "<!-- not ombrl's: --profile gpu -->\nUse `--profile slurm`; set `gpu: 1`.\n"
    assert reference.check_page(page, "slurm.md") == []
    assert len(reference.check_page(page.split("\n", 1)[1], "slurm.md")) == 2


def test_the_readme_is_short_checked_and_links_existing_pages():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert reference.check_page(readme, "README.md") == []
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        assert (ROOT / target).is_file(), target
    for command in ("make study", "make test", "make test-cluster", "make docs"):
        assert command in readme  # .ci/run runs the README's test commands
