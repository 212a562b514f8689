"""Adapter for the built-in synthetic cohort (layout written by covidmtl.synthetic.cohort)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from covidmtl.datasets import INDEX_COLUMNS
from covidmtl.errors import PipelineInputError
from covidmtl.synthetic.cohort import image_relpath

DATASET = "synthetic"


def build_index(raw_dir: Path) -> pd.DataFrame:
    clinical_path = raw_dir / "clinical.csv"
    if not clinical_path.exists():
        raise PipelineInputError("index", "clinical table missing", None, clinical_path,
                                 "regenerate the synthetic cohort (snakemake --forcerun synthetic_clinical)")
    index = pd.read_csv(clinical_path, dtype={"subject_id": str, "patient_id": str})
    index["dataset"] = DATASET
    index["image_path"] = [str(raw_dir / image_relpath(r)) for _, r in index.iterrows()]
    index["source_dir"] = [str(raw_dir / "subjects" / s) for s in index.subject_id]
    index["lung_mask_path"] = [str(raw_dir / "subjects" / s / "lung_mask.nii.gz") for s in index.subject_id]
    index["lesion_mask_path"] = [str(raw_dir / "subjects" / s / "lesion_mask.nii.gz") for s in index.subject_id]
    missing = [p for p in index.image_path if not Path(p).exists()]
    if missing:
        raise PipelineInputError("index", f"{len(missing)} subject image(s) missing, e.g. {missing[0]}", None, raw_dir,
                                 "regenerate the synthetic cohort")
    return index[INDEX_COLUMNS]
