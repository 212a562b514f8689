# covidmtl: reproduction of COVID-MTL (and DeepSC-COVID, Amyar et al., MGA) on chest CT.
#
#   snakemake --cores all                                  # workstation demo (synthetic cohort)
#   snakemake --cores all --configfile config/smoke.yaml   # CI-sized run
#   snakemake --profile slurm                              # cluster (see README)
#
# The rules are thin: every step calls `covidmtl <command>` from src/covidmtl.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/curate.smk"


rule all:
    input:
        rules.table1.output,
    default_target: True
