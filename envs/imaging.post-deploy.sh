#!/usr/bin/env bash
# Snakemake runs this once after creating the conda environment, inside it, from the
# workflow's working directory (the repository root): install the covidmtl package itself.
# Editable, so that the environment follows the source; --no-deps, because the environment
# file already pins what this rule group needs (and nothing more).
set -euo pipefail
pip install --no-deps --no-build-isolation -e "${COVIDMTL_SOURCE:-$PWD}"
