# Study loading, target lists and input functions shared by the rule files.
import functools
import json
import os
import re
import shlex
import sys

from ombrl.config import load_study, mode_params, read_yaml, unused_scheme_keys
from ombrl.data.requests import behaviour_name
from ombrl.errors import OmbrlError
from ombrl.fingerprint import stage_fingerprint
from ombrl.preflight import study_problems

STUDY_SOURCE = ", ".join(map(str, workflow.configfiles)) or "config"
try:
    for study_file in workflow.configfiles:
        read_yaml(
            study_file
        )  # Snakemake's own YAML loader keeps a duplicated key's last value
    STUDY = load_study(config, source=STUDY_SOURCE)
    # What a collect or planner job would refuse, said before any job runs.
    job_problems = study_problems(STUDY, STUDY_SOURCE)
    if job_problems:
        raise OmbrlError("\n".join(job_problems))
except OmbrlError as error:
    sys.exit(f"ombrl: error: {error}".replace("\n", "\nombrl: error: "))

# Jobs (local or on SLURM nodes) inherit the tracking store; MLFLOW_TRACKING_URI set by the user
# wins. An environment variable, not a param: moving the store must not rerun any job.
os.environ.setdefault("MLFLOW_TRACKING_URI", STUDY["tracking_uri"])
TRACKING_MARKER = "results/tracking/store.json"

DATASETS = STUDY["datasets"]
SEEDS = STUDY["seeds"]
MODES = STUDY["modes"]


@functools.cache
def code(stage, method=None):
    """Fingerprint of the library code a job of `stage` (running `method`) imports, read from
    the imports (ombrl.fingerprint): editing that code reruns exactly those jobs. Computed once
    per (stage, method) and run, not per job: the source does not change meanwhile."""
    return stage_fingerprint(stage, method)


def names_pattern(names):
    """A wildcard constraint matching exactly these names (never matching when empty)."""
    return "|".join(re.escape(n) for n in sorted(names)) or "(?!)"


wildcard_constraints:
    seed=r"\d+",
    mode=names_pattern(MODES),
    ensemble=names_pattern(STUDY["ensembles"]),


def as_params(values):
    """A dict as `key=value` CLI words (lists comma separated), quoted for the shell."""

    def text(v):
        if isinstance(v, list):
            return ",".join(text(x) for x in v)
        if v is None:
            return "null"
        return str(v).lower() if isinstance(v, bool) else str(v)

    return " ".join(shlex.quote(f"{k}={text(v)}") for k, v in sorted(values.items()))


def dataset_file(dataset):
    return f"resources/datasets/{dataset}.hdf5"


def ensemble_dir(dataset, ensemble, seed):
    return f"results/{dataset}/ensembles/{ensemble}/seed{seed}"


def ensemble_seeds(ensemble):
    """The seeds `ensemble` is fitted with: its entry's `seed` alone (one ensemble for every
    policy seed), else every study seed."""
    fixed = config["ensembles"][ensemble].get("seed")
    return SEEDS if fixed is None else [fixed]


def policy_ensemble_dir(dataset, ensemble, seed):
    """The ensemble a policy of `seed` trains on: its own seed's, or the entry's one seed."""
    return ensemble_dir(
        dataset, ensemble, config["ensembles"][ensemble].get("seed", seed)
    )


def policy_dir(dataset, mode, seed):
    return f"results/{dataset}/policies/{mode}/seed{seed}"


def entries_on(dataset):
    """The mode entries that run on `dataset` (an entry's `datasets`, default all)."""
    return [m for m in MODES if dataset in MODES[m]["datasets"]]


def policy_progress_files():
    return [
        f"{policy_dir(d, m, s)}/progress.csv"
        for d in DATASETS
        for m in entries_on(d)
        for s in SEEDS
    ]


