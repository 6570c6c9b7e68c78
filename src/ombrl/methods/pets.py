"""Offline PETS (`pets`): plan with the ensemble trained on the dataset; train nothing.

A researcher with a dataset and an ensemble asks what planning in that model achieves, beside
the policies learned from the same model. This method answers with the PETS controller of
`ombrl.planning` (CEM or random shooting over action sequences, particles propagated through
the ensemble, one call per planning step) on the entry's ensemble as it is: its elites, in
the ensemble's order of merit (best first, so the one-network model types D and P plan with
the best member), and the task's reward and termination functions.

The planner's settings are a PETS preset (`config/pets/*.yaml`; its model-training keys are
not used) with the entry's `model_type`, `prop_type` and `opt_type` in place of the preset's
where given. Everything is checked against what the ensemble provides before the first
environment step: its dimensions against the task's, P/PE against a deterministic ensemble,
trajectory sampling's particles against the number of elites.

It trains nothing, so its progress is one evaluation (step 0): `evaluation.episodes` episodes
in the real environment, reset with the same seeds as every other method's evaluations,
planned one after another (the controller keeps a warm-started plan per episode). The
evaluation record adds what it cost: `actions` planned and `seconds_per_action`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ombrl.errors import OmbrlError
from ombrl.methods import Inputs
from ombrl.models.ensemble import DynamicsEnsemble
from ombrl.planning import (
    MPCAgent,
    PetsConfig,
    check_pets_config,
    entry_settings,
    make_agent,
    preset_path,
    run_episode,
)
from ombrl.tasks import Task, get_task
from ombrl.training.loop import Evaluation


class Planner:
    """What a `pets` job made: the planning model (the ensemble's elites) and its settings.

    Policy files hold `state_dict()` (the elites' weights) and `provenance` (the settings, the
    preset and the architecture that rebuild the same planner: `load_policy`).

    Args:
        model: the elites as an ensemble of their own, best first.
        cfg: the checked planner settings.
        preset: the preset file they came from.
        elites: the members of the source ensemble that `model` holds, in its order.
    """

    def __init__(
        self, model: DynamicsEnsemble, cfg: PetsConfig, preset: str, elites: list[int]
    ) -> None:
        self.model, self.cfg, self.preset, self.elites = model, cfg, preset, elites

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.model.state_dict())

    @property
    def provenance(self) -> dict:
        """What policy.json records beyond the entry's config."""
        return {
            "planner": {
                "preset": self.preset,
                "settings": self.cfg.to_dict(),
                "ensemble_elites": self.elites,
                "architecture": self.model.architecture,
            }
        }

    def agent(self, env_id: str, seed: int) -> MPCAgent:
        """A fresh controller on `env_id`'s task, its samples drawn from `seed`."""
        generator = torch.Generator().manual_seed(seed)
        return make_agent(self.model, get_task(env_id), self.cfg, generator)


def elite_ensemble(ensemble: DynamicsEnsemble) -> DynamicsEnsemble:
    """A copy of `ensemble` holding only its elites, in the order of `ensemble.elites`."""
    index = torch.tensor(ensemble.elites, device=ensemble.input_mean.device)
    model = DynamicsEnsemble(**{**ensemble.architecture, "num_models": len(ensemble.elites)})
    state = {
        name: value[index] if value.dim() == 3 and value.shape[0] == ensemble.num_models else value
        for name, value in ensemble.state_dict().items()
    }
    model.load_state_dict(state)
    return model.to(ensemble.input_mean.device).eval()


def check_dimensions(ensemble: DynamicsEnsemble, task: Task) -> None:
    """Refuse an ensemble trained on another task's data, before any planning.

    Raises:
        OmbrlError: its observation or action size is not the task's.
    """
    if (ensemble.obs_dim, ensemble.act_dim) != (task.obs_dim, task.act_dim):
        raise OmbrlError(
            f"pets: the ensemble predicts (obs {ensemble.obs_dim}, act {ensemble.act_dim}) but "
            f"{task.env_id} has (obs {task.obs_dim}, act {task.act_dim}): it was trained on "
            "another task's data"
        )


def make_planner(ensemble: DynamicsEnsemble, env_id: str, cfg: dict) -> Planner:
    """The planner of a `pets` entry, every setting checked against the ensemble.

    Args:
        ensemble: the trained ensemble (its elites plan).
        env_id: the task planned for.
        cfg: `preset` and the optional `model_type`, `prop_type`, `opt_type`, `particles`
            (schema keys, `ENTRY_KEYS`; None keeps the preset's).

    Raises:
        OmbrlError: another task's ensemble, an unknown preset, a bad or unfit setting.
    """
    task = get_task(env_id)
    check_dimensions(ensemble, task)
    model = elite_ensemble(ensemble)
    settings = entry_settings(cfg, env_id, model.num_models)
    path = str(preset_path(cfg["preset"], env_id))
    planner = Planner(model, settings, path, list(ensemble.elites))
    planner.agent(env_id, 0)  # P/PE on a deterministic ensemble fails here, before any step
    return planner


def plan_episodes(
    planner: Planner,
    env_id: str,
    seed: int,
    evaluation: Evaluation,
    progress: bool,
    desc: str,
) -> tuple[list[float], list[int], float]:
    """Plan `evaluation.episodes` episodes in `env_id`, episode i reset with
    `evaluation.seed + i` (the resets of every method's evaluations).

    Returns:
        Each episode's return and length, and the seconds spent acting (planning included).
    """
    try:
        env = gym.make(env_id)
    except gym.error.Error as err:
        raise OmbrlError(f"env: cannot make {env_id!r} ({err})") from err
    agent = planner.agent(env_id, seed)
    returns, lengths = [], []
    start = time.perf_counter()
    with tqdm(desc=desc, unit="action", disable=not progress) as bar:
        for i in range(evaluation.episodes):
            agent.reset()
            episode = run_episode(env, agent.act, evaluation.seed + i, bar)
            returns.append(episode.total)
            lengths.append(len(episode.actions))
            bar.set_postfix(ret=f"{episode.total:.1f}")
    env.close()
    return returns, lengths, time.perf_counter() - start


def train(method: str, cfg: dict, inputs: Inputs, on_eval: Callable[[dict], None]) -> Planner:
    """Plan with `inputs.ensemble` and report the one evaluation (step 0).

    Args:
        method: "pets".
        cfg: the resolved `pets` section (`ensemble`, `preset`, `model_type`, `prop_type`,
            `opt_type`).
        inputs: dataset, ensemble, seed (the planner's samples), device, evaluation.
        on_eval: receives the evaluation record: step 0, return, return_std, actions,
            seconds_per_action.

    Raises:
        OmbrlError: any unfit setting or ensemble (`make_planner`), before any step.
    """
    ensemble = inputs.require_ensemble(method)
    planner = make_planner(ensemble, inputs.env_id, cfg)
    returns, lengths, seconds = plan_episodes(
        planner,
        inputs.env_id,
        inputs.seed,
        inputs.evaluation,
        inputs.progress,
        f"{method} seed {inputs.seed}",
    )
    actions = int(sum(lengths))
    on_eval(
        {
            "step": 0,
            "return": float(np.mean(returns)),
            "return_std": float(np.std(returns)),
            "actions": actions,
            "seconds_per_action": seconds / max(1, actions),
        }
    )
    return planner


def load_policy(
    meta: dict, tensors: dict[str, Tensor], device: torch.device, seed: int
) -> Callable[[np.ndarray], np.ndarray]:
    """The controller a `pets` job planned with, from its policy files (`Planner`), acting
    on one observation at a time; its samples drawn from `seed`."""
    record = meta["planner"]
    model = DynamicsEnsemble(**record["architecture"])
    model.load_state_dict(tensors)
    # Policy files written before PETS had these model-training keys (which a planner does not
    # use) load with the values PETS had then.
    cfg = PetsConfig(**{"obs_preproc": "none", "normalization": "std", **record["settings"]})
    check_pets_config(cfg)
    planner = Planner(model.to(device).eval(), cfg, record["preset"], record["ensemble_elites"])
    agent = planner.agent(meta["env_id"], seed)
    return agent.act
