"""Model files: tensors in safetensors, everything else in JSON beside them. No pickle.

A model is a pair `{name}.safetensors` + `{name}.json` in one folder (dynamics ensembles use
`model`, policies `policy`). Both files are written to temporary names and moved into place
with `os.replace`, so a reader never sees a half-written file. The JSON records the sha256 of
the safetensors file: a pair from two different saves (a crash between the two renames, or a
file copied by hand) is detected on load instead of silently mixing weights and settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ombrl.errors import OmbrlError

FORMAT_VERSION = 1


def _write_atomic(path: Path, data: bytes) -> Path:
    """Write `data` to a temporary file next to `path`; return it (not yet renamed)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def require_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights holding NaN or inf: no job writes a policy, model or score from them.

    Raises:
        OmbrlError: naming the first non-finite tensor and `where` it was found.
    """
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise OmbrlError(
                f"{where}: weights turned non-finite ({name}); nothing written; lower the "
                "learning rate or check the data"
            )


def save_model(
    directory: Path, tensors: dict[str, torch.Tensor], meta: dict, name: str = "model"
) -> None:
    """Write `{name}.safetensors` and `{name}.json` into `directory`, each atomically.

    Args:
        directory: destination folder (created if missing).
        tensors: named tensors (any device; stored from CPU copies).
        meta: JSON-serialisable settings to store beside the tensors.
        name: file stem, e.g. "model" or "policy".
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    blob = save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    document = {
        "format_version": FORMAT_VERSION,
        "safetensors_sha256": hashlib.sha256(blob).hexdigest(),
        "meta": meta,
    }
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    tensor_path = directory / f"{name}.safetensors"
    json_path = directory / f"{name}.json"
    tmp_tensors = _write_atomic(tensor_path, blob)
    try:
        tmp_json = _write_atomic(json_path, text.encode())
    except BaseException:
        tmp_tensors.unlink(missing_ok=True)
        raise
    os.replace(tmp_tensors, tensor_path)
    os.replace(tmp_json, json_path)


def load_model(directory: Path, name: str = "model") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a pair written by `save_model`.

    Args:
        directory: folder holding `{name}.safetensors` and `{name}.json`.
        name: file stem.

    Returns:
        The tensors (on CPU) and the meta dict given to `save_model`.

    Raises:
        OmbrlError: a missing, unreadable or corrupted file, or two files from different saves.
    """
    directory = Path(directory)
    tensor_path = directory / f"{name}.safetensors"
    json_path = directory / f"{name}.json"
    for path in (json_path, tensor_path):
        if not path.is_file():
            raise OmbrlError(f"{path}: model file not found")
    try:
        document = json.loads(json_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OmbrlError(f"{json_path}: not valid JSON ({err})") from err
    if (
        not isinstance(document, dict)
        or document.get("format_version") != FORMAT_VERSION
        or not isinstance(document.get("meta"), dict)
        or not isinstance(document.get("safetensors_sha256"), str)
    ):
        raise OmbrlError(
            f"{json_path}: not an ombrl model file (format_version {FORMAT_VERSION} expected)"
        )
    blob = tensor_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != document["safetensors_sha256"]:
        raise OmbrlError(
            f"{tensor_path}: sha256 differs from the one recorded in {json_path} "
            "(corrupted, or the two files come from different saves)"
        )
    try:
        tensors = load_safetensors(blob)
    except SafetensorError as err:
        raise OmbrlError(f"{tensor_path}: unreadable safetensors file ({err})") from err
    return tensors, document["meta"]
