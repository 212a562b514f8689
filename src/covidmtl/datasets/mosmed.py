"""MosMedData: Chest CT Scans with COVID-19 Related Findings (Morozov et al., arXiv 2005.06465).

Layout of the COVID19_1110 release (licence click-through at mosmed.ai)::

    COVID19_1110/studies/CT-0/study_0001.nii.gz ... CT-4/study_1110.nii.gz   (1110 studies)
    COVID19_1110/masks/study_0255_mask.nii.gz ...                             (50 binary lesion masks, CT-1)
    COVID19_1110/dataset_registry.xlsx, README_*.pdf                          (not read here)

The category folder is the label: CT-0 no CT signs of viral pneumonia, CT-1 < 25 % of the
lung parenchyma involved, CT-2 25-50 %, CT-3 50-75 %, CT-4 > 75 %. It is a radiological
grade, mapped onto the 3-class severity as 0/1/1/2/2 (docs/datasets.md); MosMed gives no
NAT result, no clinical morbidity, and one study per patient as far as published, so the
study id is used as the patient id.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from covidmtl.datasets.layout import find_dir, finish, input_error, nifti_files, require_raw_dir, row

log = logging.getLogger(__name__)

DATASET = "mosmed"
PREFIX = "mosmed"
HOSPITAL = "Moscow municipal hospitals"
# category -> (diagnosis3, ct, severity)
CATEGORIES = {
    "CT-0": ("normal", 0, 0),
    "CT-1": ("covid19", 1, 1),
    "CT-2": ("covid19", 1, 1),
    "CT-3": ("covid19", 1, 2),
    "CT-4": ("covid19", 1, 2),
}
MASK_NAME = re.compile(r"(study_\d+)_mask")


def build_index(raw_dir: Path) -> pd.DataFrame:
    raw_dir = require_raw_dir(DATASET, raw_dir)
    studies = find_dir(raw_dir, ["studies"])
    if studies is None:
        raise input_error(DATASET, "no 'studies' folder (COVID19_1110/studies/CT-0 ... CT-4) found", raw_dir,
                          "extract the MosMedData archive into this folder (see docs/datasets.md)")
    masks_dir = studies.parent / "masks"
    masks = {}
    if masks_dir.is_dir():
        for stem, path in nifti_files(masks_dir).items():
            match = MASK_NAME.fullmatch(stem)
            if not match:
                raise input_error(DATASET, f"unexpected mask file name {path.name!r} (expected study_NNNN_mask.nii.gz)", path)
            masks[match.group(1)] = path
    else:
        log.warning("%s: no masks folder next to %s; indexing without lesion masks", DATASET, studies)

    rows = []
    for category_dir in sorted(p for p in studies.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if category_dir.name not in CATEGORIES:
            raise input_error(DATASET, f"unknown category folder {category_dir.name!r} (known: {sorted(CATEGORIES)})",
                              category_dir, "MosMedData grades studies CT-0 ... CT-4; remove or rename the folder")
        diagnosis, ct, severity = CATEGORIES[category_dir.name]
        files = nifti_files(category_dir)
        if not files:
            log.warning("%s: category folder %s holds no NIfTI studies", DATASET, category_dir.name)
        for stem, path in files.items():
            subject = f"{PREFIX}-{stem}"
            mask = masks.pop(stem, None)
            rows.append(row(subject_id=subject, patient_id=subject, hospital=HOSPITAL, diagnosis3=diagnosis, ct=ct,
                            severity=severity, image_format="nifti", image_path=str(path), lung_mask_path="",
                            lesion_mask_path=str(mask) if mask else "", source_dir=str(category_dir),
                            source_label=category_dir.name))
    if masks:
        raise input_error(DATASET, f"{len(masks)} mask(s) have no study, e.g. {next(iter(masks.values())).name}",
                          masks_dir, "the studies folder is incomplete; re-extract the dataset")
    index = finish(DATASET, rows, raw_dir)
    log.info("%s: %d studies (%s), %d with a lesion mask", DATASET, len(index),
             ", ".join(f"{k}: {n}" for k, n in sorted(index.source_label.value_counts().items())),
             int((index.lesion_mask_path != "").sum()))
    return index
