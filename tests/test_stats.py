"""Robust aggregates: hand-worked statistics, bootstrap coverage, the scores tables and figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import mannwhitneyu
from study_runner import papermill

from ombrl.cli import main
from ombrl.errors import OmbrlError
from ombrl.scores import aggregates, final_scores, final_scores_markdown, run_scores
from ombrl.stats import (
    final_score,
    iqm,
    optimality_gap,
    performance_profile,
    performance_profile_band,
    probability_of_improvement,
    stratified_bootstrap,
)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODES = {"bc": 30.0, "mopo-l5": 70.0, "sac": 5.0}  # mode: final level of its synthetic curve
METHOD_OF = {"bc": "bc", "mopo-l5": "aleatoric-penalty", "sac": "sac"}
DATASETS = {"hopper-medium-v2": 0.0, "walker2d-medium-v2": 10.0}  # dataset: shift of the levels


def mean(batch: np.ndarray) -> np.ndarray:
    return batch.mean(axis=(-2, -1))


def scores_table(seeds: int = 3, seed: int = 0) -> pd.DataFrame:
    """A synthetic scores.csv: every dataset, mode and seed evaluated at steps 0, 100, ..., 500."""
    rng = np.random.default_rng(seed)
    rows = []
    for dataset, shift in DATASETS.items():
        for mode, level in MODES.items():
            for s in range(seeds):
                for step in range(0, 501, 100):
                    score = min((level + shift) * step / 500 + rng.normal(0, 10), 100.0)
                    rows.append(
                        {
                            "dataset": dataset,
                            "mode": mode,
                            "method": METHOD_OF[mode],
                            "seed": s,
                            "step": step,
                            "return": 30 * score - 20,
                            "normalized_score": score,
                        }
                    )
    return pd.DataFrame(rows)


# --- the statistics on inputs small enough to work out by hand ---------------------------------


def test_iqm_is_the_mean_of_the_middle_half():
    # 8 scores: 25% cut from each end drops 2 each side -> mean(3, 4, 5, 6) = 18 / 4 = 4.5;
    # the outlier 100 does not move it.
    assert iqm([1, 2, 3, 4, 5, 6, 7, 100]) == 4.5
    # runs x tasks is pooled: the same 8 scores as a 4 x 2 matrix give the same IQM.
    assert iqm(np.array([[1, 5], [100, 3], [7, 2], [4, 6]])) == 4.5
    # 4 scores: 1 cut each side -> mean(2, 3) = 2.5.
    assert iqm([10, 3, 1, 2]) == 2.5
    # Leading axes are a batch: one IQM per entry.
    np.testing.assert_array_equal(
        iqm(np.array([[[1], [2], [3], [10]], [[0], [0], [4], [4]]])), [2.5, 2]
    )


def test_optimality_gap_counts_scores_above_the_threshold_as_the_threshold():
    # min(score, 100) = 50, 100, 100, 80 -> mean 330 / 4 = 82.5 -> gap 100 - 82.5 = 17.5.
    assert optimality_gap([50, 100, 120, 80]) == 17.5
    # threshold 90: 50, 90, 90, 80 -> mean 77.5 -> gap 12.5.
    assert optimality_gap([50, 100, 120, 80], threshold=90) == 12.5
    assert optimality_gap(np.array([[100, 110], [130, 100]])) == 0.0


def test_probability_of_improvement_counts_ties_as_half():
    # x = 1, 2, 3 against y = 2, 2: the 6 pairs are lose, lose, tie, tie, win, win
    # -> (2 wins + 2 ties / 2) / 6 = 3 / 6 = 0.5.
    assert probability_of_improvement([1, 2, 3], [2, 2]) == 0.5
    # x = 3, 4 against y = 1, 2, 3: 3 beats 1 and 2 and ties 3 (2.5), 4 beats all three (3)
    # -> 5.5 / 6.
    assert probability_of_improvement([3, 4], [1, 2, 3]) == pytest.approx(5.5 / 6)
    u = mannwhitneyu([3, 4], [1, 2, 3]).statistic
    assert probability_of_improvement([3, 4], [1, 2, 3]) == pytest.approx(u / 6)
    # Two tasks (columns): 0.5 on the first (as above), 1 on the second -> mean 0.75.
    x = np.array([[1, 5], [2, 6], [3, 7]])
    y = np.array([[2, 0], [2, 0]])
    assert probability_of_improvement(x, y) == 0.75
    assert probability_of_improvement(y, x) == 0.25  # P(X > Y) + P(Y > X) = 1


def test_performance_profile_is_the_fraction_strictly_above():
    # 10, 20, 30, 40: all four are above 0, three above 15, none above 40 (strictly).
    np.testing.assert_array_equal(performance_profile([10, 20, 30, 40], [0, 15, 40]), [1, 0.75, 0])
    low, high = performance_profile_band(np.array([[10, 30], [20, 40]]), [0, 15, 40])
    # Above 0 and 40 every resample agrees; above 15 the band stays within what 4 runs allow.
    assert (low[0], high[0], low[2], high[2]) == (1, 1, 0, 0)
    assert 0.5 <= low[1] <= high[1] <= 1


def test_final_score_averages_the_last_k_evaluations():
    progress = [10.0, 20.0, 30.0, 40.0]
    assert final_score(progress, 1) == 40.0  # the last evaluation itself
    assert final_score(progress, 3) == 30.0  # (20 + 30 + 40) / 3
    np.testing.assert_array_equal(final_score(np.array([progress, [0, 0, 3, 6]]), 2), [35, 4.5])
    with pytest.raises(ValueError, match="5 evaluations asked for, 4 present"):
        final_score(progress, 5)


def test_run_scores_orders_each_run_by_step():
    table = pd.DataFrame(
        {
            "dataset": "d",
            "mode": "bc",
            "seed": 0,
            "step": [300, 0, 200, 100],  # shuffled: the last three by step are 100, 200, 300
            "return": [4.0, 1.0, 3.0, 2.0],
            "normalized_score": [40.0, 10.0, 30.0, 20.0],
        }
    )
    last = run_scores(table, 1).iloc[0]
    assert (last["step"], last["normalized_score"], last["return"]) == (300, 40.0, 4.0)
    assert run_scores(table, 3).iloc[0]["normalized_score"] == 30.0  # (20 + 30 + 40) / 3
    with pytest.raises(OmbrlError, match="5 evaluations asked for, but dataset d mode bc seed 0"):
        run_scores(table, 5)
    for bad in (0, -1, 1.5):
        with pytest.raises(OmbrlError, match="last_k"):
            run_scores(table, bad)


# --- the stratified bootstrap ----------------------------------------------------------------


def coverage(n: int, draws: int = 1000) -> float:
    """How often the 95% interval of the mean of n N(10, 3) samples contains 10."""
    rng = np.random.default_rng(n)
    hits = 0
    for i in range(draws):
        low, high = stratified_bootstrap(mean, rng.normal(10.0, 3.0, n), seed=i)
        hits += low <= 10.0 <= high
    return hits / draws


def test_bootstrap_coverage_is_near_nominal_at_20_seeds_and_below_it_at_5():
    # Measured with these seeds: 0.919 at n = 20, 0.831 at n = 5 (1000 draws each, so about
    # +-0.01 of sampling error). The percentile bootstrap is too narrow for few runs: it
    # divides by n, not n - 1, and uses normal rather than t quantiles.
    at_20, at_5 = coverage(20), coverage(5)
    assert 0.90 <= at_20 <= 0.98
    assert 0.80 <= at_5 <= 0.90
    assert at_5 < at_20


def test_stratified_resampling_stays_within_each_task():
    # Task 0: every run scores 0; task 1: every run 100. Resampled within tasks, every
    # resample still holds four 0s and four 100s: the mean is 50 in all of them.
    matrix = np.array([[0.0, 100.0]] * 4)
    assert stratified_bootstrap(mean, matrix) == (50.0, 50.0)
    # Pooled and resampled as one task, resamples mix the tasks unevenly: a wide interval.
    low, high = stratified_bootstrap(mean, matrix.reshape(-1))
    assert low < 35 and high > 65
    # The same for P(improvement): x beats y on task 0 and loses on task 1 in every resample.
    x, y = np.array([[1.0, 0.0]] * 3), np.array([[0.0, 1.0]] * 3)
    assert stratified_bootstrap(probability_of_improvement, x, y) == (0.5, 0.5)


def test_one_task_bootstrap_is_the_previous_bootstrap_interval():
    # The interval the scores stage computed before this module: a plain bootstrap of the mean.
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 5, 10):
        values = rng.normal(40, 20, n)
        means = values[np.random.default_rng(0).integers(0, n, size=(2000, n))].mean(axis=1)
        tail = (1 - 0.95) / 2 * 100
        before = tuple(float(v) for v in np.percentile(means, [tail, 100 - tail]))
        assert stratified_bootstrap(mean, values) == before


# --- the scores tables -----------------------------------------------------------------------


def previous_final_scores(table: pd.DataFrame) -> pd.DataFrame:
    """ombrl.scores.final_scores as it was before last_k (commit df8e615), for comparison."""
    last = table.loc[table.groupby(["dataset", "mode", "seed"])["step"].idxmax()]
    rows = []
    for (dataset, mode), group in last.groupby(["dataset", "mode"], sort=True):
        scores = group["normalized_score"].to_numpy()
        rng = np.random.default_rng(0)
        means = scores[rng.integers(0, len(scores), size=(2000, len(scores)))].mean(axis=1)
        tail = (1 - 0.95) / 2 * 100  # 2.4999999999999982, as the code computed it
        low, high = np.percentile(means, [tail, 100 - tail])
        rows.append(
            {
                "dataset": dataset,
                "mode": mode,
                "seeds": len(scores),
                "step": int(group["step"].max()),
                "return_mean": float(group["return"].mean()),
                "normalized_mean": float(scores.mean()),
                "normalized_std": float(scores.std(ddof=0)),
                "normalized_ci_low": float(low),
                "normalized_ci_high": float(high),
            }
        )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seeds", [1, 2, 5])
def test_final_scores_with_k1_keep_the_previous_numbers(seeds):
    table = scores_table(seeds)
    before = previous_final_scores(table)
    after = final_scores(table, last_k=1)
    pd.testing.assert_frame_equal(after[before.columns], before, check_exact=True)
    # The seeds' scores kept beside read back exactly.
    per_seed = np.array([float(v) for v in after["seed_scores"].iloc[0].split(";")])
    assert per_seed.mean() == after["normalized_mean"].iloc[0]
    assert list(after["seed_ids"].iloc[0].split(";")) == [str(s) for s in range(seeds)]


def test_final_scores_with_k3_average_each_seeds_last_three_evaluations():
    table = scores_table(3)
    final = final_scores(table, last_k=3).set_index(["dataset", "mode"])
    runs = table[(table["dataset"] == "hopper-medium-v2") & (table["mode"] == "bc")]
    by_seed = [runs[runs["seed"] == s].sort_values("step")["normalized_score"] for s in range(3)]
    expected = [s.iloc[-3:].mean() for s in by_seed]
    row = final.loc[("hopper-medium-v2", "bc")]
    assert row["normalized_mean"] == pytest.approx(np.mean(expected))
    assert row["last_k"] == 3 and row["step"] == 500
    assert row["normalized_ci_low"] <= row["normalized_mean"] <= row["normalized_ci_high"]
    assert row["normalized_iqm_ci_low"] <= row["normalized_iqm"] <= row["normalized_iqm_ci_high"]


def test_final_scores_say_how_far_each_curve_still_rose_at_its_end():
    # Seed 0 climbs 10 points per evaluation; seed 1 is flat; seed 2 falls 5 per evaluation.
    curves = {0: [0, 10, 20, 30, 40, 50], 1: [7, 7, 7, 7, 7, 7], 2: [50, 45, 40, 35, 30, 25]}
    rows = [
        {
            "dataset": "d",
            "mode": "m",
            "seed": seed,
            "step": 100 * i,
            "return": v,
            "normalized_score": float(v),
        }
        for seed, curve in curves.items()
        for i, v in enumerate(curve)
    ]
    table = pd.DataFrame(rows)
    # Last 2 against the 2 before: (40+50)/2 - (20+30)/2 = 20; 0; (30+25)/2 - (40+35)/2 = -10.
    runs = run_scores(table, last_k=2).set_index("seed")
    assert runs["rise"].tolist() == [20.0, 0.0, -10.0]
    row = final_scores(table, last_k=2).iloc[0]
    assert row["rise_mean"] == pytest.approx(10 / 3) and row["rising_seeds"] == 1
    assert "| +3.3 (1 of 3 up) |" in final_scores_markdown(final_scores(table, last_k=2))
    # Six evaluations cannot hold two windows of four: no rise, said as such.
    short = final_scores(table, last_k=4).iloc[0]
    assert np.isnan(short["rise_mean"]) and np.isnan(short["rising_seeds"])
    assert final_scores_markdown(final_scores(table, last_k=4)).count("| - |") == 1


def test_aggregates_compare_every_mode_with_the_baseline():
    final = final_scores(scores_table(4))
    table = aggregates(final).set_index("mode")
    assert list(table.index) == sorted(MODES)
    assert (table["datasets"] == 2).all() and (table["seeds"] == 4).all()
    # mopo-l5 ends near 70-80, bc near 30-40: every mopo-l5 run beats every bc run.
    assert table.loc["mopo-l5", ["poi", "poi_ci_low", "poi_ci_high"]].tolist() == [1, 1, 1]
    assert table.loc["sac", "poi"] == 0
    assert np.isnan(table.loc["bc", "poi"]) and table.loc["bc", "note"] == "the baseline"
    for stat in ("iqm", "optimality_gap"):
        assert (table[f"{stat}_ci_low"] <= table[stat]).all()
        assert (table[stat] <= table[f"{stat}_ci_high"]).all()
    matrix = np.array([[float(v) for v in s.split(";")] for s in final["seed_scores"]])
    mopo = matrix[final["mode"] == "mopo-l5"].T  # seeds x datasets
    assert table.loc["mopo-l5", "iqm"] == pytest.approx(iqm(mopo), rel=1e-12)
    assert table.loc["mopo-l5", "optimality_gap"] == pytest.approx(optimality_gap(mopo), rel=1e-12)


def test_a_missing_default_baseline_is_a_note_and_a_named_one_an_error():
    final = final_scores(scores_table(2))
    without_bc = final[final["mode"] != "bc"]
    table = aggregates(without_bc)
    assert table["poi"].isna().all()
    assert (table["note"] == "no probability of improvement: baseline bc not run").all()
    assert table["iqm"].notna().all()
    with pytest.raises(
        OmbrlError, match=r"baseline 'bcc': no such mode .*\(modes: bc, mopo-l5, sac\)"
    ):
        aggregates(final, baseline="bcc", baseline_required=True)


# --- the command and the figures -------------------------------------------------------------


@pytest.fixture(scope="module")
def progress_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("runs")
    paths = []
    for (dataset, mode, seed), run in scores_table(3).groupby(["dataset", "mode", "seed"]):
        path = folder / dataset / mode / f"seed{seed}" / "progress.csv"
        path.parent.mkdir(parents=True)
        run.to_csv(path, index=False)
        paths.append(path)
    return paths


def scores_args(folder: Path, progress: list[Path], *flags: str) -> list[str]:
    output = ["--output", str(folder / "scores.csv"), "--final", str(folder / "final_scores.csv")]
    return ["scores", *map(str, progress), *output, *flags]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--last-k", "0"], "ombrl: error: ombrl scores: argument --last-k: 0 must be at least 1"),
        (["--last-k", "7"], "ombrl: error: last_k: 7 evaluations asked for, but dataset "),
        (["--last-k", "x"], "ombrl: error: ombrl scores: argument --last-k: 'x' is not an integer"),
        (
            ["--baseline", "bcc"],
            "ombrl: error: baseline 'bcc': no such mode in the scores (modes: ",
        ),
    ],
)
def test_scores_verb_rejects_bad_values_in_one_line(
    tmp_path, capsys, progress_files, flags, message
):
    try:
        code = main(scores_args(tmp_path, progress_files, *flags))
    except SystemExit as exit:  # argparse's own checks exit from inside parse_args
        code = exit.code
    stderr = capsys.readouterr().err
    assert code == 2 and stderr.startswith(message) and stderr.count("\n") == 1, stderr
    assert not (tmp_path / "scores.csv").exists()  # nothing written before the check


def test_scores_command_prints_one_line_and_exits_2(tmp_path, progress_files):
    """The installed `ombrl` as a user runs it (the cases above call its main in-process)."""
    done = subprocess.run(
        [str(BIN / "ombrl"), *scores_args(tmp_path, progress_files, "--baseline", "bcc")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == (
        "ombrl: error: baseline 'bcc': no such mode in the scores (modes: bc, mopo-l5, sac)\n"
    )


@pytest.fixture(scope="module")
def tables(tmp_path_factory, progress_files) -> Path:
    folder = tmp_path_factory.mktemp("tables")
    flags = ["--aggregates", str(folder / "aggregates.csv"), "--last-k", "2"]
    assert main(scores_args(folder, progress_files, *flags)) == 0
    return folder


def test_scores_verb_writes_both_tables_and_their_markdown(tables):
    final = pd.read_csv(tables / "final_scores.csv")
    assert (final["last_k"] == 2).all() and len(final) == len(MODES) * len(DATASETS)
    summary = pd.read_csv(tables / "aggregates.csv")
    assert list(summary["mode"]) == sorted(MODES)
    markdown = (tables / "aggregates.md").read_text()
    assert "| `mopo-l5` | 2 x 3 |" in markdown and "P(improvement over `bc`)" in markdown
    assert "| hopper-medium-v2 | `bc` | 3 |" in (tables / "final_scores.md").read_text()


def run_notebook(name: str, folder: Path, **parameters: str) -> subprocess.CompletedProcess:
    output = {"output_pdf": str(folder / f"figures/{name}.pdf")}
    return papermill(name, folder, {**parameters, **output})


def test_final_scores_notebook_draws_the_intervals(tmp_path, tables):
    done = run_notebook(
        "final_scores",
        tmp_path,
        final_csv=str(tables / "final_scores.csv"),
        aggregates_csv=str(tables / "aggregates.csv"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "figures/final_scores.pdf").read_bytes().startswith(b"%PDF")
    executed = json.loads((tmp_path / "final_scores.ipynb").read_text())
    summary = "".join(executed["cells"][-1]["outputs"][0]["data"]["text/plain"])
    assert "mopo-l5" in summary and "walker2d-medium-v2" in summary


def test_performance_profile_notebook_draws_every_mode(tmp_path, tables):
    done = run_notebook("performance_profile", tmp_path, final_csv=str(tables / "final_scores.csv"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "figures/performance_profile.pdf").read_bytes().startswith(b"%PDF")
    executed = json.loads((tmp_path / "performance_profile.ipynb").read_text())
    summary = "".join(executed["cells"][-1]["outputs"][0]["data"]["text/plain"])
    assert all(mode in summary for mode in MODES)


def test_a_method_column_is_carried_beside_the_mode():
    # scores.csv gains `method` after `mode` (a mode is the user's entry name, e.g. mopo-l5).
    final = final_scores(scores_table(2))
    assert list(final.columns[:3]) == ["dataset", "mode", "method"]
    summary = aggregates(final).set_index("mode")
    assert summary.loc["mopo-l5", "method"] == "aleatoric-penalty"


def test_aggregates_leave_out_modes_of_other_objectives_unless_asked():
    # A survival entry's score is the task return of a policy that never optimised it.
    table = scores_table(2)
    survival = table[table["mode"] == "sac"].assign(mode="alive", method="survival")
    final = final_scores(pd.concat([table, survival], ignore_index=True))
    assert "alive" not in set(aggregates(final)["mode"])
    assert set(aggregates(final, all_objectives=True)["mode"]) == {*MODES, "alive"}
    assert "alive" in set(final["mode"])
