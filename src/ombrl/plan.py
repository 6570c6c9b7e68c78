"""The cost of a study before it runs: Snakemake's own job list, priced per job.

The jobs are those `snakemake --dry-run` schedules (parsed from its output, so the counts are
Snakemake's, never written again here). Each job is priced from per-unit costs that
`calibrate` measures on the machine it runs on with ombrl's own code: an ensemble gradient
step, a SAC update, a behaviour-cloning update, a batched ensemble prediction (model rollouts
and NPG paths), an environment step with a policy forward (evaluation and collection), and
the start-up of an `ombrl` process. Each unit is timed at a small and a large size and fitted
as `seconds = overhead + per_flop * flops`, so a job's cost scales with its networks, batch
sizes, epochs, steps and dataset size. The costs are single-thread CPU seconds; evaluation
episodes are priced at the environment's full episode length, and an ensemble's `fit_epochs`
in full (early stopping ends sooner), so the plan is an upper bound on those parts. Like the
dry run, it counts only the jobs still to run: a finished study plans nothing. GPU-hours are
the same estimates for the jobs whose resources ask for a GPU (a profile's `gpu: 1`): with a
calibration made on CPU, they are the hours those jobs would take on CPU, an upper bound.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import resource
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ombrl.config import build, load_study, mode_params, read_yaml
from ombrl.errors import OmbrlError

#: Where `calibrate` stores its figures unless told otherwise.
DEFAULT_CALIBRATION = Path.home() / ".cache" / "ombrl" / "calibration.json"
#: Rows of the D4RL v2 MuJoCo files (published sizes, medium-expert rounded up), for a plan
#: made before the download; a dataset not listed must be downloaded first.
D4RL_SIZES = {
    "random": 1_000_000,
    "medium": 1_000_000,
    "expert": 1_000_000,
    "medium-expert": 2_000_000,
    ("hopper", "medium-replay"): 402_000,
    ("halfcheetah", "medium-replay"): 202_000,
    ("walker2d", "medium-replay"): 302_000,
}
#: Units `calibrate` measures (name -> what one unit is).
UNITS = {
    "ensemble_step": "one gradient step of every member on its minibatch",
    "sac_update": "one SAC update (critics, actor, temperature, targets)",
    "bc_update": "one behaviour-cloning update",
    "model_step": "one batched ensemble prediction (a rollout or path step)",
    "env_step": "one environment step with a policy forward",
}
#: Observation and action sizes the units are timed at (HalfCheetah's, Walker2d's).
_OBS, _ACT = 17, 6


# ---------------------------------------------------------------------------------------------
# flops of one unit, from the sizes the config gives


def mlp_weights(sizes: list[int]) -> int:
    """Multiply-adds per sample of an MLP with these layer widths (input ... output)."""
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=False))


def ensemble_flops(
    members: int, batch: int, obs: int, act: int, hidden: list[int], out: int
) -> int:
    return members * batch * mlp_weights([obs + act, *hidden, out])


def sac_flops(batch: int, obs: int, act: int, hidden: list[int]) -> int:
    """Actor and two critics (target and online), forward and backward: their weights x batch."""
    actor = mlp_weights([obs, *hidden, 2 * act])
    critic = mlp_weights([obs + act, *hidden, 1])
    return batch * (actor + 4 * critic)


def cql_flops(batch: int, obs: int, act: int, hidden: list[int], n_actions: int) -> int:
    """SAC's update with the critics on the data and 3 n_actions sampled actions a row; the
    actor runs once on the 2 batch states and next states (the sampled actions share it)."""
    actor = mlp_weights([obs, *hidden, 2 * act])
    critic = mlp_weights([obs + act, *hidden, 1])
    return batch * (2 * actor + 4 * (1 + 3 * n_actions) * critic)


def bc_flops(batch: int, obs: int, act: int, hidden: list[int]) -> int:
    return batch * mlp_weights([obs, *hidden, act])


# ---------------------------------------------------------------------------------------------
# calibration


def _cpu_seconds(fn: Callable[[], None], budget: float) -> float:
    """CPU seconds per call of `fn`, calling it for about `budget` seconds (after one warm-up)."""
    fn()
    calls, start = 0, time.process_time()
    while calls < 3 or time.process_time() - start < budget:
        fn()
        calls += 1
    return (time.process_time() - start) / calls


def _fit(small: tuple[int, float], large: tuple[int, float]) -> dict:
    """`seconds = overhead + per_flop * flops` through two (flops, seconds) points."""
    (f0, s0), (f1, s1) = small, large
    per_flop = max((s1 - s0) / (f1 - f0), 0.0)
    return {"overhead_s": max(s0 - per_flop * f0, 0.0), "per_flop_s": per_flop}


def _ensemble_units(budget: float) -> tuple[dict, dict]:
    import torch

    from ombrl.models.ensemble import DynamicsEnsemble
    from ombrl.models.fit import train_step

    steps, predictions = [], []
    for members, hidden, batch, rollout in ((3, [32, 32], 64, 50), (7, [200] * 4, 256, 2000)):
        torch.manual_seed(0)
        model = DynamicsEnsemble(_OBS, _ACT, hidden, members, True, "swish", False)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = torch.randn(members, batch, _OBS + _ACT)
        y = torch.randn(members, batch, _OBS)
        obs, act = torch.randn(rollout, _OBS), torch.randn(rollout, _ACT)
        decay = model.decay_coefficients(0.0)

        def step(m=model, o=optimizer, x=x, y=y, d=decay) -> None:
            train_step(m, o, x, y, d, None)

        def predict(m=model, obs=obs, act=act) -> None:
            with torch.no_grad():
                m.predict(obs, act)

        out = 2 * _OBS
        steps.append(
            (ensemble_flops(members, batch, _OBS, _ACT, hidden, out), _cpu_seconds(step, budget))
        )
        flops = ensemble_flops(members, rollout, _OBS, _ACT, hidden, out)
        predictions.append((flops, _cpu_seconds(predict, budget)))
    return _fit(*steps), _fit(*predictions)


def _agent_unit(kind: str, budget: float) -> dict:
    import torch

    from ombrl.agents.buffer import Batch

    points = []
    for hidden, batch in (([32, 32], 64), ([256, 256], 256)):
        if kind == "sac":
            from ombrl.agents.sac import SAC, SACConfig

            cfg = SACConfig(hidden, 0.99, 0.005, 3e-4, batch, None)
            agent = SAC(_OBS, _ACT, -1.0, 1.0, cfg, torch.device("cpu"), 0)
            flops = sac_flops(batch, _OBS, _ACT, hidden)
        else:
            from ombrl.agents.bc import BC, BCConfig

            agent = BC(_OBS, _ACT, -1.0, 1.0, BCConfig(hidden, 3e-4, batch), torch.device("cpu"), 0)
            flops = bc_flops(batch, _OBS, _ACT, hidden)
        g = torch.Generator().manual_seed(0)
        data = Batch(
            obs=torch.randn(batch, _OBS, generator=g),
            act=torch.rand(batch, _ACT, generator=g) * 2 - 1,
            rew=torch.randn(batch, generator=g),
            next_obs=torch.randn(batch, _OBS, generator=g),
            terminal=torch.zeros(batch),
        )
        points.append((flops, _cpu_seconds(lambda a=agent, d=data: a.update(d), budget)))
    return _fit(*points)


def _env_step(budget: float) -> float:
    """Hopper-v5 step plus a 256x256 SAC actor's deterministic action (an evaluation step)."""
    import gymnasium as gym
    import torch

    from ombrl.agents.sac import SAC, SACConfig

    env = gym.make("Hopper-v5")
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    cfg = SACConfig([256, 256], 0.99, 0.005, 3e-4, 256, None)
    agent = SAC(obs_dim, act_dim, -1.0, 1.0, cfg, torch.device("cpu"), 0)
    state = {"obs": env.reset(seed=0)[0]}

    def step() -> None:
        obs, _, terminated, truncated, _ = env.step(agent.act(state["obs"], True))
        state["obs"] = env.reset()[0] if terminated or truncated else obs

    return _cpu_seconds(step, budget)


