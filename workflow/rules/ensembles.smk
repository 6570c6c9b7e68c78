# Dynamics ensembles: one job per (dataset, ensemble config, seed).


rule train_ensemble:
    input:
        dataset=lambda w: dataset_file(w.dataset),
    output:
        model="results/{dataset}/ensembles/{ensemble}/seed{seed}/model.safetensors",
        meta="results/{dataset}/ensembles/{ensemble}/seed{seed}/model.json",
        metrics="results/{dataset}/ensembles/{ensemble}/seed{seed}/metrics.csv",
    params:
        config=lambda w: as_params(STUDY["ensembles"][w.ensemble]),
        outdir=lambda w: ensemble_dir(w.dataset, w.ensemble, w.seed),
    threads: STUDY["threads"]
    log:
        "logs/{dataset}/ensembles/{ensemble}/seed{seed}.log",
    shell:
        "ombrl train-ensemble --dataset {input.dataset} --params {params.config}"
        " --seed {wildcards.seed} {RUN} --output {params.outdir}"
        " --csv {output.metrics} > {log} 2>&1"
