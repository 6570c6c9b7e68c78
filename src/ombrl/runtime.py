"""What every job sets up the same way: seeds, threads, device, and the code version it records."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import torch

import ombrl
from ombrl.errors import OmbrlError

PACKAGE_DIR = Path(ombrl.__file__).parent


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without it is a user mistake."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise OmbrlError("device: cuda was asked for but no CUDA device is available (use auto)")
    if name not in ("cpu", "cuda"):
        raise OmbrlError(f"device: {name!r} is not one of auto, cpu, cuda")
    return torch.device(name)


def setup(seed: int, threads: int) -> None:
    """Seed every generator from one integer and fix torch's thread count.

    The thread count is part of reproducibility: reductions split differently across threads
    give different floating-point sums, so a job uses the same count locally and on a cluster.
    """
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def source_fingerprint(paths: list[str]) -> str:
    """sha256 (12 hex digits) of library sources, given relative to the package folder.

    A folder stands for every `.py` file below it. The workflow passes each rule the
    fingerprint of the sources its stage uses, so editing one stage's code reruns its jobs
    (Snakemake's parameter trigger) and no others.
    """
    digest = hashlib.sha256()
    for name in sorted(paths):
        target = PACKAGE_DIR / name
        if not target.exists():
            raise OmbrlError(f"source_fingerprint: no {target}")
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
        for path in files:
            digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def code_version() -> str:
    """Package version plus a hash of the whole library's source, recorded in every artefact."""
    return f"{ombrl.__version__}+{source_fingerprint(['.'])}"