def _startup() -> float:
    """CPU seconds of an `ombrl` process importing what a training job imports."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    code = "import torch, mlflow, gymnasium, ombrl.cli, ombrl.policies, ombrl.ensembles"
    subprocess.run([sys.executable, "-c", code], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def calibrate(path: Path = DEFAULT_CALIBRATION, budget: float = 0.3) -> dict:
    """Measure the per-unit costs on this machine (one torch thread) and store them as JSON,
    with the code version that measured them (`is_current` then tells a changed library).

    Each unit runs for about `budget` CPU seconds at each of its two sizes (about 10 budgets
    in all, plus a few seconds of process start-up).
    """
    import torch

    from ombrl.runtime import code_version

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ensemble_step, model_step = _ensemble_units(budget)
        figures = {
            "ensemble_step": ensemble_step,
            "model_step": model_step,
            "sac_update": _agent_unit("sac", budget),
            "bc_update": _agent_unit("bc", budget),
            "env_step": {"overhead_s": _env_step(budget), "per_flop_s": 0.0},
            "startup": {"overhead_s": _startup(), "per_flop_s": 0.0},
        }
    finally:
        torch.set_num_threads(threads)
    document = {
        "machine": os.uname().nodename,
        "threads": 1,
        "code_version": code_version(),
        "units": figures,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return document


def is_current(path: Path = DEFAULT_CALIBRATION) -> bool:
    """Whether `path` holds a calibration made by this code version: `ombrl plan` calibrates
    itself where it does not (none yet, unreadable, or made by other library code, whose
    costs may differ)."""
    from ombrl.runtime import code_version

    try:
        document = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(document, dict) and document.get("code_version") == code_version()


def load_calibration(path: Path = DEFAULT_CALIBRATION) -> dict:
    try:
        return json.loads(Path(path).read_text())["units"]
    except FileNotFoundError:
        raise OmbrlError(f"{path}: no calibration; run `ombrl plan --calibrate` first") from None
    except (json.JSONDecodeError, KeyError):
        raise OmbrlError(
            f"{path}: not a calibration file (rerun `ombrl plan --calibrate`)"
        ) from None


# ---------------------------------------------------------------------------------------------
# the jobs Snakemake would run


@dataclass
class Job:
    """One job of the dry run: its rule, wildcards and whether it asks for a GPU."""

    rule: str
    wildcards: dict[str, str] = field(default_factory=dict)
    gpu: bool = False


def dry_run_jobs(configfile: Path, workdir: Path = Path("."), extra: list[str] = ()) -> list[Job]:
    """The jobs `snakemake --dry-run --configfile FILE` schedules, from its printed job list."""
    command = [sys.executable, "-m", "snakemake", "--dry-run", "--configfile", str(configfile)]
    result = subprocess.run(
        [*command, *extra], cwd=workdir, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
        raise OmbrlError(
            f"snakemake --dry-run failed: {(errors or result.stderr.splitlines() or ['?'])[-1]}"
        )
    jobs: list[Job] = []
    for line in result.stdout.splitlines():
        rule = re.fullmatch(r"(?:local)?rule (\w+):", line.strip())
        if rule:
            jobs.append(Job(rule.group(1)))
        elif jobs and line.strip().startswith("wildcards:"):
            pairs = line.strip().removeprefix("wildcards:").split(",")
            jobs[-1].wildcards = dict(p.strip().split("=", 1) for p in pairs if "=" in p)
        elif jobs and line.strip().startswith("resources:"):
            gpus = re.findall(r"\bgpus?=(\d+)", line)
            jobs[-1].gpu = any(int(n) > 0 for n in gpus)
    return jobs


# ---------------------------------------------------------------------------------------------
# pricing


@dataclass
class DatasetInfo:
    """What a job's cost depends on in a dataset: its size, dimensions and episode limit."""

    transitions: int
    obs: int
    act: int
    episode_steps: int


