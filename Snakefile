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


rule all:
    input:
        rules.table1.output,
        rules.lungseg_table2.output,
        rules.lungseg_figure2.output,
        rules.tables_3_4.output,
        rules.figure3_roc.output,
        rules.stats_anova.output,
        rules.deep_report.output,
        rules.deep_cam.output,
        rules.deepsc_report.output,
        rules.deepsc_findings.output,
        rules.twod_report_amyar.output,
        rules.twod_report_mga.output,
        rules.twod_attribution.output,
        rules.cohort_metrics.output,
        rules.lungseg_metrics.output,
        rules.classification_metrics.output,
    default_target: True
