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


rule figure_ensemble_loss:
    input:
        unpack(ensemble_figure_files),
        notebook="notebooks/ensemble_loss.ipynb",
    output:
        figure=report(
            "results/figures/{dataset}/ensemble_loss.pdf",
            caption="../report/ensemble_loss.rst",
            category="Figures",
        ),
        notebook="results/notebooks/{dataset}/ensemble_loss.ipynb",
    log:
        "logs/figures/{dataset}/ensemble_loss.log",
    conda:
        "../../envs/figures.yaml"
    params:
        notebook_params=ensemble_loss_params,
    shell:
        "papermill {input.notebook} {output.notebook} -k python3 --no-progress-bar"
        " -y {params.notebook_params} > {log} 2>&1"


rule figure_final_scores:
    input:
        final="results/tables/final_scores.csv",
        aggregates="results/tables/aggregates.csv",
        notebook="notebooks/final_scores.ipynb",
    output:
        figure=report(
            "results/figures/final_scores.pdf",
            caption="../report/final_scores_figure.rst",
            category="Figures",
        ),
        notebook="results/notebooks/final_scores.ipynb",
    log:
        "logs/figures/final_scores.log",
    conda:
        "../../envs/figures.yaml"
    params:
        code=code("scores"),
    shell:
        "papermill {input.notebook} {output.notebook} -k python3 --no-progress-bar"
        " -p final_csv {input.final} -p aggregates_csv {input.aggregates}"
        " -p output_pdf {output.figure} > {log} 2>&1"


rule figure_performance_profile:
    input:
        final="results/tables/final_scores.csv",
        notebook="notebooks/performance_profile.ipynb",
    output:
        figure=report(
            "results/figures/performance_profile.pdf",
            caption="../report/performance_profile.rst",
            category="Figures",
        ),
        notebook="results/notebooks/performance_profile.ipynb",
    log:
        "logs/figures/performance_profile.log",
    conda:
        "../../envs/figures.yaml"
    params:
        code=code("scores"),
    shell:
        "papermill {input.notebook} {output.notebook} -k python3 --no-progress-bar"
        " -p final_csv {input.final} -p output_pdf {output.figure} > {log} 2>&1"


rule figure_sweep:
    input:
        final="results/tables/final_scores.csv",
        notebook="notebooks/sweep.ipynb",
    output:
        figure=report(
            "results/figures/sweep_{dataset}.pdf",
            caption="../report/sweep.rst",
            category="Figures",
        ),
        notebook="results/notebooks/sweep_{dataset}.ipynb",
    log:
        "logs/figures/sweep_{dataset}.log",
    conda:
        "../../envs/figures.yaml"
    params:
        code=code("scores"),
        notebook_params=sweep_params,
    shell:
        "papermill {input.notebook} {output.notebook} -k python3 --no-progress-bar"
        " -y {params.notebook_params} > {log} 2>&1"


rule figure_pets_propagation:
    input:
        progress=lambda w: [path for _, _, path in pets_propagation_runs()],
        notebook="notebooks/pets_propagation.ipynb",
    output:
        figure=report(
            "results/figures/pets_propagation.pdf",
            caption="../report/pets_propagation.rst",
            category="Figures",
        ),
        notebook="results/notebooks/pets_propagation.ipynb",
    log:
        "logs/figures/pets_propagation.log",
    conda:
        "../../envs/figures.yaml"
    params:
        code=code("scores"),
        notebook_params=pets_propagation_params,
    shell:
        "papermill {input.notebook} {output.notebook} -k python3 --no-progress-bar"
        " -y {params.notebook_params} > {log} 2>&1"
