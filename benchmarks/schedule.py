"""How well a study's job order keeps the cores busy, without running it.

Reads Snakemake's dry run of the study (each job's rule, wildcards, input and output files and
`priority:`), prices each job with `ombrl plan`'s calibrated per-job costs (single-thread CPU
seconds, upper bounds for ensembles and evaluations), and simulates a list scheduler on
`--cores` one-thread slots: whenever a core is free, the ready job of highest priority starts,
ties broken at random (the order Snakemake's scheduler leaves open). It prints the makespan
with the workflow's priorities and with none, over `--trials` random tie-breaks, against the
floor (half the CPU time on 2 cores, or the longest chain if longer).

    .venv/bin/python benchmarks/schedule.py [--config config/config.yaml] [--cores 2]
        [--calibration FILE]  (made if missing or stale, as `ombrl plan` does)
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import subprocess
import sys
from functools import cache
from pathlib import Path

from ombrl.config import load_study, read_yaml
from ombrl.plan import DEFAULT_CALIBRATION, Job, Pricer, calibrate, is_current, load_calibration

ROOT = Path(__file__).resolve().parents[1]


def dry_run(config: str) -> list[dict]:
    """The dry run's jobs: rule, wildcards, input and output files, priority."""
    command = [sys.executable, "-m", "snakemake", "--dry-run", "--configfile", config]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    jobs: list[dict] = []
    for line in out.splitlines():
        text = line.strip()
        rule = re.fullmatch(r"(?:local)?rule (\w+):", text)
        if rule:
            jobs.append({"rule": rule.group(1), "wildcards": {}, "input": [], "output": []})
            jobs[-1]["priority"] = 0
        elif jobs and ":" in text:
            key, value = (part.strip() for part in text.split(":", 1))
            if key in ("input", "output"):
                jobs[-1][key] = [f.strip() for f in value.split(",")]
            elif key == "wildcards":
                pairs = (p.strip().split("=", 1) for p in value.split(",") if "=" in p)
                jobs[-1]["wildcards"] = dict(pairs)
            elif key == "priority":
                jobs[-1]["priority"] = int(value)
    return [job for job in jobs if job["rule"] != "all"]


def makespan(cost, deps, priority, cores: int, rng: random.Random) -> float:
    """Time until every job is done: a free core takes the ready job of highest priority."""
    now, done, running = 0.0, set(), []
    while len(done) < len(cost):
        busy = {job for _, job in running}
        ready = [j for j in cost if j not in done and j not in busy and deps[j] <= done]
        rng.shuffle(ready)
        ready.sort(key=priority, reverse=True)
        for job in ready[: cores - len(running)]:
            running.append((now + cost[job], job))
        running.sort()
        now, job = running.pop(0)
        done.add(job)
    return now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--calibration", type=Path, default=DEFAULT_CALIBRATION)
    args = parser.parse_args()
    if not is_current(args.calibration):
        calibrate(args.calibration)
    units = load_calibration(args.calibration)
    study = load_study(read_yaml(ROOT / args.config), args.config, ROOT)
    jobs = dry_run(args.config)
    pricer = Pricer(study, units, ROOT)
    cost = {i: pricer.job(Job(j["rule"], j["wildcards"])) for i, j in enumerate(jobs)}
    made_by = {f: i for i, j in enumerate(jobs) for f in j["output"]}
    deps = {i: {made_by[f] for f in j["input"] if f in made_by} for i, j in enumerate(jobs)}

    @cache
    def chain(i: int) -> float:  # the longest path of jobs ending with job i
        return cost[i] + max((chain(d) for d in deps[i]), default=0.0)

    floor = max(sum(cost.values()) / args.cores, max(chain(i) for i in cost))
    print(f"{args.config}: {len(jobs)} jobs, {sum(cost.values()):,.0f} CPU-s, floor {floor:.0f} s")
    rng = random.Random(0)
    for name, priority in [("none", lambda i: 0), ("workflow", lambda i: jobs[i]["priority"])]:
        spans = [makespan(cost, deps, priority, args.cores, rng) for _ in range(args.trials)]
        print(
            f"priorities {name:<9} makespan mean {statistics.mean(spans):.0f} s, "
            f"worst {max(spans):.0f} s, best {min(spans):.0f} s"
        )


if __name__ == "__main__":
    main()
