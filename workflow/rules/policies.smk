# Policies: one job per (dataset, offline mode, seed); model-based modes read their ensemble.


def policy_inputs(w):
    inputs = {"dataset": dataset_file(w.dataset)}
    ensemble = MODES[w.mode].get("ensemble")
    if ensemble is not None:
        inputs["ensemble"] = f"{ensemble_dir(w.dataset, ensemble, w.seed)}/model.safetensors"
    return inputs


def policy_flags(w):
    params = {k: v for k, v in MODES[w.mode].items() if k != "ensemble"}
    flags = f"--params {as_params(params)}" if params else ""
    ensemble = MODES[w.mode].get("ensemble")
    if ensemble is not None:
        flags += f" --ensemble {ensemble_dir(w.dataset, ensemble, w.seed)}"
    return flags


rule train_policy:
    input:
        unpack(policy_inputs),
    output:
        policy="results/{dataset}/policies/{mode}/seed{seed}/policy.safetensors",
        progress="results/{dataset}/policies/{mode}/seed{seed}/progress.csv",
        evaluation="results/{dataset}/policies/{mode}/seed{seed}/eval.json",
    params:
        flags=policy_flags,
        outdir=lambda w: policy_dir(w.dataset, w.mode, w.seed),
        evaluation=lambda w: STUDY["evaluation"],
    threads: STUDY["threads"]
    log:
        "logs/{dataset}/policies/{mode}/seed{seed}.log",
    shell:
        "ombrl train-policy --dataset {input.dataset} --mode {wildcards.mode} {params.flags}"
        " --eval-every {params.evaluation[every]} --eval-episodes {params.evaluation[episodes]}"
        " --eval-seed {params.evaluation[seed]} --seed {wildcards.seed} {RUN}"
        " --output {params.outdir} > {log} 2>&1"
