"""ombrl's td3-bc, iql and cql against d3rlpy 2.8.1 on the same data, with the same
hyperparameters (passed explicitly to both and written to the output), the same number of
updates, the same evaluation episodes (ombrl's evaluator for both, the same episode seeds),
for every seed: the normalized score at every evaluation (curves) and updates per second.

d3rlpy runs in its own virtual environment (benchmarks/d3rlpy_venv.sh; it pins gymnasium 1.0.0,
so it is never an ombrl dependency) through benchmarks/d3rlpy_worker.py, which saves its
policy (TorchScript) at every evaluation point; this script evaluates those here.

    bash benchmarks/d3rlpy_venv.sh .venv-d3rlpy
    python benchmarks/d3rlpy_compare.py --dataset resources/datasets/pendulum-medium.hdf5 \
        --methods td3-bc iql cql --steps 20000 --eval-every 1000 --episodes 10 \
        --seeds 0 1 2 --output results/d3rlpy-compare

Writes OUTPUT/curves.csv (library, method, seed, step, return, normalized_score),
OUTPUT/speed.csv (library, method, seed, updates, train_seconds, updates_per_second),
OUTPUT/hyperparameters.json and prints the final scores and speeds side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ombrl.config import resolve_mode
from ombrl.data.d4rl import load_dataset
from ombrl.data.dataset import Dataset
from ombrl.data.scores import normalized_score
from ombrl.evaluate import continuous_spaces, evaluate
from ombrl.methods import Inputs, method_module
from ombrl.training import loop
from ombrl.training.loop import Evaluation

#: The keys both libraries receive for each method (values: the ombrl defaults unless
#: --params overrides them), and the d3rlpy names they map to (benchmarks/d3rlpy_worker.py).
SHARED = {
    "td3-bc": [
        "hidden_size",
        "batch_size",
        "gamma",
        "tau",
        "lr",
        "alpha",
        "policy_noise",
        "noise_clip",
        "policy_delay",
        "normalize_states",
    ],
    "iql": [
        "hidden_size",
        "batch_size",
        "gamma",
        "tau",
        "lr",
        "expectile",
        "beta",
        "max_weight",
        "actor_schedule",
        "normalize_states",
        "normalize_rewards",
    ],
    "cql": [
        "hidden_size",
        "batch_size",
        "gamma",
        "tau",
        "actor_lr",
        "critic_lr",
        "min_q_weight",
        "n_actions",
        "backup_entropy",
        "normalize_states",
    ],
}
EVAL_SEED = 1000


def settings(method: str, steps: int, overrides: dict) -> dict:
    """The method's resolved ombrl settings (schema defaults, then the overrides)."""
    cfg = resolve_mode(method, {"steps": steps, **overrides}, "d3rlpy_compare")
    cfg.pop("method")
    return cfg


def run_ombrl(method: str, cfg: dict, data: Dataset, seed: int, every: int, episodes: int):
    """Curve records and training seconds (evaluations excluded) of one ombrl run."""
    spent = {"eval": 0.0}
    real_evaluate = loop.evaluate

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real_evaluate(*args, **kwargs)
        finally:
            spent["eval"] += time.perf_counter() - start

    records: list[dict] = []
    loop.evaluate = timed
    try:
        torch.set_num_threads(1)
        start = time.perf_counter()
        inputs = Inputs(
            data.env_id,
            data,
            None,
            seed,
            torch.device("cpu"),
            Evaluation(every, episodes, EVAL_SEED),
            False,
        )
        method_module(method).train(method, cfg, inputs, records.append)
        seconds = time.perf_counter() - start - spent["eval"]
    finally:
        loop.evaluate = real_evaluate
    return [(r["step"], r["return"]) for r in records], seconds


