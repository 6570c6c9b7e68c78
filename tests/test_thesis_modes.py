"""The thesis's pessimistic modes compute what offline-model-based-rl computed (issue 31).

Expected numbers come from offline-model-based-rl's own code at b361cc7f, run once in a
scratch virtual environment on the fixed inputs below (torch 2.13.0, pydantic; `gym` and
`d4rl` stubbed, they are only imported):

    /tmp/thesis-scratch/bin/python upstream_units.py

which builds `get_preprocessing_function`'s statistics (utils/preprocessing.py:33-41) from
DATA_OBS and DATA_ACT, an `EnvironmentModel` (3 probabilistic networks, that preprocessing
function) whose `forward` returns MEANS and LOGVARS, and calls `get_prediction(x, i_network=1,
mode=..., debug=True)` (models/environment_model.py:196-316) for each mode, printing its
epistemic and aleatoric uncertainty and the prediction's reward and done columns.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from ombrl.agents.buffer import Batch, ReplayBuffer
from ombrl.agents.sac import SAC, SACConfig
from ombrl.config import build, load_ensemble_config, load_study, resolve_mode
from ombrl.errors import OmbrlError
from ombrl.models.ensemble import DynamicsEnsemble, Prediction
from ombrl.models.model_env import Pessimism, rollout
from ombrl.models.pessimism import RolloutConfig
from ombrl.models.uncertainty import aleatoric, disagreement_scale, epistemic
from ombrl.plan import UNITS, Pricer
from ombrl.training.samplers import RolloutSampler

ROOT = Path(__file__).resolve().parents[1]

DATA_OBS = np.array(
    [[0.1, 2.0], [0.4, -1.0], [-0.3, 0.5], [0.9, 3.5], [0.2, -2.5], [-0.6, 1.0]], np.float32
)
DATA_ACT = np.array([[0.5], [-0.2], [0.1], [0.9], [-0.7], [0.3]], np.float32)
RAW_OBS = torch.tensor([[0.2, 1.0], [-0.1, -0.5]])
ACT = torch.tensor([[0.3], [-0.4]])
# Network x sample x (next obs, reward): upstream's raw mean next states and rewards.
MEANS = torch.tensor(
    [
        [[0.25, 1.4, 1.0], [-0.05, -0.9, 0.5]],
        [[0.3, 0.8, 1.2], [0.0, -0.2, 0.4]],
        [[0.1, 1.9, 0.7], [-0.2, -1.5, 0.9]],
    ]
)
# Upstream's log-variances: of the standardised next state (its loss standardises both sides).
LOGVARS = torch.tensor(
    [
        [[-2.0, -1.0, -3.0], [-1.5, -2.5, -3.0]],
        [[-1.2, -0.5, -3.0], [-2.2, -0.8, -3.0]],
        [[-0.3, -1.7, -3.0], [-2.0, -1.1, -3.0]],
    ]
)
# Printed by the scratch run (b361cc7f).
UPSTREAM_OBS_STD = [0.5269408822059631, 2.1311185359954834]
UPSTREAM_EPISTEMIC = [0.6406868696212769, 0.7184481620788574]
UPSTREAM_ALEATORIC = [0.740818202495575, 0.4493289589881897]
UPSTREAM_PENALISED = {  # pessimism 2.0
    "epistemic": [-0.31470704078674316, -0.8368963599205017],
    "max_var": [-0.5149697065353394, -0.29865795373916626],
}
UPSTREAM_SAC_INPUT = [
    [0.15814554691314697, 0.1955154836177826],
    [-0.4111782908439636, -0.5083402395248413],
]


def ensemble() -> DynamicsEnsemble:
    """Only its device and sizes are read by the `obs_std` scale."""
    return DynamicsEnsemble(2, 1, [4], 3, True, "swish", True)


def upstream_prediction() -> Prediction:
    """MEANS and LOGVARS as ombrl's ensemble reports them: raw means, raw variances (upstream's
    standardised variance times the dataset's observation variance)."""
    var = LOGVARS[..., :2].exp() * torch.tensor(UPSTREAM_OBS_STD).square()
    return Prediction(MEANS[..., :2], var, MEANS[..., 2], None)


def test_obs_std_scale_is_upstreams_preprocessing_std() -> None:
    scale = disagreement_scale("obs_std", ensemble(), DATA_OBS, DATA_ACT)
    torch.testing.assert_close(1 / scale, torch.tensor(UPSTREAM_OBS_STD))


