# Dynamics ensembles: one job per (dataset, ensemble config, seed).


rule train_ensemble:
    input:
        dataset=lambda w: dataset_file(w.dataset),
        tracking=ancient(TRACKING_MARKER),
    output:
        model="results/{dataset}/ensembles/{ensemble}/seed{seed}/model.safetensors",
        meta="results/{dataset}/ensembles/{ensemble}/seed{seed}/model.json",
        metrics="results/{dataset}/ensembles/{ensemble}/seed{seed}/metrics.csv",
    log:
        "logs/{dataset}/ensembles/{ensemble}/seed{seed}.log",
    priority: SECOND
    conda:
        "../../envs/ombrl.yaml"
    threads: STUDY["threads"]
    params:
        code=code("ensemble"),
        device=STUDY["device"],
        config=lambda w: as_params(STUDY["ensembles"][w.ensemble]),
        base=lambda w: config["ensembles"][w.ensemble]["config"],
        outdir=lambda w: ensemble_dir(w.dataset, w.ensemble, w.seed),
    shell:
        "ombrl train-ensemble --dataset {input.dataset} --config config/ensembles/{params.base}.yaml"
        " --params {params.config} --name {wildcards.ensemble}"
        " --seed {wildcards.seed} --threads {threads} --device {params.device} --quiet --output {params.outdir}"
        " --csv {output.metrics} > {log} 2>&1"
