"""The policy training loop and evaluation, on a tiny InvertedPendulum-v5 dataset."""

from __future__ import annotations

from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch

from ombrl.agents.bc import BC, BCConfig
from ombrl.agents.cql import CQLConfig
from ombrl.agents.iql import IQLConfig
from ombrl.agents.npg import NPGConfig
from ombrl.agents.sac import SAC, SACConfig
from ombrl.agents.td3_bc import TD3BCConfig
from ombrl.config import SCHEMA, build, resolve_mode
from ombrl.data.dataset import Dataset
from ombrl.errors import OmbrlError
from ombrl.evaluate import evaluate
from ombrl.methods import METHODS, Inputs, method_module, method_spec
from ombrl.methods.sac import PESSIMISM
from ombrl.models.ensemble import DynamicsEnsemble
from ombrl.models.pessimism import (
    ObjectiveRule,
    PartitionRule,
    PenaltyRule,
    RolloutConfig,
    resolve_pessimism,
)
from ombrl.models.uncertainty import dataset_uncertainty
from ombrl.tasks import get_task
from ombrl.training.loop import Evaluation

ENV = "InvertedPendulum-v5"
GAIN = np.array([2.0, 10.0, 1.0, 1.0])  # a = K s balances InvertedPendulum-v5


def collect(transitions: int) -> Dataset:
    """A noisy balancing controller (even episodes) and random actions (odd ones)."""
    env = gym.make(ENV)
    rng = np.random.default_rng(0)
    rows: dict[str, list] = {k: [] for k in ("obs", "act", "rew", "next", "term", "trunc", "ep")}
    obs, _ = env.reset(seed=0)
    episode, steps = 0, 0
    for _ in range(transitions):
        expert = episode % 2 == 0
        act = np.clip(GAIN @ obs + rng.normal(0, 1.0), -3, 3) if expert else rng.uniform(-3, 3)
        next_obs, rew, term, _, _ = env.step(np.array([act]))
        steps += 1
        trunc = steps == 100
        for key, value in zip(rows, (obs, [act], rew, next_obs, term, trunc, episode), strict=True):
            rows[key].append(value)
        obs = next_obs
        if term or trunc:
            episode, steps = episode + 1, 0
            obs, _ = env.reset(seed=episode)
    env.close()
    arr = {k: np.asarray(v) for k, v in rows.items()}
    return Dataset(
        observations=arr["obs"].astype(np.float32),
        actions=arr["act"].astype(np.float32),
        rewards=arr["rew"].astype(np.float32),
        next_observations=arr["next"].astype(np.float32),
        terminals=arr["term"],
        timeouts=arr["trunc"],
        episode_ids=arr["ep"].astype(np.int64),
        env_id=ENV,
    )


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return collect(1000)


def tiny_ensemble(data: Dataset) -> DynamicsEnsemble:
    """A 3-member probabilistic ensemble (untrained weights) normalised to the data."""
    torch.manual_seed(0)
    model = DynamicsEnsemble(4, 1, [16], 3, True, "swish", False)
    inputs = torch.as_tensor(np.concatenate([data.observations, data.actions], 1))
    delta = torch.as_tensor(data.next_observations - data.observations)
    model.set_normalizers(inputs.mean(0), inputs.std(0), delta.mean(0), delta.std(0))
    model.elites = [0, 2]
    return model.eval()


def settings(mode: str, **params) -> dict:
    """A method's resolved settings, as a job receives them (schema defaults filled in)."""
    resolved = resolve_mode(mode, params, "test")
    resolved.pop("method")
    return resolved


def mopo_config(steps: int, mode: str = "mopo", **extra) -> dict:
    """A small config of a model-based mode: small rounds for a mode that rolls out in rounds
    (a thesis mode's persistent rollouts refuse them), schema defaults for every other key."""
    scheme = settings(mode, ensemble="tiny")["rollout_scheme"]
    rounds = {"rollout_batch": 200, "rollout_every": 100, "model_retain_epochs": 2}
    params = {
        "ensemble": "tiny",
        "steps": steps,
        "hidden_size": [32, 32],
        "lr": 1e-3,
        "batch_size": 64,
        "rollout_length": 3,
        **(rounds if scheme == "rounds" else {}),
        "real_ratio": 0.25,
        **extra,
    }
    return settings(mode, **params)


def run(mode, data, ensemble, cfg, seed=0, eval_every=120, episodes=2) -> tuple[object, list]:
    records: list[dict] = []
    inputs = Inputs(
        data.env_id,
        data,
        ensemble,
        seed,
        torch.device("cpu"),
        Evaluation(eval_every, episodes, seed=1000),
        progress=False,
    )
    agent = method_module(mode).train(mode, cfg, inputs, records.append)
    return agent, records


