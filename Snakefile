# covidmtl: reproduction of COVID-MTL (and DeepSC-COVID, Amyar et al., MGA) on chest CT.
#
#   snakemake --cores all                                  # workstation demo (synthetic cohort)
#   snakemake --cores all --configfile config/smoke.yaml   # CI-sized run
#   snakemake --profile profiles/slurm                     # SLURM cluster (docs/running.md)
#
# The rules are thin: every step calls `covidmtl <command>` from src/covidmtl.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/curate.smk"
include: "workflow/rules/lungseg.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/classical.smk"
include: "workflow/rules/deep.smk"
include: "workflow/rules/stats.smk"
include: "workflow/rules/deepsc.smk"
include: "workflow/rules/twod.smk"
include: "workflow/rules/report.smk"


# Targets per stage; `rule all` requests the stages that the datasets' labels allow
# (covidmtl.stageplan; the decisions and reasons go to results/stage_plan.md).
STAGE_TARGETS = {
    "cohort": [*rules.table1.output, *rules.cohort_metrics.output],
    "lungseg": [*rules.lungseg_figure2.output],
    "lungseg_eval": [*rules.lungseg_table2.output, *rules.lungseg_metrics.output],
    "features": [*rules.features_merge.output],
    "classical": [*rules.classical_train.output],
    "stats": [*rules.stats_anova.output],
    "covid_mtl": [
        *rules.tables_3_4.output,
        *rules.figure3_roc.output,
        *rules.deep_report.output,
        *rules.deep_cam.output,
        *rules.classification_metrics.output,
    ],
    "deepsc": [*rules.deepsc_report.output, *rules.deepsc_findings.output],
    "twod": [*rules.twod_report_amyar.output, *rules.twod_report_mga.output, *rules.twod_attribution.output],
}


rule all:
    input:
        planned_targets,
        rules.stage_plan.output,
    default_target: True
