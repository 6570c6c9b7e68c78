"""Study and ensemble configs: defaults from the schema, typed --params, one line per mistake."""

import contextlib
from pathlib import Path

import pytest
import yaml

from ombrl.config import load_ensemble_config, load_study, parse_params, read_yaml
from ombrl.errors import OmbrlError
from ombrl.preflight import study_problems

ROOT = Path(__file__).resolve().parents[1]


def default_study() -> dict:
    return read_yaml(ROOT / "config" / "config.yaml")


def test_default_study_is_valid_and_defaults_are_filled():
    study = load_study(default_study(), "config.yaml", root=ROOT)
    assert study["evaluation"]["episodes"] >= 1
    ensemble = study["ensembles"]["pnn-small"]
    # From the schema, the base file (pnn.yaml) and the study's overrides, in that order.
    assert ensemble["probabilistic"] is True
    assert ensemble["hidden_size"] == [200, 200, 200]
    assert ensemble["holdout_by"] == "transition"
    assert study["modes"]["mopo"]["uncertainty"] == "max_norm"


def test_every_problem_is_reported_one_line_each():
    bad = default_study()
    bad["colour"] = "blue"
    bad["seeds"] = ["zero"]
    bad["modes"]["bc"]["stepz"] = 3
    bad["modes"]["magic"] = {}
    bad["datasets"]["pendulum-random"]["policy"] = "great"
    with pytest.raises(OmbrlError) as info:
        load_study(bad, "study.yaml", root=ROOT)
    lines = str(info.value).splitlines()
    assert len(lines) == 5
    assert all(line.startswith("study.yaml: ") for line in lines)
    text = str(info.value)
    assert "colour: unknown key" in text
    assert "seeds.0: 'zero' is not of type 'integer'" in text
    assert "modes.bc.stepz: unknown key" in text
    assert "modes.magic.method: 'magic' is not one of bc, sac, mbpo" in text
    assert "(name one with `method:`)" in text
    assert "datasets.pendulum-random.policy: 'great' is not one of random, medium, expert" in text


def test_cross_references_are_checked():
    bad = default_study()
    bad["modes"]["mopo"]["ensemble"] = "missing"
    bad["datasets"]["hopper-superb-v2"] = {"source": "d4rl"}
    with pytest.raises(OmbrlError) as info:
        load_study(bad, "study.yaml", root=ROOT)
    text = str(info.value)
    assert "modes.mopo.ensemble: 'missing' is not an entry of ensembles" in text
    assert "datasets.hopper-superb-v2" in text


def test_params_are_typed_by_the_schema():
    params = parse_params(
        [
            "hidden_size=256,256",
            "lr=1e-3",
            "scheduler_gamma=null",
            "probabilistic=false",
            "num_models=5",
            "weight_decay=1e-5,2e-5,3e-5",
        ],
        "ensemble",
    )
    assert params == {
        "hidden_size": [256, 256],
        "lr": 0.001,
        "scheduler_gamma": None,
        "probabilistic": False,
        "num_models": 5,
        "weight_decay": [1e-5, 2e-5, 3e-5],
    }
    # A single width is still a list: the key only takes lists.
    assert parse_params(["hidden_size=128"], "ensemble") == {"hidden_size": [128]}


@pytest.mark.parametrize(
    "item, message",
    [
        ("hidden=3", "--params hidden: unknown key"),
        ("lr", "--params 'lr': expected key=value"),
    ],
)
def test_bad_params_name_the_key(item, message):
    with pytest.raises(OmbrlError, match=message):
        parse_params([item], "ensemble")


def test_ensemble_config_layers_and_wrong_types(tmp_path):
    cfg = load_ensemble_config(ROOT / "config/ensembles/dnn.yaml", {"fit_epochs": 3})
    assert cfg["fit_epochs"] == 3 and cfg["probabilistic"] is False and cfg["num_models"] == 7
    with pytest.raises(OmbrlError, match="num_models: 'many' is not of type 'integer'"):
        load_ensemble_config(ROOT / "config/ensembles/dnn.yaml", {"num_models": "many"})
    broken = tmp_path / "broken.yaml"
    broken.write_text("num_models: [1,\n")
    with pytest.raises(OmbrlError, match="broken.yaml: not valid YAML"):
        load_ensemble_config(broken, {})
    with pytest.raises(OmbrlError, match="no such config file"):
        load_ensemble_config(tmp_path / "absent.yaml", {})


