# Scores: every evaluation of every policy in one table, raw and D4RL-normalized; and the MLflow
# store, created once before the training jobs (parallel jobs would race to create its schema).


localrules:
    tracking_store,


rule tracking_store:
    output:
        TRACKING_MARKER,
    log:
        "logs/tracking_store.log",
    conda:
        "../../envs/ombrl.yaml"
    shell:
        "ombrl tracking-init --output {output} > {log} 2>&1"


rule scores:
    input:
        policy_progress_files(),
    output:
        scores="results/scores.csv",
        final=report(
            "results/tables/final_scores.csv",
            caption="../report/final_scores.rst",
            category="Scores",
        ),
        final_md="results/tables/final_scores.md",
        aggregates=report(
            "results/tables/aggregates.csv",
            caption="../report/aggregates.rst",
            category="Scores",
        ),
        aggregates_md="results/tables/aggregates.md",
    log:
        "logs/scores.log",
    conda:
        "../../envs/ombrl.yaml"
    params:
        code=code("scores"),
    shell:
        "ombrl scores {input} --output {output.scores} --final {output.final}"
        " --aggregates {output.aggregates} > {log} 2>&1"
