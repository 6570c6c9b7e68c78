# ombrl: dataset -> dynamics ensembles -> policies -> scores -> figures.
# The study is config/config.yaml unless --configfile names another; it is validated
# against workflow/schemas/config.schema.yaml before any job runs.
from snakemake.utils import min_version

min_version("9.0")


# The default study, unless --configfile names another (Snakemake would otherwise merge the
# two, mixing the default study's datasets and modes into the one asked for).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/ensembles.smk"
include: "workflow/rules/policies.smk"
include: "workflow/rules/planning.smk"
include: "workflow/rules/scores.smk"
include: "workflow/rules/figures.smk"


rule all:
    input:
        get_final_output(),