def dataset_info(name: str, spec: dict, workdir: Path) -> DatasetInfo:
    """Size and dimensions of a study's dataset: from its file when present, else from its
    entry (collect) or the published D4RL sizes, with the dimensions of its environment."""
    import gymnasium as gym

    from ombrl.data.d4rl import parse_name

    env_id = spec.get("env")
    transitions = spec.get("transitions")
    if spec["source"] == "generate":  # medium-replay: at most the whole behaviour run
        parts = {"medium-expert": 2, "medium-replay": 0}.get(spec["quality"], 1)
        transitions = parts * transitions if parts else spec["behaviour"]["env_steps"]
    if spec["source"] == "d4rl":
        parsed = parse_name(name)
        env_id = parsed.gym_id
        transitions = D4RL_SIZES.get((parsed.env, parsed.quality), D4RL_SIZES.get(parsed.quality))
    path = workdir / "resources" / "datasets" / f"{name}.hdf5"
    if path.is_file():
        import h5py

        with h5py.File(path, "r") as handle:
            transitions = handle["observations"].shape[0]
    if transitions is None:
        raise OmbrlError(f"datasets.{name}: unknown size; download it first ({path})")
    with warnings.catch_warnings():  # D4RL's -v4 ids are deprecated, and used on purpose
        warnings.simplefilter("ignore")
        env = gym.make(env_id)
    info = DatasetInfo(
        int(transitions),
        env.observation_space.shape[0],
        env.action_space.shape[0],
        env.spec.max_episode_steps or 1000,
    )
    env.close()
    return info