def test_uncertainties_in_obs_std_units_are_upstreams() -> None:
    """Item 1 (units) and 2 (members): over all networks, in the dataset's observation units."""
    scale = disagreement_scale("obs_std", ensemble(), DATA_OBS, DATA_ACT)
    pred = upstream_prediction()
    torch.testing.assert_close(epistemic(pred, scale), torch.tensor(UPSTREAM_EPISTEMIC))
    torch.testing.assert_close(
        aleatoric(pred, "max_var", scale=scale), torch.tensor(UPSTREAM_ALEATORIC)
    )
    # The scale of the model's targets (ombrl's `normalized` before) measures something else.
    targets = torch.tensor([0.1, 0.4])
    assert not torch.allclose(epistemic(pred, 1 / targets), torch.tensor(UPSTREAM_EPISTEMIC))


@pytest.mark.parametrize("kind", ["epistemic", "max_var"])
def test_penalty_reward_is_upstreams(kind: str) -> None:
    """Items 1, 2 and 4: `r - lambda u` with r the networks' mean reward, u over every network."""
    scale = disagreement_scale("obs_std", ensemble(), DATA_OBS, DATA_ACT)
    batch, _ = rollout(
        lambda obs, act: upstream_prediction(),
        [0, 1, 2],
        lambda obs: ACT,
        RAW_OBS,
        1,
        None,
        lambda s, a, s2: torch.zeros(len(s), dtype=torch.bool),
        Pessimism("penalty", kind, scale, penalty_lambda=2.0),
        "mean",
        torch.Generator().manual_seed(0),
        "per_step",
    )
    torch.testing.assert_close(batch.rew, torch.tensor(UPSTREAM_PENALISED[kind]))


def test_partitioning_halts_where_upstream_does() -> None:
    """aleatoric-partitioning, threshold 0.5 absolute: upstream halts sample 0 only (reward
    -max_reward = -2.5, done), and sample 1 keeps a network's sampled reward."""
    scale = disagreement_scale("obs_std", ensemble(), DATA_OBS, DATA_ACT)
    pessimism = Pessimism("partitioning", "max_var", scale, threshold=0.5, halt_penalty=-2.5)
    batch, _ = rollout(
        lambda obs, act: upstream_prediction(),
        [0, 1, 2],
        lambda obs: ACT,
        RAW_OBS,
        1,
        None,
        lambda s, a, s2: torch.zeros(len(s), dtype=torch.bool),
        pessimism,
        "sampled",
        torch.Generator().manual_seed(0),
        "per_step",
    )
    assert batch.terminal.tolist() == [1.0, 0.0]
    assert batch.rew[0].item() == -2.5
    assert any(batch.rew[1].item() == pytest.approx(r) for r in MEANS[:, 1, 2].tolist())


def test_per_step_draw_gives_the_whole_batch_one_network() -> None:
    """Item 5: `get_prediction` draws one network per call for every sample."""
    means = torch.arange(3.0).view(3, 1, 1).expand(3, 64, 2)  # network m predicts m

    def predict(obs, act):
        return Prediction(means, None, None, None)

    for draw, one_network in (("per_step", True), ("per_sample", False)):
        batch, _ = rollout(
            predict,
            [0, 1, 2],
            lambda obs: torch.zeros(len(obs), 1),
            torch.zeros(64, 2),
            3,
            lambda s, a, s2: torch.zeros(len(s)),
            lambda s, a, s2: torch.zeros(len(s), dtype=torch.bool),
            Pessimism(),
            "sampled",
            torch.Generator().manual_seed(1),
            draw,
        )
        per_step = batch.next_obs[:, 0].view(3, 64)
        assert (per_step == per_step[:, :1]).all().item() is one_network


def test_sac_inputs_are_standardised_as_upstreams() -> None:
    """Item 3: the actor sees upstream's preprocessed observation."""
    cfg = SACConfig([8], 0.99, 0.005, 3e-4, 4, 0.2, obs_norm="dataset")
    agent = SAC(2, 1, -1.0, 1.0, cfg, torch.device("cpu"), 0)
    agent.set_obs_statistics(DATA_OBS)
    expected = agent.actor(torch.tensor(UPSTREAM_SAC_INPUT), torch.zeros(2, 1)).act
    torch.testing.assert_close(agent.policy(RAW_OBS, deterministic=True), expected)
    restored = SAC(2, 1, -1.0, 1.0, cfg, torch.device("cpu"), 1)
    restored.load_state_dict(agent.state_dict())
    torch.testing.assert_close(restored.policy(RAW_OBS, deterministic=True), expected)


