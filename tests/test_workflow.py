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
    assert len(manifest) == 18 and set(manifest.source_format) == {"nifti", "dicom"}
    table1 = pd.read_csv(results / "tables" / "table1.csv")
    assert int(table1.loc[table1.characteristic == "Scans", "All"].iloc[0]) == 18
    tables = results / "tables"
    for name in ("table2", "table3", "table4", "table5"):
        assert (tables / f"{name}.csv").is_file() and (tables / f"{name}.md").is_file(), name
    table2 = pd.read_csv(tables / "table2.csv")
    overall = table2[table2.Subjects == "all"]
    assert len(overall) == 2 and overall["n subjects"].eq(18).all()  # classical and refined, every subject
    assert set(table2.Subjects) == {"all"} | set(manifest.diagnosis3)  # then rows per diagnosis
    table3 = pd.read_csv(tables / "table3.csv")
    assert {"RF", "LGBM", "mtl_shift_features"} <= set(table3.Model)
    for figure in ("figure2", "figure3_roc", "figure4_shift3d", "figure5", "figure6", "figure7_cam", "figure8",
                   "figure9_losses", "figure10_transfer"):
        assert (results / "figures" / f"{figure}.png").stat().st_size > 10_000, figure
    assert (results / "deepsc" / "report" / "table2_deepsc.csv").is_file()
    assert (results / "twod" / "amyar" / "table3_classification.csv").is_file()
    assert (results / "twod" / "mga" / "table4_classifiers.csv").is_file()
    # every job wrote a log and a benchmark
    assert any((results / "logs").rglob("*.log")) and any((results / "benchmarks").rglob("*.tsv"))
    # no DICOM identifiers reach results/
    for path in results.rglob("*"):
        if path.is_file() and path.suffix in {".csv", ".json", ".md", ".log", ".tsv"}:
            text = path.read_text(encoding="utf-8", errors="ignore")
            assert "MRN" not in text and "SYNTHETIC^PATIENT" not in text, path


@pytest.mark.slow
@pytest.mark.realdata
def test_real_studies_run_every_stage_their_labels_allow(real_ct_dir, tmp_path):
    """COVID-CT-MD's three studies (one per class, no masks): the DAG curates them, segments
    the lungs, extracts features, leaves the supervised stages out with the reason, and no
    DICOM header identifier reaches results/."""
    import json

    from test_adapters_deid import identifier_leaks, study_identifiers

    workdir = copy_workflow(tmp_path)
    result = subprocess.run(
        [SNAKEMAKE, "--cores", "2", "--config", 'datasets=["covid_ct_md"]', f"mirror={real_ct_dir.parent}"],
        cwd=workdir, capture_output=True, text=True, timeout=3000,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    results = workdir / "results"
    plan = {d["stage"]: d for d in json.loads((results / "stage_plan.json").read_text(encoding="utf-8"))}
    assert {stage for stage, d in plan.items() if d["runs"]} == {"cohort", "lungseg", "features"}
    assert "0 volumes with a ground-truth lung mask" in plan["lungseg_eval"]["reason"]
    subjects = ["ctmd-P001", "ctmd-cap001", "ctmd-normal001"]
    assert sorted(pd.read_csv(results / "curated" / "manifest.csv").subject_id) == subjects
    assert (results / "tables" / "table1.md").is_file() and (results / "figures" / "figure2.png").is_file()
    for subject in subjects:
        lungseg = results / "lungseg" / "covid_ct_md" / subject
        assert (lungseg / "qc.png").stat().st_size > 10_000
        volume_ml = json.loads((lungseg / "metrics.json").read_text(encoding="utf-8"))["refined"]["lung_volume_ml"]
        assert 2500 < volume_ml < 9000, (subject, volume_ml)  # physiological lungs
    features = pd.read_parquet(results / "features" / "features.parquet")
    assert len(features) == 3 and features.filter(like="wavelet-HLL_glcm").notna().all().all()
    # supervised stages were left out, not failed half way
    assert not (results / "classical").exists() and not (results / "deep").exists()

    leaks = identifier_leaks(results, study_identifiers(real_ct_dir))
    assert not leaks, f"identifiers from the DICOM headers reached results/: {leaks}"
