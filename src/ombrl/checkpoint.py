"""Resumable training: a job's state saved atomically outside its outputs, found again by key.

A cluster job can die at any moment (node failure, preemption, SIGKILL) and is started again
with the same command. Training loops save their whole state every N steps; the restarted job
finds it and continues, ending with the same weights and metrics as a run that was never
interrupted.

Layout: `<root>/<key>/step-<N>/state.safetensors + state.json` (written with `ombrl.io`, so no
pickle and each file atomically). `root` lies outside the job's outputs because Snakemake
deletes a failed job's outputs. `key` is the sha256 of the job's identity (command, resolved
config, seed, threads, device, input checksums, code version): a changed job never resumes a
stale state. A new step folder is complete before the older one is removed, so a kill during a
save leaves the previous state usable.

A checkpoint saved by other code than the current one is stale: no rerun can resume it. A job
that finds one for its own output says it starts over and why, and removes it; `ombrl
checkpoints` lists every checkpoint and `--clean` removes the stale ones.

A checkpoint that cannot be read (truncated, edited, from another job) is ignored with a
warning on stderr, and the job falls back to an older one or starts over: restarting costs time
but never gives wrong numbers, and an automatic restart must not fail forever on a bad file.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ombrl.errors import OmbrlError
from ombrl.io import load_model, save_model

CHECKPOINT_DIR_ENV = "OMBRL_CHECKPOINT_DIR"
DEFAULT_ROOT = ".checkpoints"
STATE_NAME = "state"
_STEP_PREFIX = "step-"


@dataclass
class TrainingState:
    """One saved state of a training loop.

    Attributes:
        step: progress when it was saved (epochs for ensembles, updates for policies).
        tensors: named tensors (CPU), as the loop stored them.
        meta: the loop's JSON part (counters, metric rows, bookkeeping).
    """

    step: int
    tensors: dict[str, Tensor]
    meta: dict


def checkpoint_root(flag: str | None) -> Path:
    """The root folder: `--checkpoint-dir`, else $OMBRL_CHECKPOINT_DIR, else `.checkpoints/`."""
    return Path(flag or os.environ.get(CHECKPOINT_DIR_ENV) or DEFAULT_ROOT)


def _canonical(identity: Mapping) -> str:
    try:
        return json.dumps(identity, sort_keys=True, separators=(",", ":"))
    except TypeError as err:
        raise OmbrlError(f"checkpoint identity is not JSON-serialisable: {err}") from err


def job_key(identity: Mapping) -> str:
    """sha256 (hex) of the canonical JSON of a job's identity."""
    return hashlib.sha256(_canonical(identity).encode()).hexdigest()


def subset(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors under `prefix.`, with the prefix removed."""
    start = len(prefix) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def prefixed(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors with `prefix.` prepended to every name (inverse of `subset`)."""
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    """An optimiser's per-parameter state (Adam moments, step counts) as flat named tensors.

    Hyperparameters come from the config when the optimiser is rebuilt, so only tensors are
    stored; a learning rate changed by a scheduler is the caller's to save.
    """
    return {
        f"{prefix}.{index}.{key}": value
        for index, slots in optimizer.state_dict()["state"].items()
        for key, value in slots.items()
    }


def load_optimizer_tensors(
    prefix: str, optimizer: torch.optim.Optimizer, tensors: Mapping[str, Tensor]
) -> None:
    """Inverse of `optimizer_tensors` (keys under `prefix.`)."""
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in subset(tensors, prefix).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict(
        {"state": state, "param_groups": optimizer.state_dict()["param_groups"]}
    )


def _global_rng_state() -> tuple[dict[str, Tensor], dict]:
    """The process-wide generators: torch (CPU, CUDA) as uint8 tensors, numpy and random as JSON.

    The loops draw from their own seeded generators, but a library call that reaches for a
    global generator must also see the same numbers after a resume.
    """
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    meta = {
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "python": [version, list(internal), gauss_next],
    }
    return tensors, meta


def _set_global_rng_state(tensors: Mapping[str, Tensor], meta: Mapping) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(tensors["cuda"]))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _warn(message: str) -> None:
    print(f"ombrl: warning: {message}", file=sys.stderr)


