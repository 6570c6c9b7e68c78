"""Offline-to-online finetuning: a `finetune` entry starts from another entry's SAC state."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from test_policies import collect, run, settings

from ombrl.config import load_study, read_yaml
from ombrl.errors import OmbrlError
from ombrl.methods import Inputs
from ombrl.methods.sac import SAC, start_from, train
from ombrl.training.loop import Evaluation, make_learner

TINY = read_yaml(Path(__file__).resolve().parents[1] / ".test/config_tiny/config.yaml")
SMALL = {"steps": 100, "hidden_size": [32, 32], "batch_size": 64}


def study(modes: dict) -> dict:
    data = copy.deepcopy(TINY)
    data["modes"] = modes
    data.pop("sweeps", None)
    return data


def test_a_finetune_entry_runs_on_its_origins_datasets_and_networks():
    loaded = load_study(
        study(
            {
                "offline": {"method": "sac", **SMALL, "datasets": ["tiny-random"]},
                "online": {"method": "finetune", "from": "offline", **SMALL},
            }
        ),
        "s.yaml",
    )
    assert loaded["modes"]["online"]["from"] == "offline"
    assert loaded["modes"]["online"]["datasets"] == ["tiny-random"]


@pytest.mark.parametrize(
    ("modes", "message"),
    [
        (
            {"bc": {}, "online": {"method": "finetune", "from": "bc"}},
            "s.yaml: modes.online.from: 'bc' is not an offline SAC-family entry of modes",
        ),
        (
            {"online": {"method": "finetune"}},
            "s.yaml: modes.online.from: finetune needs `from:`, the entry it starts from",
        ),
        (
            {"sac": {}, "mbpo": {"ensemble": "tiny", "from": "sac"}},
            "s.yaml: modes.mbpo.from: only finetune starts from another entry",
        ),
        (
            {"sac": SMALL, "online": {"method": "finetune", "from": "sac"}},
            "s.yaml: modes.online.hidden_size: [256, 256] differs from sac's [32, 32] "
            "(the networks it starts from)",
        ),
    ],
)
def test_from_mistakes_are_one_line(modes, message):
    with pytest.raises(OmbrlError) as error:
        load_study(study(modes), "s.yaml")
    assert str(error.value) == message


@pytest.fixture(scope="module")
def dataset():
    return collect(1000)


@pytest.mark.slow
def test_finetuning_starts_from_exactly_the_offline_policy_and_critics(dataset):
    offline, records = run("sac", dataset, None, settings("sac", **SMALL), eval_every=100)
    state = offline.state_dict()
    cfg = settings("finetune", **SMALL, dataset_share=0.5)
    evaluation = Evaluation(50, 2, seed=1000)
    inputs = Inputs(
        dataset.env_id, dataset, None, 0, torch.device("cpu"), evaluation, False, start=state
    )
    fresh = make_learner(SAC, offline.cfg, dataset.env_id, dataset, torch.device("cpu"), 1)
    started = start_from(fresh, inputs).state_dict()
    assert set(started) == set(state)
    assert all(torch.equal(started[k], state[k]) for k in state)
    tuned: list[dict] = []
    agent = train("finetune", cfg, inputs, tuned.append)
    # The first evaluation is the offline policy's last one (same evaluation seeds).
    assert tuned[0]["step"] == 0 and tuned[0]["return"] == records[-1]["return"]
    assert [r["step"] for r in tuned] == [0, 50, 100]
    assert tuned[-1]["env_steps"] == 100
    after = agent.state_dict()
    actor = [k for k in state if k.startswith("actor.")]
    assert actor and any(not torch.equal(after[k], state[k]) for k in actor)  # it learned
    with pytest.raises(OmbrlError, match="--init DIR"):
        train(
            "finetune",
            cfg,
            Inputs(dataset.env_id, dataset, None, 0, torch.device("cpu"), evaluation, False),
            tuned.append,
        )
