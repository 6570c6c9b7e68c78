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
    priority: FIRST
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
    priority: FIRST
    conda:
        "../../envs/ombrl.yaml"
    params:
        code=code("collect"),
        spec=lambda w: DATASETS[w.dataset],
    shell:
        "ombrl collect --env {params.spec[env]} --policy {params.spec[policy]}"
        " --transitions {params.spec[transitions]} --seed {params.spec[seed]}"
        " --output {output} --quiet > {log} 2>&1"


# Generated datasets: one behaviour run (online SAC) per task and behaviour seed, shared by
# every quality cut from it.


rule behaviour:
    output:
        directory("resources/behaviour/{behaviour}"),
    log:
        "logs/behaviour/{behaviour}.log",
    wildcard_constraints:
        behaviour=names_pattern(
            {behaviour_name(DATASETS[d]) for d in datasets_from("generate")}
        ),
    priority: FIRST
    conda:
        "../../envs/ombrl.yaml"
    threads: 1
    params:
        code=code("behaviour"),
        spec=lambda w: behaviour_spec(w.behaviour),
        settings=lambda w: as_params(behaviour_spec(w.behaviour)["behaviour"]),
    shell:
        "ombrl behaviour --env {params.spec[env]} --seed {params.spec[seed]}"
        " --params {params.settings} --threads {threads} --output {output} --quiet"
        " > {log} 2>&1"


rule generate_dataset:
    input:
        lambda w: f"resources/behaviour/{behaviour_name(generated(w))}",
    output:
        "resources/datasets/{dataset}.hdf5",
    log:
        "logs/datasets/{dataset}.log",
    wildcard_constraints:
        dataset=names_pattern(datasets_from("generate")),
    priority: FIRST
    conda:
        "../../envs/ombrl.yaml"
    params:
        code=code("generate"),
        flags=generate_flags,
    shell:
        "ombrl generate --behaviour {input} {params.flags} --output {output} > {log} 2>&1"