class Checkpointer:
    """Saves and finds the training state of one job.

    Args:
        root: folder holding every job's checkpoints (see `checkpoint_root`).
        identity: JSON-serialisable description of everything that determines the job's
            numbers; its hash names the job's folder and it is stored in every state.
        every: save every `every` steps (`due`); must be >= 1.
    """

    def __init__(self, root: Path, identity: Mapping, every: int) -> None:
        if every < 1:
            raise OmbrlError(f"--checkpoint-every: {every} must be >= 1 (0 disables checkpoints)")
        self.identity = json.loads(_canonical(identity))
        self.directory = Path(root) / job_key(identity)
        self.every = every

    def due(self, step: int) -> bool:
        """Whether a state should be saved after `step`."""
        return step % self.every == 0

    def _folders(self) -> list[Path]:
        """Step folders, newest first."""
        return self._folders_of(self.directory)

    @staticmethod
    def _folders_of(directory: Path) -> list[Path]:
        if not directory.is_dir():
            return []
        folders = [p for p in directory.iterdir() if p.name.startswith(_STEP_PREFIX)]
        return sorted(folders, key=lambda p: p.name, reverse=True)

    def save(self, step: int, tensors: Mapping[str, Tensor], meta: Mapping) -> None:
        """Store a state (plus the global RNG states), then drop the older ones.

        Args:
            step: progress so far (names the folder; returned by `load`).
            tensors: named tensors of the loop's state (any device).
            meta: JSON-serialisable rest of the state (key order is kept).
        """
        rng_tensors, rng_meta = _global_rng_state()
        folder = self.directory / f"{_STEP_PREFIX}{step:09d}"
        # The loop's part is one JSON string: `save_model` sorts keys, and the key order of
        # metric rows is the column order of the CSV files written from them.
        document = {"step": step, "job": self.identity, "rng": rng_meta, "state": json.dumps(meta)}
        save_model(folder, {**tensors, **prefixed(rng_tensors, "rng")}, document, STATE_NAME)
        for older in self._folders():
            if older != folder:
                shutil.rmtree(older, ignore_errors=True)

    def load(self) -> TrainingState | None:
        """The newest readable state of this job, or None; restores the global RNG states.

        Unreadable states are skipped with a warning (see the module docstring). Prints
        "resuming from step N" to stderr when a state is found.
        """
        for folder in self._folders():
            try:
                tensors, document = load_model(folder, STATE_NAME)
                if document.get("job") != self.identity:
                    raise OmbrlError(f"{folder}: saved by another job")
                step, meta = int(document["step"]), json.loads(document["state"])
                _set_global_rng_state(subset(tensors, "rng"), document["rng"])
            except (OmbrlError, KeyError, TypeError, ValueError, RuntimeError) as err:
                _warn(f"ignoring unreadable checkpoint {folder} ({err})")
                continue
            print(f"ombrl: resuming from step {step} ({folder})", file=sys.stderr)
            state = {k: v for k, v in tensors.items() if not k.startswith("rng.")}
            return TrainingState(step=step, tensors=state, meta=meta)
        return None

    def clear(self) -> None:
        """Delete this job's checkpoints (after its outputs are written)."""
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class SavedCheckpoint:
    """One job's folder under a checkpoint root, as `list_checkpoints` finds it.

    Attributes:
        directory: `<root>/<key>`.
        step: the newest saved step (None: no readable state).
        identity: the job identity stored with it ({} when unreadable).
    """

    directory: Path
    step: int | None
    identity: dict

    def stale_reason(self, code: str) -> str | None:
        """Why no rerun can resume it (None: a rerun of its job can): unreadable, or saved by
        other code than `code` (the current `code_version()`)."""
        if self.step is None:
            return "no readable state"
        if self.identity.get("code_version") != code:
            return f"saved by code {self.identity.get('code_version')}, now {code}"
        return None


