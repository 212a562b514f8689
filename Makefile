# Two entry points for a fresh machine with Python 3.11:
#   make run   -> install into .venv (if needed) and run the demo workflow
#   make test  -> install into .venv (if needed) and run the test suite
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= all
# UTF-8 I/O whatever the machine's locale (tables contain "±"; a C locale means ASCII).
export PYTHONUTF8 := 1
export LC_ALL := C.UTF-8

.PHONY: install run smoke test test-fast bench lint clean-results

install: $(STAMP)

# Order matters: torch first and pinned (CPU wheel from the machine's local file;
# anything torch-dependent installed earlier would pull the newest CUDA torch),
# then numpy + versioneer so pyradiomics can build from source without isolation.
$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt numpy versioneer setuptools wheel
	$(BIN)/pip install --quiet -c constraints.txt --no-build-isolation pyradiomics
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)

smoke: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile config/smoke.yaml

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest

test-fast: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -m "not slow and not slurm"

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -m benchmark -p no:cacheprovider benchmarks

lint: $(STAMP)
	$(BIN)/snakemake --lint --cores 1

clean-results:
	rm -rf results/* .snakemake
