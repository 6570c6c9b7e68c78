"""Import dynamics ensembles trained by upstream dynamics-ensembles-rl into a `DynamicsEnsemble`.

Upstream pickles whole Python objects; its `convert_hf_ensemble.py` also writes the pickle-free
folder layout read here (one sub-folder per member, plain tensors only), so this module never
unpickles anything but tensors: every `.pt` file is read with `torch.load(weights_only=True)`,
which refuses any other object. The layout, with S = obs_dim, A = act_dim, L hidden layers:

    DIR/metadata.yaml             the training config (`yaml.safe_dump`), of which these keys
                                  are read: `ensemble_size` (int E), `probabilistic` (bool),
                                  `activation_fn` ("swish" | "relu"), `hidden_size` (list of L
                                  ints, checked against the weights); the other keys (dataset,
                                  fit_epochs, ...) are kept as provenance.
    DIR/model_{i}/state_dict.pt   i = 0 .. E-1, the member's `DynamicsNN.state_dict()`:
        layers.{l}.weight         [out_l, in_l] (nn.Linear layout), l = 0 .. L; in_0 = S + A,
        layers.{l}.bias           [out_l]; out_L = S, or 2 S (mean, then log-variance) when
                                  probabilistic.
        max_logvar, min_logvar    [1, S], probabilistic only: the soft log-variance bounds.
        inputs_mu, inputs_sigma   [S + A], probabilistic only: never used upstream; ignored.
    DIR/model_{i}/normalization.pt  dict of tensors: `s_shift`, `s_scale` [S]; `a_shift`,
                                  `a_scale` [A]; `out_shift`, `out_scale` [S]; `mask` [S] bool.
    DIR/model_{i}/extra_params.pt   probabilistic only: copies of inputs_mu, inputs_sigma,
                                  max_logvar and min_logvar. Upstream's own loader overwrites
                                  them with the state_dict values, so they are not read here.

A member's upstream forward pass is
`x = [(s - s_shift) / (s_scale + 1e-8), (a - a_shift) / (a_scale + 1e-8)]`, the MLP, and
`s' = s + mask * (out * (out_scale + 1e-8) + out_shift)`. The scales are mean absolute
deviations, not standard deviations; our model only divides by a scale, so they become its
`*_std` buffers (with the `+ 1e-8`) and the predictions match upstream's. A masked target
dimension (upstream: scale below 1e-8) gets a zero target mean and zero head weights, so its
predicted delta is exactly 0 as upstream. All members were normalised with the same training
data upstream; a folder whose members disagree is refused.

Upstream de-normalised the log-variance like a mean (`lv * scale + shift`, times the mask)
instead of adding `2 log(scale)`; our `predict` de-normalises correctly, so a converted
probabilistic model predicts the correct variance, not upstream's.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import Tensor

from ombrl.errors import OmbrlError
from ombrl.models.ensemble import DynamicsEnsemble

# Upstream's `+ 1e-8` on every scale (DynamicsNN.forward and _finalize_forward).
UPSTREAM_EPS = 1e-8
NORMALIZATION_KEYS = ("s_shift", "s_scale", "a_shift", "a_scale", "out_shift", "out_scale", "mask")
BOUND_KEYS = ("max_logvar", "min_logvar")
IGNORED_KEYS = ("inputs_mu", "inputs_sigma")
ACTIVATIONS = ("swish", "relu")
LAYER_KEY = re.compile(r"layers\.(\d+)\.(weight|bias)")


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# The metadata.yaml keys that fix the architecture: (check, what the check wants).
METADATA_KEYS = {
    "ensemble_size": (_positive_int, "a positive integer"),
    "probabilistic": (lambda v: isinstance(v, bool), "true or false"),
    "activation_fn": (lambda v: v in ACTIVATIONS, f"one of {list(ACTIVATIONS)}"),
    "hidden_size": (
        lambda v: isinstance(v, list) and all(map(_positive_int, v)),
        "a list of positive integers",
    ),
}


def _torch_file(path: Path) -> dict[str, Tensor]:
    """A `.pt` file holding a dict of tensors, read without unpickling anything else."""
    if not path.is_file():
        raise OmbrlError(f"{path}: file not found")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # refused objects, truncation, garbage: all the file's fault
        match = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
        detail = match.group(1).split(". Please")[0].strip() if match else str(err).strip()
        raise OmbrlError(
            f"{path}: refused by torch.load(weights_only=True), which reads tensors only "
            f"({detail.splitlines()[0] if detail else type(err).__name__})"
        ) from err
    if not isinstance(content, dict):
        raise OmbrlError(f"{path}: holds a {type(content).__name__}, expected a dict of tensors")
    for key, value in content.items():
        if not isinstance(value, Tensor):
            raise OmbrlError(f"{path}: key {key!r} holds a {type(value).__name__}, not a tensor")
    return content


def _tensor(content: dict[str, Tensor], key: str, shape: tuple[int, ...], path: Path) -> Tensor:
    """`content[key]` after checking it exists and has `shape`."""
    if key not in content:
        raise OmbrlError(f"{path}: key {key!r} missing")
    value = content[key]
    if tuple(value.shape) != shape:
        raise OmbrlError(
            f"{path}: key {key!r} has shape {list(value.shape)}, expected {list(shape)}"
        )
    return value


def _width(content: dict[str, Tensor], key: str, path: Path) -> int:
    """The length of the non-empty 1-D tensor `content[key]` (a dimension of the data)."""
    if key not in content:
        raise OmbrlError(f"{path}: key {key!r} missing")
    if content[key].dim() != 1 or content[key].numel() == 0:
        raise OmbrlError(
            f"{path}: key {key!r} has shape {list(content[key].shape)}, expected a 1-D tensor"
        )
    return content[key].numel()


def _metadata(path: Path) -> dict:
    """The parts of metadata.yaml that fix the architecture, checked, plus the whole file."""
    if not path.is_file():
        raise OmbrlError(f"{path}: file not found")
    try:
        meta = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise OmbrlError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(meta, dict):
        raise OmbrlError(f"{path}: expected a mapping of config keys")
    for key, (ok, wanted) in METADATA_KEYS.items():
        if key not in meta:
            raise OmbrlError(f"{path}: key {key!r} missing")
        if not ok(meta[key]):
            raise OmbrlError(f"{path}: key {key!r} is {meta[key]!r}, expected {wanted}")
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as err:
        raise OmbrlError(f"{path}: holds values JSON cannot store ({err})") from err
    return meta


def _layers(state: dict[str, Tensor], path: Path) -> list[tuple[Tensor, Tensor]]:
    """The (weight, bias) pairs of `layers.0 .. layers.L`, in order (shapes checked later)."""
    indices = {int(m.group(1)) for key in state if (m := LAYER_KEY.fullmatch(key))}
    if not indices:
        raise OmbrlError(f"{path}: no 'layers.{{l}}.weight' keys (not an upstream DynamicsNN)")
    layers = []
    for index in range(max(indices) + 1):
        keys = (f"layers.{index}.weight", f"layers.{index}.bias")
        for key in keys:
            if key not in state:
                raise OmbrlError(f"{path}: key {key!r} missing")
        layers.append((state[keys[0]], state[keys[1]]))
    return layers


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class _Member:
    """One upstream member's tensors, checked against the architecture in metadata.yaml."""

    norm: dict[str, Tensor]  # NORMALIZATION_KEYS -> [S] or [A]
    layers: list[tuple[Tensor, Tensor]]  # (weight [out, in], bias [out]) per linear layer
    bounds: dict[str, Tensor]  # BOUND_KEYS -> [1, S]; empty when deterministic