def list_checkpoints(root: Path) -> list[SavedCheckpoint]:
    """Every job folder under `root` with its newest step and identity (read from the JSON
    only: no tensors are loaded)."""
    found = []
    for directory in sorted(p for p in Path(root).glob("*") if p.is_dir()):
        step, identity = None, {}
        for folder in Checkpointer._folders_of(directory):
            try:
                document = json.loads((folder / f"{STATE_NAME}.json").read_text())["meta"]
                step, identity = int(document["step"]), dict(document["job"])
                break
            except (OSError, ValueError, KeyError, TypeError):
                continue
        found.append(SavedCheckpoint(directory, step, identity))
    return found


def checkpoints_report(root: Path, clean: bool) -> str:
    """`ombrl checkpoints`: one line per checkpoint under `root` (key, step, output, and
    whether a rerun can resume it), then a count; with `clean`, the stale ones are removed."""
    from ombrl.runtime import code_version

    code = code_version()
    saved = list_checkpoints(root)
    lines, stale = [], 0
    for checkpoint in saved:
        reason = checkpoint.stale_reason(code)
        state = f"stale: {reason}" if reason else "resumable"
        output = checkpoint.identity.get("output", "?")
        lines.append(
            f"{checkpoint.directory.name[:12]}  step {checkpoint.step}  {output}  ({state})"
        )
        if reason is not None:
            stale += 1
            if clean:
                shutil.rmtree(checkpoint.directory, ignore_errors=True)
    done = "removed" if clean else "--clean removes them"
    return "\n".join([*lines, f"{root}: {len(saved)} checkpoints, {stale} stale ({done})"])


def remove_stale_for_output(checkpointer: Checkpointer) -> None:
    """Remove the checkpoints of the same output saved by other code (a code edit between a
    kill and the rerun: no rerun can resume them), saying so: the job starts over. Those
    saved with other settings are kept: running the old settings again resumes them."""
    output = checkpointer.identity["output"]
    code = checkpointer.identity["code_version"]
    for saved in list_checkpoints(checkpointer.directory.parent):
        reason = saved.stale_reason(code)
        if saved.identity.get("output") != output or reason is None:
            continue
        print(
            f"ombrl: the checkpoint of {output} at step {saved.step} ({saved.directory}) is "
            f"stale ({reason}); starting over and removing it",
            file=sys.stderr,
        )
        shutil.rmtree(saved.directory, ignore_errors=True)


def job_checkpointer(
    root: str | None,
    every: int,
    identity: Mapping,
    seed: int,
    threads: int,
    output: Path,
) -> Checkpointer | None:
    """A job's `Checkpointer` (None when `every` is 0).

    `identity` holds everything that determines the job's numbers; the seed, thread count,
    output folder and code version are added here, so two jobs never share a checkpoint and
    a changed job never resumes a stale one.

    Args:
        root: `--checkpoint-dir` (None: see `checkpoint_root`).
        every: save every N steps; 0 disables checkpoints.
        identity: the job's settings, data checksums and inputs.
        seed: the job's seed.
        threads: its torch thread count.
        output: its output folder.
    """
    from ombrl.runtime import code_version

    if every < 0:
        raise OmbrlError(f"--checkpoint-every: {every} must be >= 0 (0: none)")
    if every == 0:
        return None
    identity = {
        **identity,
        "seed": seed,
        "threads": threads,
        "output": str(Path(output).resolve()),
        "code_version": code_version(),
    }
    checkpointer = Checkpointer(checkpoint_root(root), identity, every)
    remove_stale_for_output(checkpointer)
    return checkpointer
