"""Command-line entry points that the Snakemake rules call: ``covidmtl <command> ...``.

Each command is a ``main(argv) -> int`` function in the module that owns the science;
this file only maps command names to them (imported lazily: a rule pays only for the
libraries its own stage needs).
"""

from __future__ import annotations

import importlib
import logging
import sys

from covidmtl.errors import PipelineInputError

COMMANDS: dict[str, str] = {
    "download": "covidmtl.download:main",
    "synth-clinical": "covidmtl.synthetic.cohort:clinical_main",
    "synth-subject": "covidmtl.synthetic.cohort:subject_main",
    "dataset-index": "covidmtl.datasets.index:main",
    "curate": "covidmtl.curate:main",
    "manifest": "covidmtl.manifest:main",
    "split": "covidmtl.split:main",
    "stage-plan": "covidmtl.stageplan:main",
    "table1": "covidmtl.cohort_table:main",
    "metrics-export": "covidmtl.metrics_export:main",
    "lungseg": "covidmtl.lungseg.cli:main",
    "lungseg-table2": "covidmtl.lungseg.cli:table2_main",
    "lungseg-figure2": "covidmtl.lungseg.cli:figure2_main",
    "features-extract": "covidmtl.features.radiomics:main",
    "features-merge": "covidmtl.features.merge:main",
    "classical-train": "covidmtl.classical.models:main",
    "classical-tables": "covidmtl.classical.models:tables_main",
    "roc-figure": "covidmtl.classical.figures:main",
    "stats-anova": "covidmtl.stats.anova:main",
    "deepsc-train": "covidmtl.deepsc.experiment:main",
    "deepsc-report": "covidmtl.deepsc.report:main",
    "deepsc-findings": "covidmtl.deepsc.findings:main",
    "twod-slices": "covidmtl.twod.slices:main",
    "twod-index": "covidmtl.twod.index2d:main",
    "twod-train": "covidmtl.twod.experiment:main",
    "twod-report-amyar": "covidmtl.twod.report:main_amyar",
    "twod-report-mga": "covidmtl.twod.report:main_mga",
    "twod-attrib": "covidmtl.twod.attribution:main",
    "deep-train": "covidmtl.deep.experiment:main",
    "deep-report": "covidmtl.deep.report:main",
    "deep-cam": "covidmtl.deep.cam:main",
}


def _usage() -> str:
    names = "\n".join(f"  {name}" for name in sorted(COMMANDS))
    return f"usage: covidmtl <command> [options]\n\ncommands:\n{names}\n\n'covidmtl <command> --help' for details."


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"covidmtl: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module_name, func_name = COMMANDS[name].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(rest) or 0)
    except PipelineInputError as err:
        print(f"ERROR {err}", file=sys.stderr)
        return 1