def scores_flags():
    """The study's `scores:` settings as `ombrl scores` flags (no --baseline when unset: the
    command then compares with bc where it ran, and notes its absence otherwise)."""
    settings = STUDY["scores"]
    flags = f"--last-k {settings['last_k']}"
    flags += f" --optimality-threshold {settings['optimality_threshold']}"
    if settings["baseline"] is not None:
        flags += f" --baseline {shlex.quote(settings['baseline'])}"
    return flags


def datasets_from(source):
    return [name for name, spec in DATASETS.items() if spec["source"] == source]


def ensemble_of(dataset, mode):
    """The ensemble entry `mode` uses on `dataset` (overrides may change it), or None."""
    return mode_params(STUDY, dataset, mode).get("ensemble")


# Job priorities (with more jobs ready than cores, Snakemake starts the highest first): the jobs
# others wait for, then the policies that waited for an ensemble (the long ones), then the rest
# (bc, model-free policies, scores, figures). With 2 cores this starts the long chains
# (dataset, ensemble, model-based policy) early and lets the short jobs fill both cores at the
# end, instead of one long job running alone. Priorities never rerun a job.
FIRST, SECOND = 3, 2


def policy_priority(w):
    """1 for a policy that trains on an ensemble's model (it waited for it), else 0."""
    return int(ensemble_of(w.dataset, w.mode) is not None)


def policy_inputs(w):
    inputs = {"dataset": dataset_file(w.dataset), "tracking": ancient(TRACKING_MARKER)}
    ensemble = ensemble_of(w.dataset, w.mode)
    if ensemble is not None:
        inputs["ensemble"] = (
            f"{policy_ensemble_dir(w.dataset, ensemble, w.seed)}/model.safetensors"
        )
    preset = mode_params(STUDY, w.dataset, w.mode).get("preset")
    if preset is not None:  # a planner (pets): its settings file
        inputs["preset"] = preset_file(preset)
    origin = MODES[w.mode].get("from")
    if origin is not None:  # finetuning: the same dataset and seed's offline policy
        inputs["init"] = f"{policy_dir(w.dataset, origin, w.seed)}/policy.safetensors"
    return inputs


def preset_file(preset):
    """The file of a PETS preset name or path (as ombrl.planning.settings.preset_path reads
    it, without importing the planner into the workflow): an input, so editing it reruns.
    """
    return (
        preset if preset.endswith((".yaml", ".yml")) else f"config/pets/{preset}.yaml"
    )


def method_of(w):
    return MODES[w.mode]["method"]


def policy_flags(w):
    params = mode_params(STUDY, w.dataset, w.mode)
    params.pop("ensemble", None)
    params.pop("datasets")
    # The CLI refuses a key its scheme never reads.
    for key in unused_scheme_keys(params):
        del params[key]
    origin = params.pop("from", None)
    flags = f"--mode {params.pop('method')} --name {w.mode}"
    if origin is not None:
        flags += f" --init {policy_dir(w.dataset, origin, w.seed)}"
    flags += f" --params {as_params(params)}" if params else ""
    ensemble = ensemble_of(w.dataset, w.mode)
    if ensemble is not None:
        flags += f" --ensemble {policy_ensemble_dir(w.dataset, ensemble, w.seed)}"
    return flags


def ensembles_on(dataset):
    """The ensembles fitted on `dataset`: those its entries use, and those no entry uses (a
    study may only fit ensembles)."""
    used = {ensemble_of(d, m) for d in DATASETS for m in entries_on(d)}
    here = {ensemble_of(dataset, m) for m in entries_on(dataset)}
    return sorted(e for e in STUDY["ensembles"] if e not in used or e in here)


def ensemble_runs(dataset):
    """(label, output folder) of every ensemble and seed fitted on one dataset."""
    return [
        (f"{e} seed{s}", ensemble_dir(dataset, e, s))
        for e in ensembles_on(dataset)
        for s in ensemble_seeds(e)
    ]


def ensemble_figure_files(w):
    """The figure's inputs: every run's metrics.csv and model.json (its kept snapshot)."""
    runs = ensemble_runs(w.dataset)
    return {
        "metrics": [f"{folder}/metrics.csv" for _, folder in runs],
        "meta": [f"{folder}/model.json" for _, folder in runs],
    }