def test_nll_snapshot_of_a_deterministic_ensemble_is_refused_when_the_config_loads():
    dnn = ROOT / "config/ensembles/dnn.yaml"
    with pytest.raises(OmbrlError, match=r"snapshot: 'nll' needs probabilistic: true") as err:
        load_ensemble_config(dnn, {"snapshot": "nll"})
    assert "\n" not in str(err.value) and "dnn.yaml" in str(err.value)
    assert load_ensemble_config(dnn, {"snapshot": "last"})["snapshot"] == "last"
    pnn = load_ensemble_config(ROOT / "config/ensembles/pnn.yaml", {"snapshot": "nll"})
    assert pnn["snapshot"] == "nll"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"snapshot": "mse"}, "snapshot: 'mse' picks an epoch by a holdout metric, and "),
        ({"patience": 3}, "patience: 3 stops on a holdout metric, and "),
        ({"num_elites": 2}, "num_elites: 2 ranks members by holdout MSE, and "),
    ],
)
def test_without_a_holdout_what_needs_one_is_refused_when_the_config_loads(override, message):
    """morel.yaml trains on every transition (mjrl): a key that needs a holdout metric is one
    line naming the key and the fix."""
    morel = ROOT / "config/ensembles/morel.yaml"
    assert load_ensemble_config(morel, {})["holdout_ratio"] == 0
    with pytest.raises(OmbrlError) as err:
        load_ensemble_config(morel, override)
    assert str(err.value).startswith(f"{morel} with --params: {message}")
    assert "holdout_ratio: 0 leaves no holdout" in str(err.value) and "\n" not in str(err.value)
    # With a holdout the same value is fine.
    assert load_ensemble_config(morel, {**override, "holdout_ratio": 0.2})["holdout_ratio"] == 0.2


