"""Offline PETS (`pets`): planning with a trained ensemble's elites, checked before planning,
scored by one evaluation, its policy folder enough to plan again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ombrl.cli import main
from ombrl.config import read_yaml, resolve_mode
from ombrl.data.collect import collect
from ombrl.errors import OmbrlError
from ombrl.io import load_model
from ombrl.methods import METHODS
from ombrl.methods.pets import elite_ensemble, load_policy, make_planner
from ombrl.models.ensemble import DynamicsEnsemble, load_ensemble, save_ensemble
from ombrl.policies import PolicyJob, run
from ombrl.training.loop import Evaluation

ROOT = Path(__file__).resolve().parents[1]

ENV = "InvertedPendulum-v5"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A medium InvertedPendulum dataset and a 3-member probabilistic ensemble (2 elites)."""
    folder = tmp_path_factory.mktemp("pets")
    data = folder / "medium.hdf5"
    collect(ENV, "medium", 2000, 0, data, ref_episodes=3)
    code = main(
        ["train-ensemble", "--dataset", str(data), "--config", "config/ensembles/pnn.yaml",
         "--params", "num_models=3", "num_elites=2", "hidden_size=32,32", "fit_epochs=5",
         "--output", str(folder / "ens"), "--quiet", "--tracking-uri", "none"]
    )  # fmt: skip
    assert code == 0
    return data, folder / "ens"


def pets_job(data: Path, ensemble: Path, output: Path, **params) -> PolicyJob:
    cfg = resolve_mode("pets", {"ensemble": str(ensemble), **params}, "test")
    cfg.pop("method")
    return PolicyJob(
        method="pets",
        name="pets",
        params=cfg,
        output=output,
        dataset=str(data),
        env=None,
        ensemble=ensemble,
        seed=3,
        threads=1,
        device="cpu",
        evaluation=Evaluation(1000, 2, 100000),
        warmup=None,
        progress=False,
        checkpoint_every=0,
        checkpoint_dir=None,
        tracking_uri="none",
    )


def test_the_registry_declares_a_planner_that_learns_nothing():
    spec = METHODS["pets"]
    assert spec.needs_ensemble and spec.progress is None and spec.task_objective


def test_the_elites_plan_with_the_predictions_they_had_in_the_ensemble():
    torch.manual_seed(0)
    ensemble = DynamicsEnsemble(4, 1, [8], 3, True, "swish", False)
    ensemble.set_normalizers(torch.rand(5), torch.rand(5) + 0.5, torch.rand(4), torch.rand(4))
    ensemble.elites = [2, 0]  # best first
    elites = elite_ensemble(ensemble)
    obs, act = torch.randn(16, 4), torch.randn(16, 1)
    with torch.no_grad():
        whole, mine = ensemble.predict(obs, act), elites.predict(obs, act)
    assert elites.num_models == 2 and elites.elites == [0, 1]
    assert torch.equal(mine.next_obs_mean, whole.next_obs_mean[ensemble.elites])
    assert torch.equal(mine.next_obs_var, whole.next_obs_var[ensemble.elites])


@pytest.mark.slow
def test_a_pets_job_scores_one_evaluation_and_records_what_it_planned_with(trained, tmp_path):
    data, ensemble = trained
    run(pets_job(data, ensemble, tmp_path / "a", prop_type="TS1"))
    progress = pd.read_csv(tmp_path / "a/progress.csv")
    assert list(progress["step"]) == [0]  # trains nothing: one evaluation
    row = progress.iloc[0]
    assert row["method"] == "pets" and row["actions"] >= 2 and row["seconds_per_action"] > 0
    tensors, meta = load_model(tmp_path / "a", name="policy")
    planner = meta["planner"]
    assert meta["ensemble"] == str(ensemble) and meta["seed"] == 3
    assert planner["settings"]["prop_type"] == "TS1"  # the entry's, over the preset's TSinf
    assert planner["settings"]["num_models"] == 2  # the elites planned with
    assert planner["ensemble_elites"] == load_ensemble(ensemble)[0].elites
    assert tensors["hidden.0.weight"].shape[0] == 2  # the elites' weights, nothing trained
    # Same seed, same episodes: the planner's samples come from the job's seed alone.
    run(pets_job(data, ensemble, tmp_path / "b", prop_type="TS1"))
    again = pd.read_csv(tmp_path / "b/progress.csv")
    assert (again["return"] == progress["return"]).all()
    assert (again["actions"] == progress["actions"]).all()
    assert json.loads((tmp_path / "a/eval.json").read_text())["final"]["step"] == 0
    # The folder alone plans again: the same first action as a planner made from the ensemble.
    act = load_policy(meta, tensors, torch.device("cpu"), seed=5)
    settings = {"preset": "small", "model_type": None, "prop_type": "TS1", "opt_type": None}
    fresh = make_planner(load_ensemble(ensemble)[0], ENV, settings)
    start = torch.zeros(4).numpy()
    assert (act(start) == fresh.agent(ENV, 5).act(start)).all()


