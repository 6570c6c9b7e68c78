"""PETS: planning with CEM or random shooting on particles propagated through an ensemble."""

from ombrl.planning.cem import CEMOptimizer, RandomOptimizer, truncated_normal
from ombrl.planning.mpc import NON_FINITE_COST, MPCAgent, trajectory_costs
from ombrl.planning.pets import (
    Episode,
    PetsResult,
    episodes_dataset,
    fit_config,
    make_agent,
    make_ensemble,
    run_episode,
    train_pets,
    write_episodes,
)
from ombrl.planning.propagation import (
    MODEL_TYPES,
    PROP_TYPES,
    Propagator,
    check_types,
    planning_model,
    single_member,
)
from ombrl.planning.settings import (
    CONTROLLER_ARGS,
    ENTRY_KEYS,
    OPT_TYPES,
    PRESET_DIR,
    PetsConfig,
    check_pets_config,
    entry_settings,
    load_pets_config,
    preset_path,
)

__all__ = [
    "CONTROLLER_ARGS",
    "ENTRY_KEYS",
    "MODEL_TYPES",
    "NON_FINITE_COST",
    "OPT_TYPES",
    "PRESET_DIR",
    "PROP_TYPES",
    "CEMOptimizer",
    "Episode",
    "MPCAgent",
    "PetsConfig",
    "PetsResult",
    "Propagator",
    "RandomOptimizer",
    "check_pets_config",
    "check_types",
    "entry_settings",
    "episodes_dataset",
    "fit_config",
    "load_pets_config",
    "make_agent",
    "make_ensemble",
    "planning_model",
    "preset_path",
    "run_episode",
    "single_member",
    "train_pets",
    "trajectory_costs",
    "truncated_normal",
    "write_episodes",
]
