# Scores: every evaluation of every policy in one table, raw and D4RL-normalized.


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
    log:
        "logs/scores.log",
    conda:
        "../../envs/ombrl.yaml"
    params:
        code=code("scores"),
    shell:
        "ombrl scores {input} --output {output.scores} --final {output.final} > {log} 2>&1"
