"""The study's `scores:` settings, and the runs table that leads from a score to its job."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ombrl.cli import main
from ombrl.config import load_study, read_yaml
from ombrl.errors import OmbrlError

ROOT = Path(__file__).resolve().parents[1]


def default_study() -> dict:
    return read_yaml(ROOT / "config" / "config.yaml")


def test_scores_settings_default_to_the_last_evaluation_and_the_expert():
    study = load_study(default_study(), "config.yaml", root=ROOT)
    assert study["scores"] == {"last_k": 1, "baseline": None, "optimality_threshold": 100}


@pytest.mark.parametrize(
    "scores, message",
    [
        ({"last_k": 0}, "study.yaml: scores.last_k: 0 is less than the minimum of 1"),
        ({"last_k": 2.5}, "study.yaml: scores.last_k: 2.5 is not of type 'integer'"),
        ({"baseline": "cql"}, "study.yaml: scores.baseline: 'cql' is not an entry of modes"),
        ({"lastk": 3}, "study.yaml: scores.lastk: unknown key"),
    ],
)
def test_a_bad_scores_setting_is_one_line_naming_the_key(scores, message):
    bad = default_study()
    bad["scores"] = scores
    with pytest.raises(OmbrlError) as info:
        load_study(bad, "study.yaml", root=ROOT)
    lines = str(info.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines


def test_a_bad_scores_setting_stops_the_workflow_before_any_job(tmp_path):
    study = default_study()
    study["scores"] = {"last_k": 0, "baseline": "cql"}
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(study))
    result = subprocess.run(
        [sys.executable, "-m", "ombrl.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"ombrl: error: {path}: scores.last_k: 0 is less than the minimum of 1"
    ]


def write_run(root: Path, dataset: str, mode: str, seed: int, run_id: str | None) -> Path:
    """A policy folder as a job leaves it: progress.csv and policy.json (synthetic numbers)."""
    folder = root / dataset / "policies" / mode / f"seed{seed}"
    folder.mkdir(parents=True)
    rows = [
        {
            "dataset": dataset,
            "mode": mode,
            "method": mode,
            "seed": seed,
            "step": step,
            "return": 10.0 * step + seed,
            "normalized_score": step + seed,
        }
        for step in (0, 100, 200)
    ]
    pd.DataFrame(rows).to_csv(folder / "progress.csv", index=False)
    meta = {
        "dataset": dataset,
        "mode": mode,
        "method": mode,
        "seed": seed,
        "code_version": f"0.1+{mode}{seed}",
        "mlflow_run_id": run_id,
    }
    (folder / "policy.json").write_text(json.dumps({"meta": meta}))
    return folder / "progress.csv"


def test_the_runs_table_maps_every_row_of_the_scores_to_its_folder(tmp_path):
    files = [
        write_run(tmp_path / "results", d, m, s, f"run-{d}-{m}-{s}" if m == "bc" else None)
        for d in ("a", "b")
        for m in ("bc", "sac")
        for s in (0, 1)
    ]
    out = tmp_path / "tables"
    argv = ["scores", *map(str, reversed(files)), "--output", str(out / "scores.csv")]
    argv += ["--final", str(out / "final.csv"), "--runs", str(out / "runs.csv")]
    assert main(argv) == 0
    scores = pd.read_csv(out / "scores.csv")
    runs = pd.read_csv(out / "runs.csv", keep_default_na=False)
    assert len(runs) == 8
    joined = scores.merge(runs, on=["dataset", "mode", "seed"], how="left", validate="m:1")
    assert joined["output"].notna().all() and len(joined) == len(scores)
    for row in joined.itertuples():
        assert Path(row.output, "progress.csv").is_file()
        assert f"/{row.dataset}/policies/{row.mode}/seed{row.seed}" in row.output
        assert row.code_version == f"0.1+{row.mode}{row.seed}"
        expected = f"run-{row.dataset}-{row.mode}-{row.seed}" if row.mode == "bc" else ""
        assert row.mlflow_run_id == expected
    # scores.csv holds no provenance column: it stays the same on every machine.
    assert not {"output", "mlflow_run_id", "code_version"} & set(scores.columns)


def test_a_run_without_policy_json_is_a_one_line_error(tmp_path):
    progress = write_run(tmp_path, "a", "bc", 0, None)
    (progress.parent / "policy.json").unlink()
    argv = [
        "scores",
        str(progress),
        "--output",
        str(tmp_path / "s.csv"),
        "--final",
        str(tmp_path / "f.csv"),
        "--runs",
        str(tmp_path / "r.csv"),
    ]
    assert main(argv) == 2
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.slow
@pytest.mark.parametrize("tracking", ["store", "none"])
def test_a_policy_job_records_its_mlflow_run_in_policy_json(
    tracking, tmp_path, tracking_store, monkeypatch
):
    from mlflow.tracking import MlflowClient

    data = tmp_path / "data.hdf5"
    assert (
        main(
            [
                "collect",
                "--env",
                "InvertedPendulum-v5",
                "--policy",
                "random",
                "--transitions",
                "300",
                "--output",
                str(data),
                "--quiet",
            ]
        )
        == 0
    )
    uri = tracking_store if tracking == "store" else "none"
    out = tmp_path / "policy"
    argv = [
        "train-policy",
        "--dataset",
        str(data),
        "--mode",
        "bc",
        "--params",
        "steps=20",
        "hidden_size=8",
        "--eval-every",
        "10",
        "--eval-episodes",
        "1",
        "--quiet",
        "--checkpoint-every",
        "0",
        "--output",
        str(out),
        "--tracking-uri",
        uri,
    ]
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the flag decides here
    assert main(argv) == 0
    tables = tmp_path / "tables"
    assert (
        main(
            [
                "scores",
                str(out / "progress.csv"),
                "--output",
                str(tables / "s.csv"),
                "--final",
                str(tables / "f.csv"),
                "--runs",
                str(tables / "runs.csv"),
            ]
        )
        == 0
    )
    runs = pd.read_csv(tables / "runs.csv", keep_default_na=False)
    assert list(runs["output"]) == [out.as_posix()]
    run_id = runs["mlflow_run_id"].iloc[0]
    if tracking == "none":
        assert run_id == ""
    else:
        run = MlflowClient(tracking_uri=uri).get_run(run_id)
        assert run.data.tags["mode"] == "bc" and run.info.status == "FINISHED"
    assert "mlflow_run_id" not in json.loads((out / "eval.json").read_text())
