"""The d3rlpy side of benchmarks/d3rlpy_compare.py; runs in the d3rlpy virtual environment
(benchmarks/d3rlpy_venv.sh), never in ombrl's.

Trains one d3rlpy 2.8.1 algorithm on the arrays of a .npz file with the hyperparameters it is
given, and saves the policy (TorchScript, observation and action scalers included) at update 0
and every `eval_every` updates, with the seconds spent in updates so far. Evaluation is not
done here: d3rlpy_compare.py evaluates both libraries' policies with ombrl's evaluator, in the
same environment and on the same episode seeds.

    python d3rlpy_worker.py JOB.json    # {"data", "method", "params", "seed", "steps",
                                        #  "eval_every", "output"}
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import d3rlpy
import numpy as np
from d3rlpy.algos.utility import build_scalers_with_transition_picker
from d3rlpy.models import VectorEncoderFactory
from d3rlpy.optimizers import AdamFactory
from d3rlpy.optimizers.lr_schedulers import CosineAnnealingLRFactory
from d3rlpy.preprocessing import (
    MinMaxActionScaler,
    ReturnBasedRewardScaler,
    StandardObservationScaler,
)


def config(method: str, p: dict, low: np.ndarray, high: np.ndarray, steps: int):
    """The d3rlpy config of `method` with every shared hyperparameter passed explicitly.

    Actions are scaled to [-1, 1] (`MinMaxActionScaler` on the environment's bounds), the
    space ombrl's tanh policies and the papers work in.
    """
    encoder = VectorEncoderFactory(hidden_units=p["hidden_size"])
    common = dict(
        batch_size=p["batch_size"],
        gamma=p["gamma"],
        tau=p["tau"],
        action_scaler=MinMaxActionScaler(minimum=low, maximum=high),
        actor_encoder_factory=encoder,
        critic_encoder_factory=encoder,
        n_critics=2,
    )
    if method == "td3-bc":
        return d3rlpy.algos.TD3PlusBCConfig(
            **common,
            actor_learning_rate=p["lr"],
            critic_learning_rate=p["lr"],
            alpha=p["alpha"],
            target_smoothing_sigma=p["policy_noise"],
            target_smoothing_clip=p["noise_clip"],
            update_actor_interval=p["policy_delay"],
            observation_scaler=StandardObservationScaler() if p["normalize_states"] else None,
        )
    if method == "iql":
        schedule = (
            CosineAnnealingLRFactory(T_max=steps) if p["actor_schedule"] == "cosine" else None
        )
        return d3rlpy.algos.IQLConfig(
            **common,
            value_encoder_factory=encoder,
            actor_learning_rate=p["lr"],
            critic_learning_rate=p["lr"],
            actor_optim_factory=AdamFactory(lr_scheduler_factory=schedule),
            expectile=p["expectile"],
            weight_temp=p["beta"],
            max_weight=p["max_weight"],
            observation_scaler=StandardObservationScaler() if p["normalize_states"] else None,
            reward_scaler=(
                ReturnBasedRewardScaler(multiplier=1000.0) if p["normalize_rewards"] else None
            ),
        )
    if method == "cql":
        return d3rlpy.algos.CQLConfig(
            **common,
            actor_learning_rate=p["actor_lr"],
            critic_learning_rate=p["critic_lr"],
            temp_learning_rate=p["actor_lr"],
            alpha_learning_rate=0.0,  # no Lagrange dual: the weight stays conservative_weight
            initial_alpha=1.0,
            initial_temperature=1.0,
            conservative_weight=p["min_q_weight"],
            n_action_samples=p["n_actions"],
            soft_q_backup=p["backup_entropy"],
            max_q_backup=False,
            observation_scaler=StandardObservationScaler() if p["normalize_states"] else None,
        )
    raise SystemExit(f"unknown method {method!r}")


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    out = Path(job["output"])
    out.mkdir(parents=True, exist_ok=True)
    data = np.load(job["data"])
    dataset = d3rlpy.dataset.MDPDataset(
        observations=data["observations"],
        actions=data["actions"],
        rewards=data["rewards"],
        terminals=data["terminals"].astype(np.float32),
        timeouts=data["timeouts"].astype(np.float32),
    )
    d3rlpy.seed(job["seed"])
    algo = config(
        job["method"], job["params"], data["action_low"], data["action_high"], job["steps"]
    ).create(device="cpu:0")
    # What fit() does first (scalers fitted on the dataset, networks built), so that the
    # untrained policy can be saved as step 0.
    build_scalers_with_transition_picker(algo, dataset)
    algo.build_with_dataset(dataset)
    every, clock = job["eval_every"], {"train": 0.0, "last": time.perf_counter()}
    saves = []

    def save(step: int) -> None:
        clock["train"] += time.perf_counter() - clock["last"]
        path = out / f"policy-{step:09d}.pt"
        algo.save_policy(str(path))
        saves.append({"step": step, "policy": str(path), "train_seconds": clock["train"]})
        clock["last"] = time.perf_counter()

    def callback(algo, epoch: int, total_step: int) -> None:
        if total_step % every == 0 or total_step == job["steps"]:
            save(total_step)

    save(0)
    algo.fit(
        dataset,
        n_steps=job["steps"],
        n_steps_per_epoch=min(every, job["steps"]),
        callback=callback,
        show_progress=False,
        logger_adapter=d3rlpy.logging.NoopAdapterFactory(),
        save_interval=job["steps"] + 1,
    )
    (out / "saves.json").write_text(json.dumps(saves, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
