"""MOReL and J-MOReL as methods: NPG iterations in the pessimistic MDP, from the library and
the CLI; the NPG and path mechanics themselves are tested in test_npg.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_cli import ROOT, assert_user_error, ombrl, train_tiny_ensemble
from test_policies import collect, settings, tiny_ensemble

from ombrl.agents.npg import NPG
from ombrl.config import load_study, read_yaml
from ombrl.errors import OmbrlError
from ombrl.methods import Inputs, method_module
from ombrl.methods import morel as morel_module
from ombrl.models.model_env import Pessimism
from ombrl.models.paths import model_paths
from ombrl.tasks import get_task
from ombrl.training.loop import Evaluation

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset():
    return collect(1000)


def run(method: str, data, ensemble, **params) -> tuple[NPG, list[dict], list]:
    """A short run; also returns the start-state pool seen at each iteration."""
    cfg = settings(
        method,
        ensemble="tiny",
        iterations=6,
        update_paths=4,
        horizon=30,
        eval_every=2,
        hidden_size=[16],
        value_hidden_size=[16],
        bc_steps=5,
        **params,
    )
    pools = []
    original = morel_module.PathSampler.__call__

    def spy(self, update):
        pools.append(self.pool.clone())
        return original(self, update)

    records: list[dict] = []
    inputs = Inputs(
        data.env_id, data, ensemble, 0, torch.device("cpu"), Evaluation(1, 1, 1000), False
    )
    morel_module.PathSampler.__call__ = spy
    try:
        agent = method_module(method).train(method, cfg, inputs, records.append)
    finally:
        morel_module.PathSampler.__call__ = original
    return agent, records, pools


@pytest.mark.parametrize("method", ["morel", "j-morel"])
def test_npg_iterations_log_the_model_view_on_their_schedule(dataset, method) -> None:
    model = tiny_ensemble(dataset)  # 3 members, elites [0, 2]
    agent, records, pools = run(method, dataset, model)
    assert isinstance(agent, NPG) and agent.step == 6
    # Evaluated every `eval_every` iterations (not the study's update schedule) and at 0.
    assert [r["step"] for r in records] == [0, 2, 4, 6]
    for r in records[1:]:
        assert 0 <= r["paths_truncated"] <= 1 and 1 <= r["path_length"] <= 30
        assert r["kl"] > 0 and np.isfinite(r["path_return"]) and "halt_threshold" in r
    # The start-state pool is the dataset's episode starts, the same at every iteration.
    starts = dataset.observations[np.r_[True, np.diff(dataset.episode_ids) != 0]]
    assert len(pools) == 6
    for pool in pools:
        torch.testing.assert_close(pool, torch.as_tensor(starts))
    _, again, _ = run(method, dataset, model)
    assert again == records  # same seed, same numbers


def test_the_threshold_rule_reaches_the_paths(dataset) -> None:
    """A threshold far above any disagreement truncates nothing; a tiny one truncates all."""
    model = tiny_ensemble(dataset)
    loose = run("morel", dataset, model, threshold_rule="absolute", threshold=1e9)[1]
    tight = run("morel", dataset, model, threshold_rule="absolute", threshold=0.0)[1]
    assert all(r["paths_truncated"] == 0 for r in loose[1:])
    # mjrl's and J-MOReL's cut: first violation + 1, never below 4 steps.
    assert all(r["paths_truncated"] == 1 and r["path_length"] == 4 for r in tight[1:])
    # Cut at once (`first`: 1 step): shorter than upstream's 5 observations, so every path is
    # dropped and the update has nothing to learn from.
    with pytest.raises(OmbrlError, match="no valid steps"):
        run("morel", dataset, model, threshold_rule="absolute", threshold=0.0, truncation="first")


def test_j_morel_needs_elites(dataset) -> None:
    model = tiny_ensemble(dataset)
    model.elites = [0, 1, 2]
    with pytest.raises(OmbrlError, match="j-morel needs an ensemble with elites"):
        run("j-morel", dataset, model)
    run("morel", dataset, model)  # the original MOReL uses every member


def test_bad_settings_are_one_line_errors_before_training() -> None:
    study = read_yaml(ROOT / "config/config.yaml")
    study["ensembles"]["all-members"] = {"config": "pnn", "params": {"num_elites": 7}}
    study["modes"]["jm"] = {"method": "j-morel", "ensemble": "all-members"}
    study["modes"]["mo"] = {"method": "morel", "ensemble": "pnn-small", "horizon": 0}
    study["modes"]["mo2"] = {"method": "morel", "ensemble": "pnn-small", "threshold_rule": "q"}
    study["modes"]["mo3"] = {"method": "morel", "ensemble": "pnn-small", "paths": 40}
    study["modes"]["mo4"] = {"method": "morel", "ensemble": "pnn-small", "input_scaling": "morel"}
    study["modes"]["jm2"] = {"method": "j-morel", "ensemble": "pnn-small", "bc_epochs": 5}
    with pytest.raises(OmbrlError) as info:
        load_study(study, "s.yaml", root=ROOT)
    lines = str(info.value).splitlines()
    assert any("modes.jm.ensemble: j-morel needs elites, but all-members keeps" in x for x in lines)
    assert any("modes.mo.horizon: 0 is less than the minimum of 1" in x for x in lines)
    assert any("modes.mo2.threshold_rule: 'q' is not one of" in x for x in lines)
    assert any("modes.mo3.paths: renamed: use update_paths (start states" in x for x in lines)
    assert any("modes.mo4.input_scaling: 'morel' is renamed: use none (raw" in x for x in lines)
    assert any("modes.jm2.bc_epochs: renamed: use bc_steps" in x for x in lines)


def test_morel_from_the_cli(tmp_path) -> None:
    data = tmp_path / "pendulum.hdf5"
    assert ombrl(
        "collect", "--env", "InvertedPendulum-v5", "--policy", "medium",
        "--transitions", "1200", "--seed", "3", "--output", str(data), "--quiet",
    ).returncode == 0  # fmt: skip
    assert train_tiny_ensemble(data, tmp_path / "ens").returncode == 0
    params = ["iterations=3", "update_paths=2", "horizon=20", "hidden_size=8", "bc_steps=10"]
    result = ombrl(
        "train-policy", "--dataset", str(data), "--mode", "j-morel", "--name", "jm-small",
        "--ensemble", str(tmp_path / "ens"), "--params", *params, "--eval-episodes", "1",
        "--track-eval", "--output", str(tmp_path / "pol"), "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    progress = pd.read_csv(tmp_path / "pol/progress.csv")
    assert list(progress["step"]) == [0, 1, 2, 3]  # --track-eval: every iteration
    assert set(progress["mode"]) == {"jm-small"} and set(progress["method"]) == {"j-morel"}
    assert progress["normalized_score"].notna().all()
    bad = ombrl(
        "train-policy", "--dataset", str(data), "--mode", "morel", "--ensemble",
        str(tmp_path / "ens"), "--params", "horizon=0", "--output", str(tmp_path / "bad"),
    )  # fmt: skip
    assert_user_error(bad, "horizon: 0 is less than the minimum of 1")
    assert not (tmp_path / "bad").exists()
    bc = ombrl(
        "train-policy", "--dataset", str(data), "--mode", "bc", "--track-eval",
        "--output", str(tmp_path / "bad"),
    )  # fmt: skip
    assert_user_error(bc, "--track-eval: for methods evaluated per iteration, not bc")


def test_morel_masks_its_inputs_in_training_and_in_the_saved_policy(dataset) -> None:
    """mjrl multiplies every observation by the mask (1 positions, 0.02 velocities): the
    policy and baseline see obs * mask, and the saved policy applies it to raw observations."""
    model = tiny_ensemble(dataset)
    agent, _, _ = run("morel", dataset, model)
    mask = torch.tensor([1.0, 1.0, 0.02, 0.02])  # InvertedPendulum: 2 positions, 2 velocities
    torch.testing.assert_close(agent.obs_mean, torch.zeros(4))
    torch.testing.assert_close(agent.obs_std * mask, torch.ones(4))
    obs = torch.as_tensor(dataset.observations[:50])
    masked = agent.mean_net(obs * mask).detach()
    torch.testing.assert_close(agent.policy(obs, deterministic=True), masked)
    features = agent.value_features(obs, torch.zeros(50))[:, :4]
    torch.testing.assert_close(features, (obs * mask).clamp(-10, 10) / 10)
    meta = {"config": settings("morel", ensemble="tiny", hidden_size=[16], value_hidden_size=[16]),
            "env_id": dataset.env_id}  # fmt: skip
    act = morel_module.load_policy(meta, agent.state_dict(), torch.device("cpu"), 0)
    np.testing.assert_allclose(act(obs.numpy()), masked.numpy(), rtol=1e-5, atol=1e-6)


def test_j_morel_znorm_is_mean_and_mean_absolute_deviation(dataset) -> None:
    model = tiny_ensemble(dataset)
    agent, _, _ = run("j-morel", dataset, model)
    obs = dataset.observations.astype(np.float64)
    mean = obs.mean(0)
    mad = np.abs(obs - mean).mean(0)  # J-MOReL train_morel.py:150
    np.testing.assert_allclose(agent.obs_mean.numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(agent.obs_std.numpy(), mad, rtol=1e-5)
    assert not np.allclose(mad, obs.std(0), rtol=0.05)  # not the standard deviation


@pytest.mark.parametrize("halt_members", [None, [0, 1, 2]])
def test_the_sampler_runs_only_the_members_it_uses(dataset, halt_members) -> None:
    """Elites [0, 2] followed, HALT over the elites (only 2 members run) or all 3 (J-MOReL):
    the paths are those of the full ensemble's predictions with the same members."""
    model = tiny_ensemble(dataset)  # 3 members, elites [0, 2]
    task = get_task(dataset.env_id)
    pessimism = Pessimism("partitioning", "epistemic", threshold=0.05, halt_reward="add")
    pool = morel_module.start_states(dataset, torch.device("cpu"))
    counts: list[int] = []
    original = model.predict

    def counting(obs, act, members=None):
        pred = original(obs, act, members)
        counts.append(pred.next_obs_mean.shape[0])
        return pred

    def policy(obs):
        return torch.tanh(obs[:, :1])

    model.predict = counting
    rules = morel_module.PathRules("j-morel", "per-model", "bootstrap", halt_members)
    bounds = (np.array([-3.0]), np.array([3.0]))
    sampler = morel_module.PathSampler(
        pool, 3, 12, model, (task.reward, task.terminal), pessimism, rules, policy, bounds,
        torch.Generator().manual_seed(0),
    )  # fmt: skip
    paths, _ = sampler(0)
    assert set(counts) == {2 if halt_members is None else 3}
    index = torch.randint(len(pool), (3,), generator=torch.Generator().manual_seed(0))
    full = model_paths(
        original, [0, 2], policy, pool[index].repeat(2, 1), 12, task.reward, task.terminal,
        pessimism, "j-morel", torch.Generator(), -3.0, 3.0,
        path_member=torch.tensor([0, 2]).repeat_interleave(3), halt_members=halt_members or [0, 2],
        halt_value="bootstrap", min_steps=5,
    )  # fmt: skip
    torch.testing.assert_close(paths.obs, full.obs)
    torch.testing.assert_close(paths.rew, full.rew)
    assert paths.lengths.tolist() == full.lengths.tolist() and len(paths) + paths.dropped == 6
