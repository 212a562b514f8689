"""`snakemake --report`: every table and figure is in the HTML report, with a caption.

Statically (fast): every table (CSV under results/tables/ or named table*) and figure (.png;
.pdf without a .png twin) that a rule writes once per run is marked with report(), in a
category, with a caption file that exists. Slow: the smoke run up to Table 1 (6 subjects), then the report built from it holds
the table (rendered in its caption) and the workflow description.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO
from test_dvc import load_workflow

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
REPORT_TARGETS = ["results/tables/table1.csv"]


def is_table_or_figure(path: str, sibling_paths: set[str]) -> bool:
    """A paper's table or figure: one file per run (per-subject/per-model files, which carry
    wildcards, may be in the report but need not)."""
    if "{" in path or path.startswith(("results/logs/", "results/benchmarks/")):
        return False
    if path.endswith(".png"):
        return True
    if path.endswith(".pdf"):
        return path.removesuffix(".pdf") + ".png" not in sibling_paths
    name = path.rsplit("/", 1)[-1]
    return path.endswith(".csv") and ("/tables/" in path or name.startswith("table") or "_table" in name)


def test_every_table_and_figure_is_in_the_report_with_a_caption():
    workflow = load_workflow()
    assert workflow.report_text is not None, "the Snakefile needs `report: \"workflow/report/workflow.rst\"`"
    assert Path(str(workflow.report_text)).exists()
    problems, reported = [], []
    for rule in workflow.rules:
        paths = {str(f) for f in rule.output}
        for output in rule.output:
            if not is_table_or_figure(str(output), paths):
                continue
            flag = output.flags.get("report")
            if flag is None:
                problems.append(f"rule {rule.name}: {output} is not wrapped in report()")
                continue
            reported.append(str(output))
            if not flag.category:
                problems.append(f"rule {rule.name}: {output} has no report category")
            caption = flag.caption.get_path_or_uri(secret_free=True) if flag.caption is not None else None
            if caption is None or not Path(caption).is_file():
                problems.append(f"rule {rule.name}: {output} has no caption file ({caption})")
    assert not problems, "\n".join(problems)
    assert "results/tables/table1.csv" in reported


@pytest.mark.slow
def test_report_of_the_smoke_run_contains_table1(tmp_path):
    for name in ("Snakefile", "workflow", "config", "envs"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    (tmp_path / "six_subjects.yaml").write_text("synthetic:\n  n_subjects: 6\n")
    config = ["--configfile", "config/smoke.yaml", "six_subjects.yaml"]
    run = subprocess.run([SNAKEMAKE, *REPORT_TARGETS, "--cores", "2", *config], cwd=tmp_path,
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-8000:]
    report = subprocess.run([SNAKEMAKE, *REPORT_TARGETS, *config, "--report", "results/report.zip"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stdout[-4000:] + report.stderr[-8000:]

    with zipfile.ZipFile(tmp_path / "results" / "report.zip") as archive:
        names = archive.namelist()
        html = archive.read("report/report.html").decode()
        (csv_name,) = [n for n in names if n.endswith("/table1.csv")]
        assert archive.read(csv_name) == (tmp_path / "results/tables/table1.csv").read_bytes()
    # the workflow description and Table 1's caption, with the table rendered in it
    assert "synthetic chest-CT cohort" in html
    assert "Table 1 (COVID-MTL): cohort characteristics." in html
    table1 = pd.read_csv(tmp_path / "results/tables/table1.csv")
    assert '<table border=\\"1\\" class=\\"docutils\\">' in html
    for cell in ["characteristic", "Scans", table1.loc[table1.characteristic == "Scans", "All"].iloc[0]]:
        assert f"<td>{cell}</td>" in html or f'<th class=\\"head\\">{cell}</th>' in html, cell
