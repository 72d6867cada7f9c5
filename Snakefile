# lopt: data prep -> meta-training -> evaluation -> analysis, for one experiment config.
#
#   snakemake --cores all                                   # configs/default.yaml
#   snakemake --cores all --configfile configs/smoke.yaml   # any experiment
#   snakemake --report report.html                          # figures + tables, captioned
#   snakemake --cores all --configfile configs/paper/nres_lorenz.yaml [--config quick=1]
#
# The Snakefile only loads the config, includes one .smk per stage and names `rule all`;
# the rules only wire paths and call the `lopt` CLI.

include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"

if IS_STUDY:  # configs/paper/*.yaml: estimator studies (one job per method x seed)

    include: "workflow/rules/study.smk"

else:

    include: "workflow/rules/meta_train.smk"
    include: "workflow/rules/evaluate.smk"
    include: "workflow/rules/analysis.smk"

report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        ANALYSIS_OUTPUTS,