class Pricer:
    """CPU seconds of one job, from the calibration and the study's settings."""

    def __init__(self, study: dict, units: dict, workdir: Path) -> None:
        self.study, self.units, self.workdir = study, units, workdir
        self._datasets: dict[str, DatasetInfo] = {}

    def unit(self, name: str, flops: float = 0.0, calls: float = 1.0) -> float:
        figure = self.units[name]
        return calls * (figure["overhead_s"] + figure["per_flop_s"] * flops)

    def dataset(self, name: str) -> DatasetInfo:
        if name not in self._datasets:
            spec = self.study["datasets"][name]
            self._datasets[name] = dataset_info(name, spec, self.workdir)
        return self._datasets[name]

    def job(self, job: Job) -> float:
        if job.rule == "all":
            return 0.0
        cost = self.unit("startup")
        w = job.wildcards
        if job.rule == "collect_dataset":
            cost += self.unit("env_step", calls=self.study["datasets"][w["dataset"]]["transitions"])
        elif job.rule == "behaviour":
            cost += self.behaviour(w["behaviour"])
        elif job.rule == "generate_dataset":  # rolls a snapshot out (medium-replay: a copy)
            rows = self.dataset(w["dataset"]).transitions
            quality = self.study["datasets"][w["dataset"]]["quality"]
            cost += self.unit("env_step", calls=0 if quality == "medium-replay" else rows)
        elif job.rule == "train_ensemble":
            cost += self.ensemble(
                self.dataset(w["dataset"]), self.study["ensembles"][w["ensemble"]]
            )
        elif job.rule == "train_policy":
            cost += self.policy(w["dataset"], w["mode"])
        elif job.rule == "pets_online":
            cost += self.pets_run(w["env"], w["prop"])
        return cost

    def ensemble(self, data: DatasetInfo, cfg: dict) -> float:
        out = data.obs + int(cfg["predict_reward"])
        outputs = 2 * out if cfg["probabilistic"] else out
        train = math.ceil(data.transitions * (1 - cfg["holdout_ratio"]))
        holdout = data.transitions - train
        batch = cfg["batch_size"]
        step = ensemble_flops(
            cfg["num_models"], batch, data.obs, data.act, cfg["hidden_size"], outputs
        )
        check = ensemble_flops(
            cfg["num_models"], holdout, data.obs, data.act, cfg["hidden_size"], outputs
        )
        per_epoch = self.unit("ensemble_step", step, math.ceil(train / batch))
        per_epoch += self.unit("model_step", check, int(holdout > 0))  # holdout_ratio 0: none
        return cfg["fit_epochs"] * per_epoch

    def behaviour(self, run: str) -> float:
        """Online SAC: an update and an environment step per step after the warmup, and the
        evaluations of every snapshot (priced at full episodes) and of the own references."""
        from ombrl.data.behaviour import OWN_REF_EPISODES, snapshot_steps
        from ombrl.data.requests import BehaviourConfig, behaviour_name

        name = next(
            d for d, s in self.study["datasets"].items()
            if s["source"] == "generate" and behaviour_name(s) == run
        )  # fmt: skip
        data, cfg = self.dataset(name), self.study["datasets"][name]["behaviour"]
        flops = sac_flops(cfg["batch_size"], data.obs, data.act, cfg["hidden_size"])
        cost = self.unit("sac_update", flops, cfg["env_steps"] - cfg["warmup"])
        snapshots = len(snapshot_steps(build(BehaviourConfig, cfg)))
        episodes = snapshots * cfg["eval_episodes"] + 2 * OWN_REF_EPISODES
        return cost + self.unit("env_step", calls=cfg["env_steps"] + episodes * data.episode_steps)

    def policy(self, dataset: str, mode: str) -> float:
        from ombrl.methods import method_spec

        data = self.dataset(dataset)
        params = mode_params(self.study, dataset, mode)
        spec = method_spec(params["method"])
        evaluation = self.study["evaluation"]
        ensemble = self.study["ensembles"].get(params.get("ensemble"))
        if spec.progress is None:  # a planner: trains nothing, plans every evaluation action
            return self.planner(data, params, ensemble, evaluation["episodes"])
        if "iterations" in params:  # NPG: iterations of paths x horizon model steps
            evaluations = 1 + math.ceil(params["iterations"] / params["eval_every"])
            cost = params["iterations"] * self.npg_iteration(data, params, ensemble)
        else:
            evaluations = 1 + math.ceil(params["steps"] / evaluation["every"])
            cost = self.updates(data, params)
            if spec.progress == "env_steps":  # online: an environment step per update
                cost += self.unit("env_step", calls=params["steps"])
            if spec.needs_ensemble and params["rollout_scheme"] == "persistent":
                # one step of every live rollout per update
                cost += self.model(ensemble, data, params["persistent_rollouts"], params["steps"])
            elif spec.needs_ensemble:
                rounds = math.ceil(params["steps"] / params["rollout_every"])
                calls = rounds * params["rollout_length"]
                cost += self.model(ensemble, data, params["rollout_batch"], calls)
        if spec.needs_ensemble:  # thresholds or scales: one pass over the dataset
            cost += self.model(ensemble, data, data.transitions, 1)
        episodes = evaluations * evaluation["episodes"]
        return cost + self.unit("env_step", calls=episodes * data.episode_steps)

    def planner(self, data: DatasetInfo, params: dict, ensemble: dict, episodes: int) -> float:
        """One evaluation of a `pets` entry's planner on the ensemble's elites: episodes x the
        env's full length (an upper bound) actions."""
        from ombrl.planning.settings import entry_settings

        with contextlib.chdir(self.workdir):
            cfg = entry_settings(params, "", ensemble["num_elites"])  # a study names its preset
        return self.plan_actions(cfg, ensemble, data, episodes * data.episode_steps)

    def plan_actions(self, cfg, ensemble: dict, data: DatasetInfo, actions: int) -> float:
        """`actions` planned actions (`PetsConfig` cfg), each `max_iters` x `horizon` model
        calls on popsize x particles particles (trajectory sampling splits them among the
        members), and their environment steps."""
        members = cfg.members
        particles = cfg.popsize * (1 if cfg.prop_type == "E" else cfg.particles)
        batch = particles // members if cfg.prop_type.startswith("TS") else particles
        calls = actions * cfg.max_iters * cfg.horizon
        cost = self.model({**ensemble, "num_models": members}, data, batch, calls)
        return cost + self.unit("env_step", calls=actions)

    def pets_run(self, env_id: str, prop_type: str) -> float:
        """An online PETS run of the study's `pets_propagation`, every episode at its full
        length (an upper bound): per iteration a refit on all episodes so far (`fit_epochs`
        passes) and one planned episode."""
        from ombrl.planning.settings import load_pets_config, preset_path

        study = self.study["pets_propagation"]
        overrides = [(k, json.dumps(v)) for k, v in study["overrides"].items()]
        with contextlib.chdir(self.workdir):
            path = preset_path(study["preset"], env_id)
            cfg = load_pets_config(path, [("prop-type", prop_type)], overrides)
        # The environment's dimensions and step limit, as a dataset of it would have them.
        info = dataset_info("", {"source": "collect", "env": env_id, "transitions": 0}, Path())
        steps = cfg.episode_length or info.episode_steps
        model = {
            "num_models": cfg.members,
            "predict_reward": False,
            "probabilistic": cfg.model_type.startswith("P"),
            "hidden_size": cfg.hidden_size,
        }
        outputs = info.obs * (2 if model["probabilistic"] else 1)
        step = ensemble_flops(
            cfg.members, cfg.batch_size, info.obs, info.act, cfg.hidden_size, outputs
        )
        cost = 0.0
        for iteration in range(cfg.iterations):
            seen = (cfg.init_episodes + iteration) * steps
            cost += cfg.fit_epochs * self.unit(
                "ensemble_step", step, math.ceil(seen / cfg.batch_size)
            )
            cost += self.plan_actions(cfg, model, info, steps)
        return cost + self.unit("env_step", calls=cfg.init_episodes * steps)

    def updates(self, data: DatasetInfo, params: dict) -> float:
        batch, hidden = params["batch_size"], params["hidden_size"]
        if "n_actions" in params:
            flops = cql_flops(batch, data.obs, data.act, hidden, params["n_actions"])
            return self.unit("sac_update", flops, params["steps"])
        if "gamma" in params:
            return self.unit(
                "sac_update", sac_flops(batch, data.obs, data.act, hidden), params["steps"]
            )
        return self.unit("bc_update", bc_flops(batch, data.obs, data.act, hidden), params["steps"])

    def model(self, cfg: dict, data: DatasetInfo, batch: int, calls: int) -> float:
        outputs = (data.obs + int(cfg["predict_reward"])) * (2 if cfg["probabilistic"] else 1)
        flops = ensemble_flops(
            cfg["num_models"], batch, data.obs, data.act, cfg["hidden_size"], outputs
        )
        return self.unit("model_step", flops, calls)

    def npg_iteration(self, data: DatasetInfo, params: dict, ensemble: dict) -> float:
        """paths x horizon model steps (batched over paths; paths = `update_paths` start
        states x the elites, each rolled out once per elite; every member is evaluated on
        every path), the policy's forward on them, and the update: value fit (`value_epochs`
        passes) and `cg_iters` + 3 policy passes over every sample (gradient, Fisher-vector
        products, KL). Paths are priced at their full horizon (HALT shortens them)."""
        paths = params["update_paths"] * min(ensemble["num_elites"], ensemble["num_models"])
        horizon = params["horizon"]
        samples = paths * horizon
        policy = [data.obs, *params["hidden_size"], data.act]
        value = [data.obs + 4, *params["value_hidden_size"], 1]
        cost = self.model(ensemble, data, paths, horizon)
        cost += self.unit("bc_update", paths * mlp_weights(policy), horizon) / 3
        passes = params["cg_iters"] + 3
        cost += self.unit("bc_update", samples * mlp_weights(policy), passes)
        batches = math.ceil(samples / params["value_batch_size"]) * params["value_epochs"]
        flops = params["value_batch_size"] * mlp_weights(value)
        return cost + self.unit("bc_update", flops, batches)