def test_every_shipped_ensemble_config_is_valid():
    for path in sorted((ROOT / "config" / "ensembles").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        cfg = load_ensemble_config(path, {})
        assert {k: cfg[k] for k in raw} == raw, path.name


def test_per_dataset_overrides_are_validated_and_applied():
    from ombrl.config import mode_params

    study = default_study()
    study["overrides"] = {"pendulum-medium": {"mopo": {"rollout_length": 9}}}
    resolved = load_study(study, "s.yaml", root=ROOT)
    assert mode_params(resolved, "pendulum-medium", "mopo")["rollout_length"] == 9
    assert mode_params(resolved, "pendulum-random", "mopo")["rollout_length"] == 5
    study["overrides"] = {
        "pendulum-medium": {"mopo": {"rollout_length": "long"}},
        "nowhere": {"bc": {"steps": 3}},
    }
    with pytest.raises(OmbrlError) as info:
        load_study(study, "s.yaml", root=ROOT)
    text = str(info.value)
    assert "overrides.nowhere: not an entry of datasets" in text
    assert "overrides.pendulum-medium.mopo.rollout_length: 'long'" in text


def test_yaml_aliases_give_each_mode_its_own_defaults(tmp_path):
    """Modes sharing one YAML anchor are filled and checked one by one, not as one object."""
    path = tmp_path / "study.yaml"
    path.write_text(
        "seeds: [0]\n"
        "datasets: {d: {source: collect, env: InvertedPendulum-v5, policy: random,"
        " transitions: 10}}\n"
        "ensembles: {e: {config: pnn}}\n"
        "modes:\n"
        "  mbpo: &shared {ensemble: e}\n"
        "  epistemic-penalty: *shared\n"
        "  aleatoric-partitioning: *shared\n"
    )
    study = load_study(read_yaml(path), str(path))
    modes = study["modes"]
    assert "penalty_lambda" not in modes["mbpo"] and "threshold" not in modes["mbpo"]
    assert modes["epistemic-penalty"]["scale"] == "obs_std"
    assert modes["aleatoric-partitioning"]["uncertainty"] == "max_var"
    assert modes["mbpo"]["reward_source"] == "sampled"
    assert modes["epistemic-penalty"]["reward_source"] == "mean"


def test_a_choice_named_none_is_a_choice_and_not_null():
    parsed = parse_params(
        ["scale=none", "halt_penalty=none", "threshold=2"], "epistemic_partitioning"
    )
    assert parsed == {"scale": "none", "halt_penalty": None, "threshold": 2}


def test_named_entries_run_one_method_with_different_settings():
    study = default_study()
    mopo = study["modes"].pop("mopo")
    study["modes"]["mopo-l1"] = {**mopo, "method": "mopo", "penalty_lambda": 1}
    study["modes"]["mopo-l5"] = {**mopo, "method": "mopo", "penalty_lambda": 5}
    modes = load_study(study, "s.yaml", root=ROOT)["modes"]
    assert modes["bc"]["method"] == "bc"  # an entry without `method:` is its own method
    assert [modes[m]["method"] for m in ("mopo-l1", "mopo-l5")] == ["mopo"] * 2
    assert (modes["mopo-l1"]["penalty_lambda"], modes["mopo-l5"]["penalty_lambda"]) == (1, 5)
    assert modes["mopo-l5"]["uncertainty"] == "max_norm"  # the method's defaults


def test_method_mistakes_are_one_line_each():
    study = default_study()
    study["modes"]["mopo-x"] = {"method": "mopox", "ensemble": "pnn-small"}
    study["modes"]["mopo-l5"] = {"method": "mopo", "ensemble": "pnn-small", "lamda": 5}
    with pytest.raises(OmbrlError) as info:
        load_study(study, "s.yaml", root=ROOT)
    lines = str(info.value).splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("s.yaml: modes.mopo-x.method: 'mopox' is not one of bc, sac, mbpo")
    assert lines[1].startswith("s.yaml: modes.mopo-l5.lamda: unknown key (known: alpha,")


def test_more_elites_than_members_is_an_error_not_a_clamp():
    study = default_study()
    study["ensembles"]["pnn-small"]["params"].update(num_models=3, num_elites=5)
    with pytest.raises(OmbrlError, match="num_elites: 5 is more than num_models \\(3\\)"):
        load_study(study, "s.yaml", root=ROOT)


def test_a_planner_that_cannot_plan_with_its_ensembles_elites_is_refused_before_any_job():
    study = default_study()  # pnn-small: 7 members, 5 elites (pnn.yaml)
    particles = read_yaml(ROOT / "config" / "pets" / "small.yaml")["particles"]
    assert particles % 5  # the small preset's particles do not split among 5 elites
    study["modes"]["pets"] = {"ensemble": "pnn-small"}
    study["modes"]["pets-on-morel"] = {"method": "pets", "ensemble": "morel-small", "particles": 8}
    with contextlib.chdir(ROOT):  # presets are read from config/pets/, as in a workdir
        lines = study_problems(load_study(study, "s.yaml", root=ROOT), "s.yaml")
        assert len(lines) == 2
        assert lines[0].startswith("s.yaml: modes.pets: pets with 5 elite(s): particles: ")
        assert "must be a multiple of num_models (5)" in lines[0]
        # MOReL's ensemble (4 members, all kept) is deterministic: the preset's PE cannot plan.
        assert "modes.pets-on-morel: model_type PE needs a probabilistic ensemble" in lines[1]
        study["modes"]["pets"]["particles"] = 10
        study["modes"]["pets-on-morel"]["model_type"] = "DE"
        assert study_problems(load_study(study, "s.yaml", root=ROOT), "s.yaml") == []


def test_the_locomotion_study_is_the_d4rl_study_on_generated_data():
    """config/locomotion.yaml keeps d4rl.yaml's settings, dataset for dataset (no drift)."""
    d4rl, loco = (read_yaml(ROOT / "config" / f"{name}.yaml") for name in ("d4rl", "locomotion"))
    for key in ("seeds", "ensembles", "evaluation", "scores"):
        assert loco[key] == d4rl[key], key
    named = {  # a mode restricted to some datasets names them by the study's dataset names
        name: {**mode, "datasets": [f"{d}-v2" for d in mode["datasets"]]}
        if "datasets" in mode
        else mode
        for name, mode in loco["modes"].items()
    }
    assert named == d4rl["modes"]
    assert {f"{name}-v2": values for name, values in loco["overrides"].items()} == d4rl["overrides"]
    assert {f"{name}-v2" for name in loco["datasets"]} == set(d4rl["datasets"])
    study = load_study(loco, "config/locomotion.yaml", root=ROOT)
    for name, spec in study["datasets"].items():
        assert (spec["source"], spec["env"].split("-")[0].lower()) == (
            "generate",
            name.split("-")[0],
        )
        assert name.endswith(spec["quality"])
