"""`ombrl plan`: Snakemake's job counts, priced from a calibration measured here."""

import json
import resource
from pathlib import Path

import pytest
from study_runner import copy_workflow, scheduled, snakemake

from ombrl import plan as planner
from ombrl.cli import main
from ombrl.config import load_study, read_yaml
from ombrl.methods import METHODS
from ombrl.plan import (
    UNITS,
    Pricer,
    RulePlan,
    calibrate,
    dry_run_jobs,
    format_plan,
    is_current,
    plan,
)
from ombrl.runtime import code_version

pytestmark = pytest.mark.slow


def calibration(tmp_path: Path, **seconds: float) -> Path:
    """A calibration where every unit costs nothing but those given (seconds per call)."""
    units = {name: {"overhead_s": 0.0, "per_flop_s": 0.0} for name in [*UNITS, "startup"]}
    for name, value in seconds.items():
        units[name]["overhead_s"] = value
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"units": units}))
    return path


@pytest.mark.parametrize("study", ["config/d4rl.yaml", ".test/config_tiny/config.yaml"])
def test_the_plan_counts_the_jobs_of_snakemakes_dry_run(study, tmp_path):
    workdir = copy_workflow(tmp_path, study)
    stats = snakemake(workdir, "--dry-run", "--quiet", "rules", "--configfile", "study.yaml")
    assert stats.returncode == 0, stats.stderr[-2000:]
    expected = scheduled(stats)
    counts: dict[str, int] = {}
    for job in dry_run_jobs(Path("study.yaml"), workdir):
        counts[job.rule] = counts.get(job.rule, 0) + 1
    assert counts.pop("all") == 1
    assert counts == expected
    assert sum(expected.values()) > 15


