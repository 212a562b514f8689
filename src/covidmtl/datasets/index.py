"""``covidmtl dataset-index``: run a dataset's adapter over its raw folder and write index.csv."""

from __future__ import annotations

import argparse
import importlib
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# dataset name -> adapter module with build_index(raw_dir) -> DataFrame
ADAPTERS = {
    "synthetic": "covidmtl.datasets.synthetic",
    "covid_ct_md": "covidmtl.datasets.covid_ct_md",
    "mosmed": "covidmtl.datasets.mosmed",
    "covid19_ct_seg": "covidmtl.datasets.covid19_ct_seg",
    "medseg": "covidmtl.datasets.medseg",
    "ucsd_covid_ct": "covidmtl.datasets.ucsd_covid_ct",
    "ictcf": "covidmtl.datasets.ictcf",
    "cc_ccii": "covidmtl.datasets.cc_ccii",
}


def build_index(dataset: str, raw_dir: Path):
    if dataset not in ADAPTERS:
        raise SystemExit(f"unknown dataset {dataset!r}; known: {sorted(ADAPTERS)}")
    return importlib.import_module(ADAPTERS[dataset]).build_index(raw_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="covidmtl dataset-index", description="Index a dataset's raw layout.")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--raw-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    index = build_index(args.dataset, args.raw_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    index.to_csv(args.out, index=False)
    log.info("%s: %d subjects indexed", args.dataset, len(index))
    return 0
