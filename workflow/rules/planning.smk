# Online PETS (planning on a model learned while acting): one job per propagation method and
# seed of the study's `pets_propagation:`, drawn by figure_pets_propagation.


rule pets_online:
    input:
        preset=lambda w: preset_file(PETS_PROPAGATION["preset"]),
        tracking=ancient(TRACKING_MARKER),
    output:
        model="results/pets/{env}/{prop}/seed{seed}/model.safetensors",
        progress="results/pets/{env}/{prop}/seed{seed}/progress.csv",
        returns="results/pets/{env}/{prop}/seed{seed}/returns.json",
    log:
        "logs/pets/{env}/{prop}/seed{seed}.log",
    wildcard_constraints:
        env=names_pattern([PETS_PROPAGATION["env"]] if PETS_PROPAGATION else []),
        prop=names_pattern(PETS_PROPAGATION["prop_types"] if PETS_PROPAGATION else []),
    conda:
        "../../envs/ombrl.yaml"
    threads: STUDY["threads"]
    params:
        code=code("pets"),
        device=STUDY["device"],
        overrides=lambda w: pets_overrides(PETS_PROPAGATION["overrides"]),
        outdir=lambda w: pets_run_dir(w.env, w.prop, w.seed),
    shell:
        "ombrl pets --env {wildcards.env} --preset {input.preset} -ca prop-type {wildcards.prop}"
        " {params.overrides} --seed {wildcards.seed} --threads {threads} --device {params.device}"
        " --quiet --output {params.outdir} > {log} 2>&1"
