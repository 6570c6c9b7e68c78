# Datasets: D4RL files are downloaded (a local rule: compute nodes often have no internet);
# the others are collected here with gymnasium.


localrules:
    download_dataset,


rule download_dataset:
    output:
        "resources/datasets/{dataset}.hdf5",
    log:
        "logs/datasets/{dataset}.log",
    wildcard_constraints:
        dataset=names_pattern(datasets_from("d4rl")),
    conda:
        "../../envs/ombrl.yaml"
    params:
        code=code("download"),
    shell:
        "ombrl dataset fetch {wildcards.dataset} --output {output} > {log} 2>&1"


rule collect_dataset:
    output:
        "resources/datasets/{dataset}.hdf5",
    log:
        "logs/datasets/{dataset}.log",
    wildcard_constraints:
        dataset=names_pattern(datasets_from("collect")),
    conda:
        "../../envs/ombrl.yaml"
    params:
        code=code("collect"),
        spec=lambda w: DATASETS[w.dataset],
    shell:
        "ombrl collect --env {params.spec[env]} --policy {params.spec[policy]}"
        " --transitions {params.spec[transitions]} --seed {params.spec[seed]}"
        " --output {output} --quiet > {log} 2>&1"
