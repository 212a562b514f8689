#!/usr/bin/env bash
# Snakemake runs this once after creating the conda environment, inside it, from the
# workflow's working directory (the repository root).
# PyRadiomics 3.0.1 has no wheel for Python 3.11: build it from source without build
# isolation, against the numpy and versioneer that features.yaml installed (as the Makefile does).
set -euo pipefail
pip install --no-build-isolation pyradiomics==3.0.1
# The covidmtl package itself: editable (follows the source), no deps (features.yaml pins them).
pip install --no-deps --no-build-isolation -e "${COVIDMTL_SOURCE:-$PWD}"
