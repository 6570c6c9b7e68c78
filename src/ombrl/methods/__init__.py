"""The registry of methods: the one list of what a study's `modes:` entry may name.

A method is a way of turning a study's inputs (a dataset, an ensemble trained on it, an
environment to act in) into something that is evaluated and scored: policy weights, or a
planner on the ensemble (`pets`). Each method family lives in one module of this package,
which exports `train(method, cfg, inputs, on_eval)` and `load_policy(meta, tensors, device,
seed)` (the trained policy acting again, for `ombrl render`); the registry names the module
without importing it, so a job imports only the code of the method it runs (and the
workflow's rerun fingerprints, read from the imports, see only that code).

Everything else derives from `METHODS`: the schema's choice of `method:` (`ombrl.config`),
the CLI's `--mode` choices, which entries need an ensemble in the workflow, and which module
`ombrl.policies` calls.

Adding a method: write its module (with `train`), add its keys as one `$defs` section of
`schemas/config.schema.yaml`, add one `MethodSpec` row here, and test it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from ombrl.errors import OmbrlError

if TYPE_CHECKING:
    import torch

    from ombrl.checkpoint import Checkpointer
    from ombrl.data.dataset import Dataset
    from ombrl.models.ensemble import DynamicsEnsemble
    from ombrl.training.loop import Evaluation


@dataclass(frozen=True)
class MethodSpec:
    """What the rest of ombrl needs to know about a method before running it.

    Attributes:
        name: the method's name, as a study's `method:` and the CLI's `--mode` spell it.
        module: the module (below `ombrl.methods`) whose `train` runs it.
        section: the `$defs` entry of the config schema holding its keys and defaults.
        needs_ensemble: trains with a dynamics ensemble fitted on the dataset.
        needs_elites: its ensemble must keep fewer elites than members (`num_elites`
            below `num_models`), checked when a study loads.
        online: can also train by acting in an environment (`train-policy --env`).
        progress: the unit of its progress (`step` column): `updates`, `iterations`, ...;
            None for a method that trains nothing (a planner): one evaluation at step 0,
            drawn as a level in avg_return.pdf.
        task_objective: it maximises the task's return; False for the thesis's survival and
            offline exploration modes, whose scores aggregates leave out unless asked.
        starts_from: starts from another entry's trained SAC policy (a study entry's `from:`,
            the CLI's `--init`).
        model_free: a model-free offline reference (td3-bc, iql, cql): figures draw it in a
            colour family of its own.
    """

    name: str
    module: str
    section: str
    needs_ensemble: bool
    needs_elites: bool = False
    online: bool = False
    progress: str | None = "updates"
    task_objective: bool = True
    starts_from: bool = False
    model_free: bool = False

    @property
    def module_name(self) -> str:
        """The importable name of `module`."""
        return f"{__name__}.{self.module}"


def _sac_family(name: str, section: str, task_objective: bool = True) -> MethodSpec:
    return MethodSpec(name, "sac", section, needs_ensemble=True, task_objective=task_objective)


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in [
        MethodSpec("bc", "bc", "bc", needs_ensemble=False),
        MethodSpec("sac", "sac", "sac", needs_ensemble=False, online=True),
        _sac_family("mbpo", "mbpo"),
        _sac_family("mopo", "mopo"),
        _sac_family("epistemic-penalty", "epistemic_penalty"),
        _sac_family("aleatoric-penalty", "aleatoric_penalty"),
        _sac_family("epistemic-partitioning", "epistemic_partitioning"),
        _sac_family("aleatoric-partitioning", "aleatoric_partitioning"),
        _sac_family("survival", "survival", task_objective=False),
        _sac_family(
            "offline-exploration-penalty", "offline_exploration_penalty", task_objective=False
        ),
        _sac_family(
            "offline-exploration-partitioning",
            "offline_exploration_partitioning",
            task_objective=False,
        ),
        MethodSpec(
            "finetune",
            "sac",
            "finetune",
            needs_ensemble=False,
            progress="env_steps",
            starts_from=True,
        ),
        MethodSpec("morel", "morel", "morel", needs_ensemble=True, progress="iterations"),
        MethodSpec(
            "j-morel",
            "morel",
            "j_morel",
            needs_ensemble=True,
            needs_elites=True,
            progress="iterations",
        ),
        MethodSpec("pets", "pets", "pets", needs_ensemble=True, progress=None),
        MethodSpec("td3-bc", "td3_bc", "td3_bc", needs_ensemble=False, model_free=True),
        MethodSpec("iql", "iql", "iql", needs_ensemble=False, model_free=True),
        MethodSpec("cql", "cql", "cql", needs_ensemble=False, model_free=True),
    ]
}


def method_spec(name: str) -> MethodSpec:
    """The spec of method `name`.

    Raises:
        OmbrlError: an unknown method, naming the known ones.
    """
    if name not in METHODS:
        raise OmbrlError(f"method: {name!r} is not one of {', '.join(METHODS)}")
    return METHODS[name]


def method_module(name: str) -> ModuleType:
    """Import (once) and return the module that runs method `name`."""
    return importlib.import_module(method_spec(name).module_name)


@dataclass
class Inputs:
    """What the policy stage hands a method's `train`.

    Attributes:
        env_id: the gymnasium environment the policy acts and is evaluated in.
        dataset: the offline data; None when training online (`--env`).
        ensemble: the dynamics model fitted on `dataset` (methods that need one), else None.
        seed: the job's seed; every training random number derives from it.
        device: where tensors live.
        evaluation: when and how to evaluate in `env_id`.
        progress: show a progress bar.
        checkpoint: resume from and save to it; None: neither.
        warmup: online only, uniform random steps before learning.
        start: the trained SAC state a method that `starts_from` another entry begins with.
    """

    env_id: str
    dataset: Dataset | None
    ensemble: DynamicsEnsemble | None
    seed: int
    device: torch.device
    evaluation: Evaluation
    progress: bool
    checkpoint: Checkpointer | None = None
    warmup: int | None = None
    start: dict[str, torch.Tensor] | None = None

    def require_ensemble(self, method: str) -> DynamicsEnsemble:
        """The ensemble, for a method that needs one, after checking it fits the dataset.

        Raises:
            OmbrlError: no ensemble, or one of other dimensions than the dataset's.
        """
        ensemble, dataset = self.ensemble, self.dataset
        if ensemble is None:
            raise OmbrlError(f"method {method} needs a trained ensemble")
        if (ensemble.obs_dim, ensemble.act_dim) != (dataset.obs_dim, dataset.act_dim):
            raise OmbrlError(
                f"ensemble dimensions ({ensemble.obs_dim}, {ensemble.act_dim}) do not match the "
                f"dataset's ({dataset.obs_dim}, {dataset.act_dim})"
            )
        return ensemble