def _read_member(member_dir: Path, hidden_size: list[int], probabilistic: bool) -> _Member:
    """Read and check `normalization.pt` and `state_dict.pt` of one member folder."""
    norm_path, state_path = member_dir / "normalization.pt", member_dir / "state_dict.pt"
    content = _torch_file(norm_path)
    obs_dim = _width(content, "s_shift", norm_path)
    act_dim = _width(content, "a_shift", norm_path)
    lengths = {"s": obs_dim, "a": act_dim, "out": obs_dim, "mask": obs_dim}
    norm = {
        key: _tensor(content, key, (lengths[key.rsplit("_", 1)[0]],), norm_path)
        for key in NORMALIZATION_KEYS
    }
    if norm["mask"].dtype != torch.bool:
        raise OmbrlError(f"{norm_path}: key 'mask' has dtype {norm['mask'].dtype}, not bool")

    state = _torch_file(state_path)
    layers = _layers(state, state_path)
    widths = [obs_dim + act_dim, *hidden_size, 2 * obs_dim if probabilistic else obs_dim]
    if len(layers) != len(widths) - 1:
        raise OmbrlError(
            f"{state_path}: {len(layers)} linear layers, but hidden_size {hidden_size} "
            f"(metadata.yaml) means {len(widths) - 1}"
        )
    for index, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        _tensor(state, f"layers.{index}.weight", (w_out, w_in), state_path)
        _tensor(state, f"layers.{index}.bias", (w_out,), state_path)
    known = {
        f"layers.{index}.{kind}" for index in range(len(layers)) for kind in ("weight", "bias")
    }
    bounds = {}
    if probabilistic:
        bounds = {key: _tensor(state, key, (1, obs_dim), state_path) for key in BOUND_KEYS}
        known |= {*BOUND_KEYS, *IGNORED_KEYS}
    unknown = sorted(set(state) - known)
    if unknown:
        kind = "probabilistic" if probabilistic else "deterministic"
        raise OmbrlError(f"{state_path}: unexpected keys {unknown} for a {kind} model")
    return _Member(norm=norm, layers=layers, bounds=bounds)


