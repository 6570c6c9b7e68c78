"""Model files: round trips, atomic writes, and clear errors for broken or mismatched files."""

from __future__ import annotations

import json

import pytest
import torch

from ombrl.errors import OmbrlError
from ombrl.io import load_model, save_model
from ombrl.models.ensemble import DynamicsEnsemble, load_ensemble, save_ensemble


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(3, 4, generator=g),
        "b": torch.arange(5, dtype=torch.int64),
        "t": torch.randn(6, generator=g)[::2],  # non-contiguous view
    }


def test_round_trip_is_exact(tmp_path):
    meta = {"seed": 3, "config": {"lr": 1e-3, "hidden": [200, 200]}, "name": "x"}
    save_model(tmp_path / "m", tensors(), meta)
    loaded, loaded_meta = load_model(tmp_path / "m")
    assert loaded_meta == meta
    assert set(loaded) == set(tensors())
    for key, value in tensors().items():
        assert torch.equal(loaded[key], value)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.safetensors"]


def test_custom_name_and_overwrite(tmp_path):
    save_model(tmp_path, {"a": torch.zeros(2)}, {"v": 1}, name="policy")
    save_model(tmp_path, {"a": torch.ones(2)}, {"v": 2}, name="policy")
    loaded, meta = load_model(tmp_path, name="policy")
    assert meta == {"v": 2} and torch.equal(loaded["a"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.json", "policy.safetensors"]


def test_missing_file_names_it(tmp_path):
    save_model(tmp_path, tensors(), {})
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(OmbrlError, match="model.safetensors: model file not found"):
        load_model(tmp_path)
    with pytest.raises(OmbrlError, match="model.json"):
        load_model(tmp_path / "nowhere")


def test_corrupted_tensor_file(tmp_path):
    save_model(tmp_path, tensors(), {})
    path = tmp_path / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # flip bits in the tensor payload: the file still parses
    path.write_bytes(bytes(data))
    with pytest.raises(OmbrlError, match="model.safetensors: sha256 differs"):
        load_model(tmp_path)
    path.write_bytes(b"\x00" * 4)
    with pytest.raises(OmbrlError, match="model.safetensors"):
        load_model(tmp_path)


def test_corrupted_json_file(tmp_path):
    save_model(tmp_path, tensors(), {})
    path = tmp_path / "model.json"
    path.write_text(path.read_text()[:-10])
    with pytest.raises(OmbrlError, match="model.json: not valid JSON"):
        load_model(tmp_path)
    path.write_text('{"hello": 1}')
    with pytest.raises(OmbrlError, match="model.json: not an ombrl model file"):
        load_model(tmp_path)


def test_files_from_different_saves_are_rejected(tmp_path):
    save_model(tmp_path / "a", {"w": torch.zeros(3)}, {"which": "a"})
    save_model(tmp_path / "b", {"w": torch.ones(3)}, {"which": "b"})
    (tmp_path / "b" / "model.safetensors").replace(tmp_path / "a" / "model.safetensors")
    with pytest.raises(OmbrlError, match="different saves"):
        load_model(tmp_path / "a")


def make_ensemble(probabilistic: bool) -> DynamicsEnsemble:
    torch.manual_seed(0)
    model = DynamicsEnsemble(3, 2, [16, 16], 5, probabilistic, "swish", True)
    g = torch.Generator().manual_seed(1)
    model.set_normalizers(
        torch.randn(5, generator=g),
        torch.rand(5, generator=g) + 0.5,
        torch.randn(4, generator=g),
        torch.rand(4, generator=g) + 0.5,
    )
    model.elites = [3, 0, 4]
    return model


@pytest.mark.parametrize("probabilistic", [False, True])
def test_ensemble_round_trip_predicts_identically(tmp_path, probabilistic):
    model = make_ensemble(probabilistic)
    save_ensemble(model, tmp_path, {"seed": 7, "dataset_checksum": "abc"})
    loaded, meta = load_ensemble(tmp_path, torch.device("cpu"))
    assert meta == {"seed": 7, "dataset_checksum": "abc"}
    assert loaded.elites == [3, 0, 4] and loaded.architecture == model.architecture
    obs, act = torch.randn(10, 3), torch.randn(10, 2)
    with torch.no_grad():
        a, b = model.predict(obs, act), loaded.predict(obs, act)
    for field in ("next_obs_mean", "next_obs_var", "reward_mean", "reward_var"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None and y is None) or torch.equal(x, y)
    stored = json.loads((tmp_path / "model.json").read_text())["meta"]
    assert stored["architecture"]["hidden_size"] == [16, 16]


def test_ensemble_weights_must_match_json_architecture(tmp_path):
    save_ensemble(make_ensemble(False), tmp_path, {})
    path = tmp_path / "model.json"
    document = json.loads(path.read_text())
    document["meta"]["architecture"]["hidden_size"] = [16, 32]
    path.write_text(json.dumps(document))
    with pytest.raises(OmbrlError, match="does not match the architecture"):
        load_ensemble(tmp_path)
    document["meta"]["architecture"]["probabilistic"] = True
    document["meta"]["architecture"]["hidden_size"] = [16, 16]
    path.write_text(json.dumps(document))
    with pytest.raises(OmbrlError, match="does not match the architecture"):
        load_ensemble(tmp_path)
    del document["meta"]["architecture"]["activation"]
    path.write_text(json.dumps(document))
    with pytest.raises(OmbrlError, match="'architecture' must have keys"):
        load_ensemble(tmp_path)


def test_ensemble_bad_elites_rejected(tmp_path):
    save_ensemble(make_ensemble(False), tmp_path, {})
    path = tmp_path / "model.json"
    document = json.loads(path.read_text())
    document["meta"]["elites"] = [0, 9]
    path.write_text(json.dumps(document))
    with pytest.raises(OmbrlError, match="elites"):
        load_ensemble(tmp_path)