def run_d3rlpy(
    python: Path,
    method: str,
    cfg: dict,
    data_npz: Path,
    seed: int,
    every: int,
    episodes: int,
    env_id: str,
    out: Path,
):
    """Curve records and training seconds of one d3rlpy run (its policies evaluated here)."""
    job = {
        "data": str(data_npz),
        "method": method,
        "params": {k: cfg[k] for k in SHARED[method]},
        "seed": seed,
        "steps": cfg["steps"],
        "eval_every": every,
        "output": str(out),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.json").write_text(json.dumps(job, indent=1))
    worker = Path(__file__).with_name("d3rlpy_worker.py")
    subprocess.run([str(python), str(worker), str(out / "job.json")], check=True)
    saves = json.loads((out / "saves.json").read_text())
    curve = []
    for save in saves:
        policy = torch.jit.load(save["policy"])

        def act(obs: np.ndarray, policy=policy) -> np.ndarray:
            with torch.no_grad():
                return policy(torch.as_tensor(obs, dtype=torch.float32)).numpy()

        curve.append((save["step"], float(np.mean(evaluate(act, env_id, episodes, EVAL_SEED)))))
    return curve, saves[-1]["train_seconds"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="HDF5 path or D4RL name (ombrl's loader)")
    p.add_argument("--methods", nargs="+", default=list(SHARED), choices=list(SHARED))
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--params", nargs="*", default=[], help="KEY=JSON overrides, every method")
    p.add_argument("--venv", default=".venv-d3rlpy", help="the d3rlpy virtual environment")
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    python = Path(args.venv) / "bin" / "python"
    if not python.exists():
        sys.exit(f"{python}: not found; run: bash benchmarks/d3rlpy_venv.sh {args.venv}")
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.params)}
    data = load_dataset(args.dataset, None, False)
    _, act_space = continuous_spaces(data.env_id)
    data_npz = out / "data.npz"
    np.savez(
        data_npz,
        observations=data.observations,
        actions=data.actions,
        rewards=data.rewards,
        terminals=data.terminals,
        timeouts=data.timeouts,
        action_low=act_space.low,
        action_high=act_space.high,
    )
    curves, speeds, hyper = [], [], {}
    for method in args.methods:
        cfg = settings(
            method, args.steps, {k: v for k, v in overrides.items() if k in SHARED[method]}
        )
        hyper[method] = {"steps": args.steps, **{k: cfg[k] for k in SHARED[method]}}
        for seed in args.seeds:
            runs = {
                "ombrl": run_ombrl(method, cfg, data, seed, args.eval_every, args.episodes),
                "d3rlpy": run_d3rlpy(
                    python,
                    method,
                    cfg,
                    data_npz,
                    seed,
                    args.eval_every,
                    args.episodes,
                    data.env_id,
                    out / "d3rlpy" / f"{method}-seed{seed}",
                ),
            }
            for library, (curve, seconds) in runs.items():
                for step, ret in curve:
                    score = normalized_score(ret, data.ref_min_score, data.ref_max_score)
                    curves.append((library, method, seed, step, ret, score))
                speeds.append((library, method, seed, args.steps, seconds, args.steps / seconds))
    curves_df = pd.DataFrame(
        curves, columns=["library", "method", "seed", "step", "return", "normalized_score"]
    )
    speed_df = pd.DataFrame(
        speeds,
        columns=["library", "method", "seed", "updates", "train_seconds", "updates_per_second"],
    )
    curves_df.to_csv(out / "curves.csv", index=False)
    speed_df.to_csv(out / "speed.csv", index=False)
    (out / "hyperparameters.json").write_text(
        json.dumps(
            {
                "dataset": args.dataset,
                "episodes": args.episodes,
                "eval_every": args.eval_every,
                "seeds": args.seeds,
                "methods": hyper,
            },
            indent=1,
        )
    )
    final = curves_df[curves_df["step"] == args.steps]
    table = final.pivot_table(
        index="method", columns="library", values="normalized_score", aggfunc=["mean", "min", "max"]
    )
    print(table.round(1).to_string())
    print(speed_df.groupby(["method", "library"])["updates_per_second"].mean().round(1).to_string())


if __name__ == "__main__":
    main()