@dataclass
class RulePlan:
    rule: str
    jobs: int
    cpu_hours: float
    gpu_hours: float


def plan(
    configfile: Path,
    calibration: Path = DEFAULT_CALIBRATION,
    workdir: Path = Path("."),
    extra: list[str] = (),
) -> list[RulePlan]:
    """Per rule: the jobs Snakemake's dry run schedules and their estimated cost.

    GPU-hours are the estimated hours of the jobs whose resources ask for a GPU (priced from
    the same calibration: a CPU calibration gives the hours those jobs would take on CPU).
    """
    units = load_calibration(calibration)
    study = load_study(read_yaml(workdir / configfile), str(configfile), workdir)
    jobs = dry_run_jobs(configfile, workdir, extra)
    pricer = Pricer(study, units, workdir)
    counts = Counter(job.rule for job in jobs)
    seconds: Counter = Counter()
    gpu: Counter = Counter()
    for job in jobs:
        cost = pricer.job(job)
        seconds[job.rule] += cost
        if job.gpu:
            gpu[job.rule] += cost
    return [RulePlan(r, n, seconds[r] / 3600, gpu[r] / 3600) for r, n in counts.items()]


def format_calibration(units: dict, path: Path) -> str:
    """The calibration as a table: each unit's fixed cost per call and its cost per GFLOP."""
    lines = [f"calibration stored in {path} (CPU seconds, one thread)"]
    lines.append(f"{'unit':<16}{'per call':>12}{'per GFLOP':>12}")
    for name, figure in sorted(units.items()):
        per_gflop = figure["per_flop_s"] * 1e9
        lines.append(f"{name:<16}{figure['overhead_s']:>12.3g}{per_gflop:>12.3g}")
    return "\n".join(lines)


def _hours(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def format_plan(rows: list[RulePlan], configfile: Path) -> str:
    """The plan as a table: jobs and hours per rule, then the total."""
    jobs = sum(r.jobs for r in rows)
    total = RulePlan("total", jobs, sum(r.cpu_hours for r in rows), sum(r.gpu_hours for r in rows))
    gpu = total.gpu_hours > 0
    header = f"{'rule':<28}{'jobs':>6}{'CPU-hours':>12}" + (f"{'GPU-hours':>12}" if gpu else "")
    lines = [f"plan of {configfile} (single-thread CPU time, from the calibration)", header]
    for r in [*rows, total]:
        line = f"{r.rule:<28}{r.jobs:>6}{_hours(r.cpu_hours):>12}"
        lines.append(line + (f"{_hours(r.gpu_hours):>12}" if gpu else ""))
    return "\n".join(lines)