def ensemble_loss_params(w, output):
    """The notebook's parameters as one shell-quoted YAML (JSON) word for papermill -y."""
    runs = ensemble_runs(w.dataset)
    files = ensemble_figure_files(w)
    parameters = {
        "metrics_csvs": files["metrics"],
        "model_jsons": files["meta"],
        "labels": [label for label, _ in runs],
        "output_pdf": output.figure,
    }
    return shlex.quote(json.dumps(parameters))


# Generated datasets: the behaviour run each is cut from, and the `ombrl generate` flags.
def generated(w):
    return DATASETS[w.dataset]


def generate_flags(w):
    spec = generated(w)
    flags = f"--quality {spec['quality']} --ref-scores {spec['ref_scores']}"
    if "transitions" in spec:
        flags += f" --transitions {spec['transitions']}"
    if "medium_return" in spec:
        flags += f" --medium-return {spec['medium_return']}"
    return flags


def behaviour_spec(name):
    """The settings of behaviour run `name` (equal in every dataset naming it: load_study)."""
    return next(
        s for d in datasets_from("generate") if behaviour_name(s := DATASETS[d]) == name
    )


def sweeps_on(dataset):
    """The study's sweeps (ombrl.config.expand_sweeps) limited to the entries on `dataset`."""
    here = set(entries_on(dataset))
    found = {}
    for entry, sweep in STUDY["sweeps"].items():
        points = {n: v for n, v in sweep["entries"].items() if n in here}
        if points:
            found[entry] = {"settings": sweep["settings"], "entries": points}
    return found


def sweep_params(w, input, output):
    """The sweep notebook's parameters as one shell-quoted YAML (JSON) word for papermill -y."""
    parameters = {
        "final_csv": input.final,
        "dataset": w.dataset,
        "sweeps": sweeps_on(w.dataset),
        "output_pdf": output.figure,
    }
    return shlex.quote(json.dumps(parameters))


# Online PETS per propagation method (`pets_propagation:`), drawn in one figure.
PETS_PROPAGATION = STUDY["pets_propagation"]


def pets_run_dir(env, prop, seed):
    return f"results/pets/{env}/{prop}/seed{seed}"


def pets_propagation_runs():
    """(propagation method, seed, progress.csv) of every run the figure draws."""
    study = PETS_PROPAGATION
    return [
        (p, s, f"{pets_run_dir(study['env'], p, s)}/progress.csv")
        for p in study["prop_types"]
        for s in study["seeds"]
    ]


def pets_overrides(values):
    """`-o KEY VALUE` flags of `ombrl pets` (values as YAML), quoted for the shell."""
    return " ".join(
        f"-o {shlex.quote(k)} {shlex.quote(json.dumps(v))}"
        for k, v in sorted(values.items())
    )


def pets_propagation_params(w, output):
    """The figure notebook's parameters as one shell-quoted YAML (JSON) word for papermill -y."""
    runs = pets_propagation_runs()
    parameters = {
        "progress_csvs": [path for _, _, path in runs],
        "prop_types": [p for p, _, _ in runs],
        "env": PETS_PROPAGATION["env"],
        "preset": PETS_PROPAGATION["preset"],
        "output_pdf": output.figure,
    }
    return shlex.quote(json.dumps(parameters))


def get_final_output():
    figures = [
        f"results/figures/{f}.pdf"
        for f in ("avg_return", "final_scores", "performance_profile")
    ]
    figures += [
        f"results/figures/{d}/ensemble_loss.pdf" for d in DATASETS if ensembles_on(d)
    ]
    figures += [f"results/figures/sweep_{d}.pdf" for d in DATASETS if sweeps_on(d)]
    if PETS_PROPAGATION is not None:
        figures.append("results/figures/pets_propagation.pdf")
    return ["results/scores.csv", *figures]
