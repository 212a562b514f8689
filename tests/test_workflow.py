"""The whole DAG on the smoke config, through the real Snakemake CLI, in a temporary copy."""

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def copy_workflow(dest: Path) -> Path:
    for name in ("Snakefile", "workflow", "config", "envs"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    return dest


def test_lint_is_clean():
    result = subprocess.run([SNAKEMAKE, "--lint", "--cores", "1"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


@pytest.mark.slow
def test_smoke_dag_runs_end_to_end(tmp_path):
    workdir = copy_workflow(tmp_path)
    result = subprocess.run(
        [SNAKEMAKE, "--cores", "2", "--configfile", "config/smoke.yaml", "--keep-going", "--printshellcmds"],
        cwd=workdir, capture_output=True, text=True, timeout=3000,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    results = workdir / "results"
    manifest = pd.read_csv(results / "curated" / "manifest.csv")
    assert len(manifest) == 16 and set(manifest.source_format) == {"nifti", "dicom"}
    table1 = pd.read_csv(results / "tables" / "table1.csv")
    assert int(table1.loc[table1.characteristic == "Scans", "All"].iloc[0]) == 16
    # every job wrote a log and a benchmark
    assert any((results / "logs").rglob("*.log")) and any((results / "benchmarks").rglob("*.tsv"))
    # no DICOM identifiers reach results/
    for path in results.rglob("*"):
        if path.is_file() and path.suffix in {".csv", ".json", ".md", ".log", ".tsv"}:
            text = path.read_text(errors="ignore")
            assert "MRN" not in text and "SYNTHETIC^PATIENT" not in text, path