THESIS = {
    "alpha": 0.2,
    "real_ratio": 0.0,
    "obs_norm": "dataset",
    "members": "all",
    "member_draw": "per_step",
    "random_fraction": 0.016,
    "rollout_scheme": "persistent",
    "persistent_rollouts": 50,
    "scale": "obs_std",
}


@pytest.mark.parametrize(
    ("mode", "reward_source"),
    [
        ("epistemic-penalty", "mean"),
        ("aleatoric-penalty", "mean"),
        ("epistemic-partitioning", "sampled"),
        ("aleatoric-partitioning", "sampled"),
        ("survival", "sampled"),
        ("offline-exploration-penalty", "sampled"),
        ("offline-exploration-partitioning", "sampled"),
    ],
)
def test_thesis_modes_default_to_upstreams_settings(mode: str, reward_source: str) -> None:
    """Items 1-4: an entry with no settings gets upstream's SAC, units, members and reward."""
    cfg = resolve_mode(mode, {"ensemble": "e"}, "study.yaml")
    assert {k: cfg[k] for k in THESIS} == THESIS
    assert cfg["reward_source"] == reward_source
    if "threshold_rule" in cfg:
        assert cfg["threshold_rule"] == "absolute"
    if mode == "aleatoric-penalty":
        assert cfg["uncertainty"] == "max_var"


def test_mopo_keeps_mopos_settings() -> None:
    cfg = resolve_mode("mopo", {"ensemble": "e"}, "study.yaml")
    mopo = {"uncertainty": "max_norm", "scale": "none", "reward_source": "sampled"}
    assert {k: cfg[k] for k in mopo} == mopo
    assert (cfg["members"], cfg["member_draw"], cfg["alpha"], cfg["real_ratio"]) == (
        "elites",
        "per_sample",
        None,
        0.05,
    )
    assert (cfg["rollout_scheme"], cfg["obs_norm"], cfg["random_fraction"]) == ("rounds", "none", 0)


def test_the_old_scale_name_fails_naming_its_replacement() -> None:
    with pytest.raises(OmbrlError) as err:
        resolve_mode("epistemic-penalty", {"ensemble": "e", "scale": "normalized"}, "s.yaml")
    assert str(err.value) == (
        "s.yaml: scale: 'normalized' was renamed; use target_std "
        "(offline-model-based-rl's units are obs_std)"
    )


@pytest.mark.parametrize(
    ("mode", "settings", "key", "scheme", "other"),
    [
        ("aleatoric-penalty", {"rollout_batch": 200}, "rollout_batch", "persistent", "rounds"),
        ("mbpo", {"persistent_rollouts": 10}, "persistent_rollouts", "rounds", "persistent"),
        (
            "epistemic-penalty",
            {"rollout_scheme": "rounds", "model_buffer_size": 100},
            "model_buffer_size",
            "rounds",
            "persistent",
        ),
    ],
)
def test_a_key_the_rollout_scheme_never_reads_fails_naming_entry_key_and_scheme(
    mode: str, settings: dict, key: str, scheme: str, other: str
) -> None:
    with pytest.raises(OmbrlError) as err:
        resolve_mode(mode, {"ensemble": "e", **settings}, "s.yaml", f"modes.{mode}")
    assert str(err.value) == (
        f"s.yaml: modes.{mode}.{key}: only rollout_scheme: {other} reads it, and this entry's "
        f"rollout_scheme is {scheme} (remove {key} or set rollout_scheme: {other})"
    )


