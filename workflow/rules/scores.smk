# Scores: every evaluation of every policy in one table, raw and D4RL-normalized; and the MLflow
# store, created once before the training jobs (parallel jobs would race to create its schema).


localrules:
    tracking_store,


rule tracking_store:
    output:
        TRACKING_MARKER,
    log:
        "logs/tracking_store.log",
    priority: FIRST
    conda:
        "../../envs/ombrl.yaml"
    shell:
        "ombrl tracking-init --output {output} > {log} 2>&1"


rule scores:
    input:
        progress=policy_progress_files(),
        policies=[f"{os.path.dirname(p)}/policy.json" for p in policy_progress_files()],
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
        runs=report(
            "results/tables/runs.csv",
            caption="../report/runs.rst",
            category="Scores",
        ),
    log:
        "logs/scores.log",
    conda:
        "../../envs/ombrl.yaml"
    params:
        code=code("scores"),
        flags=scores_flags(),
    shell:
        "ombrl scores {input.progress} --output {output.scores} --final {output.final}"
        " --aggregates {output.aggregates} --runs {output.runs} {params.flags} > {log} 2>&1"