def test_each_job_is_priced_from_its_settings(tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    copy_workflow(workdir, ".test/config_tiny/config.yaml")
    # One second per process start: every job but `all` costs exactly one second.
    rows = {
        r.rule: r for r in plan(Path("study.yaml"), calibration(tmp_path, startup=1.0), workdir)
    }
    assert rows["all"].cpu_hours == 0
    for rule, row in rows.items():
        if rule != "all":
            assert row.cpu_hours * 3600 == pytest.approx(row.jobs)
    # One second per SAC update: every update of the tiny study's SAC-family entries and of the
    # model-free references, priced in SAC updates (bc, morel and j-morel make none).
    modes = load_study(read_yaml(workdir / "study.yaml"), "tiny", root=workdir)["modes"]
    in_sac_units = {"sac", "td3_bc", "iql", "cql"}
    sac_updates = sum(
        e["steps"] for e in modes.values() if METHODS[e["method"]].module in in_sac_units
    )
    rows = {
        r.rule: r for r in plan(Path("study.yaml"), calibration(tmp_path, sac_update=1.0), workdir)
    }
    assert rows["train_policy"].cpu_hours * 3600 == pytest.approx(sac_updates)
    assert rows["train_ensemble"].cpu_hours == 0
    # One second per environment step: each learning entry's 3 evaluations (at 0, 50, 100 of
    # the 100-step modes; at iterations 0, 2, 4 of the NPG ones) and the planner's one
    # (pets), x 2 episodes x 1000 steps, and finetune's 100 online steps; plus 1500
    # collected; each online PETS run (2) its random episode and its planned episode of 1000.
    rows = {
        r.rule: r for r in plan(Path("study.yaml"), calibration(tmp_path, env_step=1.0), workdir)
    }
    planners = sum(METHODS[e["method"]].progress is None for e in modes.values())
    evaluations = (len(modes) - planners) * 3 + planners
    online = sum(e["steps"] for e in modes.values() if e["method"] == "finetune")
    assert online == 100
    assert rows["train_policy"].cpu_hours * 3600 == pytest.approx(evaluations * 2000 + online)
    assert rows["collect_dataset"].cpu_hours * 3600 == pytest.approx(1500)
    assert rows["pets_online"].cpu_hours * 3600 == pytest.approx(2 * 2 * 1000)
    text = format_plan(list(rows.values()), Path("study.yaml"))
    jobs = 1 + 1 + len(modes) + 1 + 1 + 1 + 4 + 2 + 1 + 1  # data, store, policies, ensemble,
    # its figure, scores, the four figures of the scores (avg_return, final_scores, profile,
    # sweep), two online PETS runs and their figure, all
    assert text.splitlines()[-1].split()[:2] == ["total", str(jobs)]


GENERATED = """seeds: [0]
tracking_uri: none
modes: {bc: {steps: 10}}
datasets:
  hop-medium:
    {source: generate, env: Hopper-v5, quality: medium, transitions: 100, behaviour: &run
      {env_steps: 3000, warmup: 1000, snapshot_every: 1000, eval_episodes: 2}}
  hop-replay: {source: generate, env: Hopper-v5, quality: medium-replay, behaviour: *run}
  hop-me: {source: generate, env: Hopper-v5, quality: medium-expert, transitions: 100,
           behaviour: *run}
"""


def test_behaviour_runs_and_generated_datasets_are_priced(tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    copy_workflow(workdir)
    (workdir / "study.yaml").write_text(GENERATED)
    jobs = dry_run_jobs(Path("study.yaml"), workdir)
    study = load_study(read_yaml(workdir / "study.yaml"), "study.yaml", root=workdir)

    def cost(rule: str, **seconds: float) -> float:
        units = json.loads(calibration(tmp_path, **seconds).read_text())["units"]
        pricer = Pricer(study, units, workdir)
        return sum(pricer.job(job) for job in jobs if job.rule == rule)

    # One behaviour run shared by three datasets: an update per step after the warmup.
    assert [job.rule for job in jobs].count("behaviour") == 1
    assert cost("behaviour", sac_update=1.0) == pytest.approx(3000 - 1000)
    # Its steps, then full 1000-step episodes: 2 per snapshot (steps 0, 1000, 2000, 3000) and
    # 10 each for the random and expert own references.
    assert cost("behaviour", env_step=1.0) == pytest.approx(3000 + (4 * 2 + 2 * 10) * 1000)
    # medium and medium-expert roll snapshots out (100 + 2 x 100 rows); medium-replay copies.
    assert cost("generate_dataset", env_step=1.0) == pytest.approx(300)


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def test_calibration_is_quick_and_scales_with_size(tmp_path):
    # CPU time, not wall time: on the shared 2-core machine other jobs stretch the wall clock.
    start = cpu_seconds()
    document = calibrate(tmp_path / "cal.json")
    assert cpu_seconds() - start < 20
    units = json.loads((tmp_path / "cal.json").read_text())["units"]
    assert units == document["units"]
    assert document["code_version"] == code_version() and is_current(tmp_path / "cal.json")
    assert set(units) == {*UNITS, "startup"}
    for name in ("ensemble_step", "sac_update", "bc_update", "model_step"):
        assert units[name]["per_flop_s"] > 0, name
    assert 0.1 < units["startup"]["overhead_s"] < 60


def test_the_first_plan_calibrates_itself_once_per_code_version(tmp_path, monkeypatch, capsys):
    measured = []

    def fake_calibrate(path: Path, budget: float = 0.3) -> dict:
        measured.append(path)
        document = {
            "code_version": code_version(),
            "units": {"startup": {"overhead_s": 1.0, "per_flop_s": 0.0}},
        }
        path.write_text(json.dumps(document))
        return document

    monkeypatch.setattr(planner, "calibrate", fake_calibrate)
    monkeypatch.setattr(planner, "plan", lambda *args, **kwargs: [RulePlan("all", 1, 0.0, 0.0)])
    cal = tmp_path / "cache" / "calibration.json"
    cal.parent.mkdir()
    command = ["plan", "--configfile", "study.yaml", "--calibration", str(cal)]

    assert main(command) == 0  # first use: calibrates, says so and how long it took, plans
    out = capsys.readouterr().out
    assert out.startswith("calibrated this machine (none yet for this code version) in ")
    assert "plan of study.yaml" in out and measured == [cal]
    assert main(command) == 0  # cached: plans at once
    assert "calibrated" not in capsys.readouterr().out and measured == [cal]
    # Made by other library code: stale, calibrated again.
    cal.write_text(json.dumps({"code_version": "0.1.0+000000000000", "units": {}}))
    assert not is_current(cal)
    assert main(command) == 0 and len(measured) == 2
    # --calibrate forces a new one even where the cached one is current.
    assert main([*command, "--calibrate"]) == 0 and len(measured) == 3
    assert "calibrated this machine in " in capsys.readouterr().out


def test_an_npg_iteration_is_priced_per_start_state_and_elite():
    """MOReL's paths are update_paths start states x the elites: the model's FLOPs per
    iteration grow with both (one second per model-step FLOP, nothing else costs)."""
    from ombrl.plan import DatasetInfo

    units = {name: {"overhead_s": 0.0, "per_flop_s": 0.0} for name in [*UNITS, "startup"]}
    units["model_step"]["per_flop_s"] = 1.0
    pricer = Pricer({}, units, Path("."))
    data = DatasetInfo(1000, 11, 3, 1000)
    params = {**settings_of("morel"), "update_paths": 10, "horizon": 7}
    ensemble = read_yaml(Path("config/ensembles/morel.yaml")) | {"predict_reward": False}

    def cost(update_paths: int, elites: int) -> float:
        return pricer.npg_iteration(
            data, params | {"update_paths": update_paths}, ensemble | {"num_elites": elites}
        )

    assert cost(20, 4) == pytest.approx(2 * cost(10, 4))
    assert cost(10, 2) == pytest.approx(cost(10, 4) / 2)
    assert cost(10, 8) == pytest.approx(cost(10, 4))  # elites beyond the members do not count


def settings_of(method: str) -> dict:
    from ombrl.config import resolve_mode

    return resolve_mode(method, {"ensemble": "-"}, "test")
