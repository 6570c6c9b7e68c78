# Figures: papermill executes a parameterised notebook; the executed copy is kept.


rule figure_avg_return:
    input:
        scores="results/scores.csv",
        notebook="notebooks/avg_return.ipynb",
    output:
        figure=report(
            "results/figures/avg_return.pdf", caption="../report/avg_return.rst"
        ),
        notebook="results/notebooks/avg_return.ipynb",
    log:
        "logs/figures/avg_return.log",
    conda:
        "../../envs/figures.yaml"
    params:
        code=code("scores"),
    shell:
        "papermill {input.notebook} {output.notebook} -k python3 --no-progress-bar"
        " -p scores_csv {input.scores} -p output_pdf {output.figure} > {log} 2>&1"