def test_aleatoric_penalty_loop_evaluates_on_schedule_and_is_reproducible(dataset) -> None:
    model = tiny_ensemble(dataset)
    agent, records = run("mopo", dataset, model, mopo_config(300))
    assert isinstance(agent, SAC) and agent.step == 300
    assert [r["step"] for r in records] == [0, 120, 240, 300]
    assert set(records[0]) == {"step", "return", "return_std"}
    for r in records[1:]:
        assert {"critic_loss", "actor_loss", "alpha", "q_mean", "rollout_uncertainty"} <= set(r)
        assert r["rollout_uncertainty"] > 0 and 0 < r["rollout_length"] <= 3
        assert all(np.isfinite(v) for v in r.values())
    _, again = run("mopo", dataset, model, mopo_config(300))
    assert again == records
    _, other = run("mopo", dataset, model, mopo_config(300), seed=1)
    assert other[-1]["critic_loss"] != records[-1]["critic_loss"]


def test_penalty_changes_training(dataset) -> None:
    """lambda enters the rewards SAC learns from: a huge penalty drives Q far below zero."""
    model = tiny_ensemble(dataset)
    cfg = mopo_config(100)
    _, plain = run("mopo", dataset, model, cfg, eval_every=100, episodes=1)
    cfg["penalty_lambda"] = 100.0
    _, harsh = run("mopo", dataset, model, cfg, eval_every=100, episodes=1)
    assert harsh[-1]["rollout_reward"] < plain[-1]["rollout_reward"] - 10
    assert harsh[-1]["q_mean"] < plain[-1]["q_mean"]


def test_bc_loop_evaluates_at_start_every_interval_and_end(dataset) -> None:
    cfg = settings("bc", steps=60, hidden_size=[32], lr=1e-3, batch_size=64)
    agent, records = run("bc", dataset, None, cfg, eval_every=25)
    assert isinstance(agent, BC)
    assert [r["step"] for r in records] == [0, 25, 50, 60]
    assert records[1]["bc_loss"] > records[3]["bc_loss"]


def test_every_method_resolves_to_configs_of_the_schema_vocabulary() -> None:
    """Every registered method's section exists, and its defaults build its dataclasses."""
    agents = {
        "bc": BCConfig,
        "sac": SACConfig,
        "morel": NPGConfig,
        "td3_bc": TD3BCConfig,
        "iql": IQLConfig,
        "cql": CQLConfig,
    }
    for name, spec in METHODS.items():
        assert spec.section in SCHEMA["$defs"], name
        params = {"ensemble": "pnn"} if spec.needs_ensemble else {}
        cfg = settings(name, **params)
        if spec.progress is None:  # a planner: its settings are a preset (test_pets_offline)
            assert cfg["preset"] == "small"
            continue
        assert cfg["iterations" if spec.module == "morel" else "steps"] >= 1
        build(agents[spec.module], cfg)
        if spec.module == "sac" and spec.needs_ensemble:
            build(RolloutConfig, cfg)
    upstream = {  # the defaults DESIGN.md names: MOPO's and offline-model-based-rl's choices
        "mopo": ("max_norm", "sampled"),
        "aleatoric-penalty": ("max_var", "mean"),
        "aleatoric-partitioning": ("max_var", "sampled"),
    }
    for mode, (kind, source) in upstream.items():
        cfg = settings(mode, ensemble="pnn")
        assert (cfg["uncertainty"], cfg["reward_source"]) == (kind, source)
    assert settings("epistemic-partitioning", ensemble="pnn")["reward_source"] == "sampled"
    assert settings("mbpo", ensemble="pnn")["reward_source"] == "sampled"
    assert settings("epistemic-partitioning", ensemble="pnn")["halt_reward"] == "replace"
    with pytest.raises(OmbrlError, match="test: epochs: unknown key"):
        settings("bc", epochs=3)
    with pytest.raises(OmbrlError, match="penalty_lambda: unknown key"):
        settings("mbpo", ensemble="pnn", penalty_lambda=1.0)
    with pytest.raises(OmbrlError, match="threshold_rule: 'mean' is not one of"):
        settings("aleatoric-partitioning", ensemble="pnn", threshold_rule="mean")
    with pytest.raises(OmbrlError, match="'ensemble' is a required property"):
        settings("mbpo")


@pytest.mark.parametrize(
    "mode", [m for m, spec in METHODS.items() if spec.module == "sac" and not spec.starts_from]
)
def test_every_sac_mode_trains_and_logs_its_mechanism(dataset, mode: str) -> None:
    model = tiny_ensemble(dataset)
    model_based = METHODS[mode].needs_ensemble
    if model_based:
        cfg = mopo_config(100, mode)
    else:
        cfg = settings(mode, steps=100, hidden_size=[32, 32], batch_size=64)
    agent, records = run(mode, dataset, model if model_based else None, cfg, 100, 1)
    assert isinstance(agent, SAC) and agent.step == 100
    last = records[-1]
    rule = PESSIMISM.get(mode, (None, None))[0]
    assert np.isfinite(last["critic_loss"])
    assert ("rollout_length" in last) == model_based
    assert ("rollout_uncertainty" in last) == (rule is not None)
    assert ("rollout_halted" in last) == (rule in (PartitionRule, ObjectiveRule))
    if rule is PartitionRule:
        assert last["halt_penalty"] == -float(np.abs(dataset.rewards).max())