def test_keys_of_the_entrys_own_scheme_and_schema_defaults_pass(tmp_path, capsys) -> None:
    """Each scheme's own keys are accepted, and the defaults the schema fills in for the other
    scheme's keys are not the user's: they neither fail nor reach a job's command line."""
    from ombrl.cli import main
    from ombrl.config import unused_scheme_keys

    thesis = {"ensemble": "e", "persistent_rollouts": 10, "model_buffer_size": 100}
    rounds = {"ensemble": "e", "rollout_batch": 200, "rollout_every": 10}
    cfg = resolve_mode("aleatoric-penalty", thesis, "s.yaml")
    assert (cfg["persistent_rollouts"], cfg["rollout_batch"]) == (10, 5000)
    assert unused_scheme_keys(cfg) == ["rollout_batch", "rollout_every", "model_retain_epochs"]
    resolve_mode("aleatoric-penalty", {**rounds, "rollout_scheme": "rounds"}, "s.yaml")
    assert unused_scheme_keys(resolve_mode("mbpo", rounds, "s.yaml")) == [
        "persistent_rollouts",
        "model_buffer_size",
    ]
    assert unused_scheme_keys(resolve_mode("bc", {}, "s.yaml")) == []
    # A whole study, and the same study with a thesis entry given a rounds-only key (exit 2).
    study = {
        "seeds": [0],
        "datasets": {"hopper-medium-v2": {"source": "d4rl"}},
        "ensembles": {"e": {"config": "thesis"}},
        "modes": {"mbpo": rounds, "aleatoric-penalty": thesis},
    }
    root = Path(__file__).resolve().parents[1]
    load_study(study, "study.yaml", root)
    study["modes"]["aleatoric-penalty"] = {**thesis, "rollout_every": 10}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    capsys.readouterr()
    assert main(["check-config", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"ombrl: error: {path}: modes.aleatoric-penalty.rollout_every: only rollout_scheme: "
        "rounds reads it, and this entry's rollout_scheme is persistent (remove rollout_every "
        "or set rollout_scheme: rounds)\n"
    )


def persistent_sampler(random_updates: int = 0, **settings) -> RolloutSampler:
    """A thesis-mode sampler on a 2-D toy: network m moves every state by m + 1 in x (no
    terminal states), reward 0; its policy always acts 0.5."""
    cfg = resolve_mode("epistemic-penalty", {"ensemble": "e", **settings}, "s.yaml")
    model = DynamicsEnsemble(2, 1, [4], 3, False, "swish", False)
    shift = torch.tensor([[[1.0, 0.0]], [[2.0, 0.0]], [[3.0, 0.0]]])
    model.predict = lambda obs, act: Prediction(obs + shift, None, None, None)
    task = SimpleNamespace(
        reward=lambda s, a, s2: torch.zeros(len(s)),
        terminal=lambda s, a, s2: torch.zeros(len(s), dtype=torch.bool),
    )
    real = ReplayBuffer(6, 2, 1, torch.device("cpu"))
    obs = torch.as_tensor(DATA_OBS)
    real.add(Batch(obs, torch.as_tensor(DATA_ACT), torch.zeros(6), obs, torch.zeros(6)))
    return RolloutSampler(
        real,
        8,
        torch.Generator().manual_seed(0),
        model,
        task,
        build(RolloutConfig, cfg),
        Pessimism("penalty", "epistemic", None, penalty_lambda=0.0),
        lambda o: torch.full((len(o), 1), 0.5),
        (torch.tensor([-1.0]), torch.tensor([1.0])),
        random_updates,
    )


def test_persistent_rollouts_advance_one_step_per_update_into_a_fifo_buffer() -> None:
    """Item 5: n rollouts, one step each per update, restarted after rollout_length steps."""
    sampler = persistent_sampler(persistent_rollouts=4, rollout_length=3, model_buffer_size=14)
    sizes, live = [], []
    for update in range(4):
        batch, stats = sampler(update)
        sizes.append(len(sampler.model))
        live.append(sampler.live_steps.tolist())
        assert len(batch) == 8 and "rollout_uncertainty" in stats
    assert sizes == [4, 8, 12, 14]  # 16 transitions made, the oldest 2 dropped
    assert live == [[1] * 4, [2] * 4, [], [1] * 4]
    # One network per step for all rollouts (per_step): one x shift per update. The ring's
    # rows 12, 13, 0, 1 are the last update's, 2..11 the others' in order.
    shift = (sampler.model.next_obs - sampler.model.obs)[:, 0]
    moved = torch.stack([shift[[12, 13, 0, 1]], shift[4:8], shift[8:12]])
    torch.testing.assert_close(moved, moved[:, :1].expand(-1, 4))
    assert len(set(moved[:, 0].round().tolist())) > 1  # and different updates differ


def test_persistent_rollouts_resume_where_they_were() -> None:
    sampler = persistent_sampler(persistent_rollouts=4, rollout_length=5)
    for update in range(2):
        sampler(update)
    tensors, meta = sampler.state()
    resumed = persistent_sampler(persistent_rollouts=4, rollout_length=5)
    resumed.restore(tensors, meta)
    torch.testing.assert_close(resumed(2)[0].obs, sampler(2)[0].obs)


def test_the_first_updates_act_at_random() -> None:
    """Item 3: upstream's random_steps: rollouts of the first updates act uniformly."""
    sampler = persistent_sampler(random_updates=2, persistent_rollouts=4, rollout_length=9)
    for update in range(3):
        sampler(update)
    acts = sampler.model.act[: len(sampler.model), 0].view(3, 4)
    assert (acts[:2] != 0.5).all() and (acts[:2].abs() <= 1).all()
    assert (acts[2] == 0.5).all()


def test_plan_prices_each_rollout_scheme(tmp_path) -> None:
    """`ombrl plan`: persistent costs one model step per update; rounds, h per round."""
    study = load_study(
        {
            "seeds": [0],
            "datasets": {
                "d": {
                    "source": "collect",
                    "env": "InvertedPendulum-v5",
                    "policy": "random",
                    "transitions": 100,
                }
            },
            "ensembles": {"e": {"config": "pnn"}},
            "modes": {
                "thesis": {"method": "epistemic-penalty", "ensemble": "e", "steps": 300},
                "mopo": {"ensemble": "e", "steps": 300, "rollout_every": 100, "rollout_length": 7},
            },
        },
        "s.yaml",
        root=ROOT,
    )
    units = {name: {"overhead_s": 0.0, "per_flop_s": 0.0} for name in [*UNITS, "startup"]}
    units["model_step"]["overhead_s"] = 1.0
    pricer = Pricer(study, units, tmp_path)
    # +1: one pass over the dataset for the scale (obs_std reads no model, priced anyway).
    assert pricer.policy("d", "thesis") == 300 + 1
    assert pricer.policy("d", "mopo") == 3 * 7 + 1


def upstream_epochs(val_losses: list[float], patience: int) -> int:
    """Epochs offline-model-based-rl's `train_to_convergence` runs on these mean validation
    losses (models/environment_model.py:397-454): any decrease resets the patience."""
    min_val_loss, stale, epochs = 1e10, 0, 0
    for loss in val_losses:
        if stale >= patience:
            break
        epochs += 1
        if loss < min_val_loss:
            stale, min_val_loss = 0, loss
        else:
            stale += 1
    return epochs


@pytest.mark.parametrize("rule", ["ensemble", "member"])
def test_ensemble_early_stopping_counts_patience_as_upstream(rule: str) -> None:
    """Item 6: the mean falls by a hair each epoch while no member gains 1% (upstream goes on),
    then rises while one member gains 1% (upstream stops after `patience`)."""
    from ombrl.models.fit import _FitState

    model = DynamicsEnsemble(2, 1, [4], 2, True, "swish", False)
    optimizer = torch.optim.Adam(model.parameters())
    state = _FitState(model, optimizer, None, torch.Generator(), "last", rule)
    per_member = [[1.0, 1.0], [0.999, 1.0], [0.998, 1.0], [0.997, 1.0], [0.996, 1.0]]
    per_member += [[0.9, 1.2], [0.8, 1.4], [0.7, 1.6], [0.6, 1.8]]
    epochs = 0
    for losses in per_member:
        if state.stopped(2):
            break
        epochs += 1
        state.end_epoch({"mse": torch.tensor(losses)}, {})
    means = [sum(losses) / 2 for losses in per_member]
    if rule == "ensemble":
        assert epochs == upstream_epochs(means, 2) == 7
    else:  # per member: stops in the plateau, goes on while member 0 improves
        assert epochs == 3


def test_the_thesis_ensemble_config_is_upstreams_model_fit() -> None:
    """Item 7: scripts/train_environment_model.py:14, 27-31 and schemas.py:114-122 (b361cc7f):
    7 probabilistic networks of 4x200, lr 1e-3, batch 256, 20% validation, patience 30 on the
    mean validation loss, last weights; a reward head (no reward function is configured)."""
    cfg = load_ensemble_config(ROOT / "config/ensembles/thesis.yaml", {})
    expected = {
        "num_models": 7,
        "hidden_size": [200, 200, 200, 200],
        "probabilistic": True,
        "predict_reward": True,
        "lr": 0.001,
        "batch_size": 256,
        "holdout_ratio": 0.2,
        "patience": 30,
        "early_stopping": "ensemble",
        "snapshot": "last",
        "scheduler_gamma": None,
    }
    assert {k: cfg[k] for k in expected} == expected
