"""What the jobs of a loaded study would refuse, said before any of them runs.

`ombrl.config.load_study` checks what the config alone decides. These checks need a stage's
code: the controllers a collect job has, the planner a `pets` job builds. `check-config` and
the workflow's load call them; `load_study` does not, because every module it imports enters
the code fingerprint of every stage (`ombrl.fingerprint`), and an edit to the planner would
then rerun every job.
"""

from __future__ import annotations

from ombrl.methods import method_spec


def study_problems(study: dict, source: str) -> list[str]:
    """Every problem a job of `study` (as `load_study` returned it) would stop on, one line
    each, `source` naming the config."""
    from ombrl.data.collect import collect_problems

    problems = collect_problems(study["datasets"], source)
    planners = {
        name: entry
        for name, entry in study["modes"].items()
        if method_spec(entry["method"]).progress is None  # trains nothing: plans
    }
    if planners:
        from ombrl.planning.settings import planner_problems  # imports torch: planners only

        problems += planner_problems(planners, study["ensembles"], source)
    return problems