def test_rollouts_use_the_reward_head_of_an_ensemble_that_learned_one(dataset) -> None:
    """The task pays at most 1 per step; a reward head offset to ~500 must show in rollouts."""
    task_reward = tiny_ensemble(dataset)
    torch.manual_seed(0)
    head = DynamicsEnsemble(4, 1, [16], 3, True, "swish", predict_reward=True)
    head.set_normalizers(
        task_reward.input_mean,
        task_reward.input_std,
        torch.cat([task_reward.target_mean, torch.tensor([500.0])]),
        torch.cat([task_reward.target_std, torch.tensor([1.0])]),
    )
    head.elites = [0, 2]
    rewards = {}
    for name, model in (("task", task_reward), ("head", head.eval())):
        _, records = run("mbpo", dataset, model, mopo_config(100, "mbpo"), 100, 1)
        rewards[name] = records[-1]["rollout_reward"]
    assert rewards["task"] <= 1.0 and rewards["head"] > 400


def test_data_relative_rules_are_resolved_from_the_dataset_and_elites(dataset) -> None:
    model = tiny_ensemble(dataset)
    task = get_task(ENV)
    for mode, rule, beta in (
        ("epistemic-partitioning", "max", 2.0),
        ("aleatoric-partitioning", "percentile", 90.0),
    ):
        cfg = mopo_config(1, mode, threshold_rule=rule, threshold=beta, halt_penalty=-3.0)
        rc = build(PartitionRule, {"uncertainty": "epistemic", **cfg})
        pessimism = resolve_pessimism(rc, model, dataset, task, model.elites)
        u = dataset_uncertainty(
            model, dataset, [rc.uncertainty], 512, pessimism.scale, model.elites
        )[rc.uncertainty]
        expected = u.max() / beta if rule == "max" else np.percentile(u, beta)
        assert pessimism.threshold == pytest.approx(expected, rel=1e-6)
        assert pessimism.halt_penalty == -3.0
        obs_std = torch.as_tensor(dataset.observations.std(0, ddof=1), dtype=torch.float32)
        torch.testing.assert_close(pessimism.scale, 1 / obs_std)  # `obs_std`
    cfg = mopo_config(1, "epistemic-partitioning", threshold_rule="absolute", threshold=0.7)
    rc = build(PartitionRule, {"uncertainty": "epistemic", **cfg})
    assert resolve_pessimism(rc, model, dataset, task, model.elites).threshold == 0.7
    rc = build(PenaltyRule, mopo_config(1, "mopo", penalty_lambda=2.0))
    pessimism = resolve_pessimism(rc, model, dataset, task, model.elites)
    assert (pessimism.kind, pessimism.penalty_lambda, pessimism.scale) == ("penalty", 2.0, None)


def test_user_mistakes_are_reported(dataset) -> None:
    cfg = mopo_config(10)
    with pytest.raises(OmbrlError, match="method: 'mopox' is not one of bc, sac"):
        method_spec("mopox")
    with pytest.raises(OmbrlError, match="needs a trained ensemble"):
        run("mopo", dataset, None, cfg)
    wrong = DynamicsEnsemble(3, 1, [8], 2, True, "swish", False)
    with pytest.raises(OmbrlError, match="dimensions"):
        run("mopo", dataset, wrong, cfg)
    bc = settings("bc", steps=1, hidden_size=[8], lr=1e-3, batch_size=8)
    with pytest.raises(OmbrlError, match="Hopper-v5"):
        run("bc", replace(dataset, env_id="Hopper-v5"), None, bc)
    with pytest.raises(OmbrlError, match="Nope-v1"):
        run("bc", replace(dataset, env_id="Nope-v1"), None, bc)


def test_evaluate_is_seeded_and_batched_like_sequential_episodes() -> None:
    def controller(obs: np.ndarray) -> np.ndarray:
        return (obs @ GAIN)[:, None] * 0.3  # a weak controller: episodes of different lengths

    batched = evaluate(controller, ENV, 4, seed=10)
    sequential = [evaluate(controller, ENV, 1, seed=10 + i)[0] for i in range(4)]
    assert batched == sequential
    assert len(set(batched)) > 1  # seeds give different start states
    assert evaluate(lambda o: (o @ GAIN)[:, None], ENV, 2, seed=0) == [1000.0, 1000.0]
    with pytest.raises(OmbrlError, match="Nope-v1"):
        evaluate(controller, "Nope-v1", 1, seed=0)
