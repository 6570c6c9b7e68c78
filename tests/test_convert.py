"""Importing upstream dynamics-ensembles-rl members: same predictions, clear errors, no pickle.

The upstream folder is fabricated here as upstream's `convert_hf_ensemble.py` writes it:
`torch.save` of each member's `DynamicsNN.state_dict()` and of its normaliser dict (torch.save is
used only to make these files). `UpstreamMember` repeats upstream's forward pass line by line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import Tensor, nn

from ombrl.errors import OmbrlError
from ombrl.models.convert import convert_upstream
from ombrl.models.ensemble import load_ensemble, save_ensemble

S, A, E, N = 5, 2, 3, 400
CONSTANT_DIM = 3  # its delta s' - s never varies: upstream masks it (scale < 1e-8)
DNN = {"hidden_size": [16, 16], "activation_fn": "relu", "probabilistic": False}
PNN = {"hidden_size": [16, 16, 16, 16], "activation_fn": "swish", "probabilistic": True}


def swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


class UpstreamMember(nn.Module):
    """Upstream `DeterministicNN` / `ProbabilisticNN` (same parameter names and forward)."""

    def __init__(self, hidden: list[int], probabilistic: bool, activation: str) -> None:
        super().__init__()
        self.out_dim = 2 * S if probabilistic else S
        sizes = (S + A, *hidden, self.out_dim)
        self.layers = nn.ModuleList(
            nn.Linear(i, o) for i, o in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.activation_fn = swish if activation == "swish" else torch.relu
        self.probabilistic = probabilistic
        if probabilistic:
            self.inputs_mu = nn.Parameter(torch.zeros(S + A), requires_grad=False)
            self.inputs_sigma = nn.Parameter(torch.zeros(S + A), requires_grad=False)
            # Trained bounds differ from the initial 0.5 / -10: make them member-specific.
            self.max_logvar = nn.Parameter(0.5 + 0.3 * torch.randn(1, S))
            self.min_logvar = nn.Parameter(-3.0 + 0.3 * torch.randn(1, S))

    def forward(self, s: Tensor, a: Tensor, norm: dict, transform_out: bool = True):
        s_in = (s - norm["s_shift"]) / (norm["s_scale"] + 1e-8)
        a_in = (a - norm["a_shift"]) / (norm["a_scale"] + 1e-8)
        out = torch.cat([s_in, a_in], -1)
        for i in range(len(self.layers) - 1):
            out = self.activation_fn(self.layers[i](out))
        out = self.layers[-1](out)
        if not self.probabilistic:
            if transform_out:
                out = (out * (norm["out_scale"] + 1e-8) + norm["out_shift"]) * norm["mask"] + s
            return out
        mean, logvar = out[..., : self.out_dim // 2], out[..., self.out_dim // 2 :]
        logvar = self.max_logvar - nn.functional.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + nn.functional.softplus(logvar - self.min_logvar)
        if transform_out:
            mean = (mean * (norm["out_scale"] + 1e-8) + norm["out_shift"]) * norm["mask"] + s
            logvar = (logvar * (norm["out_scale"] + 1e-8) + norm["out_shift"]) * norm["mask"]
        return mean, logvar


def upstream_normalization(seed: int) -> dict[str, Tensor]:
    """Upstream `set_transformations` (mean absolute deviation) on random transitions."""
    rng = np.random.default_rng(seed)
    s = rng.normal(2.0, 3.0, (N, S)).astype(np.float32)
    a = rng.uniform(-1, 1, (N, A)).astype(np.float32)
    delta = rng.normal(0.5, 0.2, (N, S)).astype(np.float32)
    delta[:, CONSTANT_DIM] = 0.25
    sp = s + delta
    s_shift, a_shift = s.mean(0), a.mean(0)
    out_shift = (sp - s).mean(0)
    out_scale = np.abs(sp - s - out_shift).mean(0)
    norm = {
        "s_shift": s_shift,
        "a_shift": a_shift,
        "s_scale": np.abs(s - s_shift).mean(0),
        "a_scale": np.abs(a - a_shift).mean(0),
        "out_shift": out_shift,
        "out_scale": out_scale,
    }
    norm = {k: torch.from_numpy(v).float() for k, v in norm.items()}
    norm["mask"] = torch.from_numpy(out_scale >= 1e-8)
    return norm


def write_upstream(directory: Path, spec: dict, seed: int = 0) -> tuple[list, dict]:
    """Write an upstream ensemble folder; return its members and their shared normaliser."""
    torch.manual_seed(seed)
    norm = upstream_normalization(seed)
    assert not norm["mask"][CONSTANT_DIM] and norm["mask"].sum() == S - 1
    metadata = {**spec, "ensemble_size": E, "dataset": "hopper-medium-v0", "fit_epochs": 300}
    directory.mkdir(parents=True)
    (directory / "metadata.yaml").write_text(yaml.safe_dump(metadata))
    members = []
    for i in range(E):
        member = UpstreamMember(spec["hidden_size"], spec["probabilistic"], spec["activation_fn"])
        (directory / f"model_{i}").mkdir()
        torch.save(member.state_dict(), directory / f"model_{i}/state_dict.pt")
        torch.save(norm, directory / f"model_{i}/normalization.pt")
        members.append(member)
    return members, norm


def batch(seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(64, S, generator=g) * 3 + 2, torch.rand(64, A, generator=g) * 2 - 1


@pytest.mark.parametrize("spec", [DNN, PNN], ids=["dnn", "pnn"])
def test_converted_means_match_upstream_members(tmp_path, spec):
    members, norm = write_upstream(tmp_path / "up", spec)
    model, meta = convert_upstream(tmp_path / "up")
    s, a = batch()
    with torch.no_grad():
        ours = model.predict(s, a).next_obs_mean
        theirs = [m(s, a, norm) for m in members]
    theirs = torch.stack([t[0] if spec["probabilistic"] else t for t in theirs])
    assert ours.shape == (E, 64, S)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # Members differ, so a mix-up of members or a transposed weight would show above.
    assert (theirs[0] - theirs[1]).abs().max() > 1e-2
    # The masked dimension keeps s exactly, as upstream.
    assert torch.equal(ours[..., CONSTANT_DIM], s[:, CONSTANT_DIM].expand(E, -1))
    assert model.architecture["hidden_size"] == spec["hidden_size"]
    assert model.activation == spec["activation_fn"] and model.elites == list(range(E))
    assert meta["upstream_config"]["dataset"] == "hopper-medium-v0"
    assert sorted(meta["upstream_files"]) == sorted(
        ["metadata.yaml"]
        + [f"model_{i}/{f}" for i in range(E) for f in ("normalization.pt", "state_dict.pt")]
    )


def test_converted_variance_is_the_correctly_denormalised_one(tmp_path):
    members, norm = write_upstream(tmp_path / "up", PNN)
    model, _ = convert_upstream(tmp_path / "up")
    s, a = batch()
    with torch.no_grad():
        ours = model.predict(s, a).next_obs_var
        logvar_norm = torch.stack([m(s, a, norm, transform_out=False)[1] for m in members])
        buggy = torch.stack([m(s, a, norm)[1].exp() for m in members])
    correct = logvar_norm.exp() * (norm["out_scale"] + 1e-8) ** 2
    keep = norm["mask"]
    torch.testing.assert_close(ours[..., keep], correct[..., keep], rtol=1e-4, atol=1e-7)
    # Upstream's own variance (log-variance scaled like a mean) is a different number.
    assert not torch.allclose(ours[..., keep], buggy[..., keep], rtol=0.1)
    # Each member's soft bounds came along.
    bounds = torch.stack([m.max_logvar.detach() for m in members])
    torch.testing.assert_close(model.max_logvar.detach(), bounds)


def test_converted_model_round_trips_through_save_and_load(tmp_path):
    write_upstream(tmp_path / "up", PNN)
    model, meta = convert_upstream(tmp_path / "up")
    save_ensemble(model, tmp_path / "ours", meta)
    loaded, loaded_meta = load_ensemble(tmp_path / "ours")
    s, a = batch()
    with torch.no_grad():
        before, after = model.predict(s, a), loaded.predict(s, a)
    assert torch.equal(before.next_obs_mean, after.next_obs_mean)
    assert torch.equal(before.next_obs_var, after.next_obs_var)
    assert loaded_meta == meta


def test_every_parameter_comes_from_the_files(tmp_path):
    write_upstream(tmp_path / "up", DNN)
    first, _ = convert_upstream(tmp_path / "up")
    torch.manual_seed(123)  # a parameter left at its random initial value would now differ
    second, _ = convert_upstream(tmp_path / "up")
    for (name, x), (_, y) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(x, y), name


class Touches:
    """Unpickling this would create a file: proof that a loader ran arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def edit_torch_file(path: Path, edit) -> None:
    content = torch.load(path, weights_only=True)
    edit(content)
    torch.save(content, path)