def convert_upstream(directory: Path) -> tuple[DynamicsEnsemble, dict]:
    """Build our batched ensemble from an upstream dynamics-ensembles-rl folder.

    Args:
        directory: folder with `metadata.yaml` and `model_{i}/` sub-folders (see the module
            docstring for the exact keys and shapes).

    Returns:
        The model (on CPU, eval mode, every member an elite, no reward head) whose `predict`
        equals each upstream member's forward pass (variances: corrected, see the module
        docstring), and provenance to store beside it: `converted_from` ("dynamics-ensembles-rl"),
        `upstream_config` (metadata.yaml), `upstream_files` (sha256 of each file read),
        `normalization` ("mad").

    Raises:
        OmbrlError: a missing file or key, a shape that does not fit the architecture, members
            with different normalisers, or a file holding anything but tensors.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise OmbrlError(f"{directory}: not a folder")
    meta_path = directory / "metadata.yaml"
    meta = _metadata(meta_path)
    num_models, probabilistic = meta["ensemble_size"], meta["probabilistic"]
    hidden_size = list(meta["hidden_size"])
    member_dirs = [directory / f"model_{i}" for i in range(num_models)]
    extra = sorted(
        {p.name for p in directory.glob("model_*") if p.is_dir()} - {p.name for p in member_dirs}
    )
    if extra:
        raise OmbrlError(
            f"{meta_path}: ensemble_size is {num_models} but {directory} also has {extra}"
        )

    members = [_read_member(d, hidden_size, probabilistic) for d in member_dirs]
    for member_dir, member in zip(member_dirs[1:], members[1:], strict=True):
        for key, value in member.norm.items():
            first = members[0].norm[key]
            if value.shape != first.shape or not torch.equal(value, first):
                raise OmbrlError(
                    f"{member_dir / 'normalization.pt'}: key {key!r} differs from model_0's; "
                    "all members must share one normaliser"
                )

    norm = members[0].norm
    obs_dim, act_dim = len(norm["s_shift"]), len(norm["a_shift"])
    mask = norm["mask"]
    model = DynamicsEnsemble(
        obs_dim=obs_dim,
        act_dim=act_dim,
        hidden_size=hidden_size,
        num_models=num_models,
        probabilistic=probabilistic,
        activation=meta["activation_fn"],
        predict_reward=False,
    )
    with torch.no_grad():
        for index, layer in enumerate([*model.hidden, model.head]):
            # nn.Linear stores [out, in]; EnsembleLinear wants [E, in, out] and [E, 1, out].
            layer.weight.copy_(torch.stack([m.layers[index][0].T for m in members]))
            layer.bias.copy_(torch.stack([m.layers[index][1].unsqueeze(0) for m in members]))
        # Upstream multiplies the de-normalised mean delta by the mask: make it exactly 0.
        model.head.weight[:, :, :obs_dim][:, :, ~mask] = 0.0
        model.head.bias[:, :, :obs_dim][:, :, ~mask] = 0.0
        for key in BOUND_KEYS if probabilistic else ():
            getattr(model, key).copy_(torch.stack([m.bounds[key] for m in members]))
    model.set_normalizers(
        input_mean=torch.cat([norm["s_shift"], norm["a_shift"]]),
        input_std=torch.cat([norm["s_scale"], norm["a_scale"]]) + UPSTREAM_EPS,
        target_mean=torch.where(mask, norm["out_shift"], 0.0),
        target_std=norm["out_scale"] + UPSTREAM_EPS,
    )
    files = [meta_path] + [
        d / name for d in member_dirs for name in ("normalization.pt", "state_dict.pt")
    ]
    provenance = {
        "converted_from": "dynamics-ensembles-rl",
        "upstream_config": meta,
        "upstream_files": {p.relative_to(directory).as_posix(): _sha256(p) for p in files},
        "normalization": "mad",
    }
    return model.eval(), provenance