@pytest.mark.slow
def test_render_plans_with_the_particles_it_is_given(trained, tmp_path, capsys):
    _, ensemble = trained  # 2 elites
    command = ["render", "--ensemble", str(ensemble), "--env", ENV, "--max-steps", "2",
               "--width", "16", "--height", "16"]  # fmt: skip
    assert main([*command, "--particles", "3", "--output", str(tmp_path / "a.gif")]) == 2
    assert "pets with 2 elite(s): particles: 3 must be a multiple" in capsys.readouterr().err
    assert not (tmp_path / "a.gif").exists()
    assert main([*command, "--particles", "6", "--output", str(tmp_path / "b.gif")]) == 0
    assert "3 frames of InvertedPendulum-v5, 2 steps" in capsys.readouterr().out
    policy_too = ["render", "--policy", str(ensemble), "--particles", "6",
                  "--output", str(tmp_path / "c.gif")]  # fmt: skip
    assert main(policy_too) == 2
    assert "the planner's settings are the policy folder's" in capsys.readouterr().err


def another_tasks_ensemble(folder: Path) -> Path:
    """An ensemble of Hopper's dimensions (11 observations, 3 actions), no dataset recorded."""
    model = DynamicsEnsemble(11, 3, [8], 2, True, "swish", False)
    save_ensemble(model, folder, {})
    return folder


def test_an_ensemble_of_another_task_is_a_one_line_error_before_planning(tmp_path, capsys):
    data = collect(ENV, "random", 200, 0, tmp_path / "random.hdf5", ref_episodes=1)
    ensemble = another_tasks_ensemble(tmp_path / "hopper")
    code = main(
        ["train-policy", "--dataset", str(data), "--mode", "pets", "--ensemble",
         str(ensemble), "--output", str(tmp_path / "out"), "--tracking-uri", "none", "--quiet"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "(obs 11, act 3)" in err[0] and "another task's data" in err[0]
    assert not (tmp_path / "out").exists()
    with pytest.raises(OmbrlError, match=r"InvertedPendulum-v5 has \(obs 4, act 1\)"):
        make_planner(load_ensemble(ensemble)[0], ENV, {"preset": "small"} | dict.fromkeys(
            ("model_type", "prop_type", "opt_type")))  # fmt: skip


def test_settings_the_ensemble_cannot_provide_are_errors_before_planning():
    ensemble = DynamicsEnsemble(4, 1, [8], 2, True, "swish", False)
    unset = dict.fromkeys(("model_type", "prop_type", "opt_type"))
    small = {"preset": "small", **unset}
    deterministic = DynamicsEnsemble(4, 1, [8], 2, False, "swish", False)
    with pytest.raises(OmbrlError, match="needs a probabilistic ensemble"):
        make_planner(deterministic, ENV, small)  # the small preset plans with PE
    particles = read_yaml(ROOT / "config" / "pets" / "small.yaml")["particles"]
    assert particles % 3  # 3 elites cannot share the small preset's particles
    three = DynamicsEnsemble(4, 1, [8], 3, True, "swish", False)
    with pytest.raises(OmbrlError, match=rf"pets with 3 elite\(s\): particles: {particles} must"):
        make_planner(three, ENV, small)
    assert make_planner(three, ENV, small | {"particles": 6}).cfg.particles == 6
    with pytest.raises(OmbrlError, match="prop_type: 'XS' is not one of"):
        make_planner(ensemble, ENV, small | {"prop_type": "XS"})
    with pytest.raises(OmbrlError, match="preset 'nope'"):
        make_planner(ensemble, ENV, small | {"preset": "nope"})
    # D plans with the best elite alone (a one-member model).
    assert make_planner(ensemble, ENV, small | {"model_type": "D", "prop_type": "E"})
    with pytest.raises(OmbrlError, match="horizon: unknown key"):
        resolve_mode("pets", {"ensemble": "e", "horizon": 3}, "test")


def test_a_policy_file_from_before_the_model_training_keys_still_plans():
    """policy.json files written before `obs_preproc` and `normalization` existed (keys the
    planner does not use) load and plan with the settings they record."""
    torch.manual_seed(0)
    ensemble = DynamicsEnsemble(4, 1, [8], 2, True, "swish", False)
    planner = make_planner(ensemble, ENV, {"preset": "small"} | dict.fromkeys(
        ("model_type", "prop_type", "opt_type")))  # fmt: skip
    meta = {**planner.provenance, "env_id": ENV}
    for key in ("obs_preproc", "normalization"):
        del meta["planner"]["settings"][key]
    act = load_policy(meta, planner.state_dict(), torch.device("cpu"), seed=0)
    assert act(np.zeros(4)).shape == (1,)