def drop_state_dict(up: Path) -> None:
    (up / "model_1/state_dict.pt").unlink()


def drop_out_scale(up: Path) -> None:
    edit_torch_file(up / "model_0/normalization.pt", lambda d: d.pop("out_scale"))


def narrow_layer(up: Path) -> None:
    def edit(d):
        d["layers.1.weight"] = d["layers.1.weight"][:8]

    edit_torch_file(up / "model_2/state_dict.pt", edit)


def pickle_object(up: Path) -> None:
    edit_torch_file(up / "model_0/state_dict.pt", lambda d: d.update(evil=Touches(up / "pwned")))


def int_value(up: Path) -> None:
    edit_torch_file(up / "model_0/normalization.pt", lambda d: d.update(mask=3))


def other_normalizer(up: Path) -> None:
    edit_torch_file(up / "model_1/normalization.pt", lambda d: d["s_scale"].mul_(2))


def no_ensemble_size(up: Path) -> None:
    meta = yaml.safe_load((up / "metadata.yaml").read_text())
    del meta["ensemble_size"]
    (up / "metadata.yaml").write_text(yaml.safe_dump(meta))


def extra_member(up: Path) -> None:
    (up / f"model_{E}").mkdir()


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (drop_state_dict, "model_1/state_dict.pt: file not found"),
        (drop_out_scale, "model_0/normalization.pt: key 'out_scale' missing"),
        (
            narrow_layer,
            "model_2/state_dict.pt: key 'layers.1.weight' has shape [8, 16], expected [16, 16]",
        ),
        (pickle_object, "model_0/state_dict.pt: refused by torch.load(weights_only=True)"),
        (int_value, "model_0/normalization.pt: key 'mask' holds a int, not a tensor"),
        (other_normalizer, "model_1/normalization.pt: key 's_scale' differs from model_0's"),
        (no_ensemble_size, "metadata.yaml: key 'ensemble_size' missing"),
        (extra_member, f"ensemble_size is {E} but"),
    ],
)
def test_bad_upstream_folders_are_clear_errors(tmp_path, corrupt, expected):
    up = tmp_path / "up"
    write_upstream(up, DNN)
    corrupt(up)
    with pytest.raises(OmbrlError) as info:
        convert_upstream(up)
    message = str(info.value)
    assert expected in message and len(message.splitlines()) == 1, message
    assert not (up / "pwned").exists()


def test_wrong_hidden_size_in_metadata_is_named(tmp_path):
    up = tmp_path / "up"
    write_upstream(up, {**DNN, "hidden_size": [16, 16, 16]})
    meta = yaml.safe_load((up / "metadata.yaml").read_text())
    (up / "metadata.yaml").write_text(yaml.safe_dump({**meta, "hidden_size": [16, 32, 16]}))
    with pytest.raises(OmbrlError, match=r"layers\.1\.weight' has shape \[16, 16\], expected"):
        convert_upstream(up)
