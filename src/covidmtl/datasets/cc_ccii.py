"""CC-CCII, China Consortium of Chest CT Image Investigation (Zhang et al., Cell 181, 1423 (2020)).

Layout after extracting the consortium's zip files (ncov-ai.big.ac.cn/download)::

    NCP/<patient_id>/<scan_id>/0000.png ...     novel coronavirus pneumonia (COVID-19)
    CP/<patient_id>/<scan_id>/...               common pneumonia
    Normal/<patient_id>/<scan_id>/...           normal controls
    unzip_filenames.csv                         zip_file, label, patient_id, scan_id, n_slice (optional check)

One row per scan folder (``image_format='slices2d'``, routed to the 2D slice dataset).
Patient numbers are only known to be unique within a class folder, so the patient id keeps
the class (``ccccii-NCP-<patient>``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from covidmtl.datasets.layout import SLICES2D, find_dir, finish, image_files, input_error, require_raw_dir, row, safe_id

log = logging.getLogger(__name__)

DATASET = "cc_ccii"
PREFIX = "ccccii"
# class -> (morbidity, diagnosis3, ct, severity)
CLASSES = {
    "NCP": (None, "covid19", None, None),
    "CP": ("control", "cap", 0, 0),
    "Normal": ("control", "normal", 0, 0),
}
METADATA_FILE = "unzip_filenames.csv"


def check_metadata(path: Path) -> dict[tuple[str, str], str]:
    """(patient_id, scan_id) -> label from unzip_filenames.csv; unknown labels are errors."""
    table = pd.read_csv(path, dtype=str)
    missing = {"label", "patient_id", "scan_id"} - set(table.columns)
    if missing:
        raise input_error(DATASET, f"{path.name} lacks the column(s) {sorted(missing)}", path)
    labels = {}
    for line, (_, values) in enumerate(table.iterrows(), start=2):
        if values["label"] not in CLASSES:
            raise input_error(DATASET, f"unknown label {values['label']!r} in {path.name} line {line} "
                              f"(known: {sorted(CLASSES)})", path)
        labels[(values["patient_id"], values["scan_id"])] = values["label"]
    return labels


def build_index(raw_dir: Path) -> pd.DataFrame:
    raw_dir = require_raw_dir(DATASET, raw_dir)
    class_dirs = {name: find_dir(raw_dir, [name], max_depth=2) for name in CLASSES}
    if not any(class_dirs.values()):
        raise input_error(DATASET, f"none of the class folders {sorted(CLASSES)} found", raw_dir,
                          "extract the CC-CCII zip files here (see docs/datasets.md)")
    metadata_path = raw_dir / METADATA_FILE
    metadata = check_metadata(metadata_path) if metadata_path.is_file() else {}
    rows, disagreements = [], 0
    for label, class_dir in class_dirs.items():
        if class_dir is None:
            log.warning("%s: class folder %s not found; indexing the others", DATASET, label)
            continue
        morbidity, diagnosis, ct, severity = CLASSES[label]
        for patient_dir in sorted(p for p in class_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for scan_dir in sorted(p for p in patient_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if not image_files(scan_dir):
                    raise input_error(DATASET, f"scan folder {label}/{patient_dir.name}/{scan_dir.name} holds no "
                                      "slice images", scan_dir, "re-extract the zip file that holds this scan")
                listed = metadata.get((patient_dir.name, scan_dir.name))
                disagreements += listed is not None and listed != label
                patient = f"{PREFIX}-{label}-{safe_id(patient_dir.name)}"
                rows.append(row(subject_id=f"{patient}-{safe_id(scan_dir.name)}", patient_id=patient,
                                morbidity=morbidity, diagnosis3=diagnosis, ct=ct, severity=severity,
                                image_format=SLICES2D, image_path=str(scan_dir), lung_mask_path="",
                                lesion_mask_path="", source_dir=str(scan_dir), source_label=label))
    index = finish(DATASET, rows, raw_dir)
    if disagreements:
        log.warning("%s: %d scan(s) sit in a class folder other than the label in %s; the folder was used",
                    DATASET, disagreements, METADATA_FILE)
    log.info("%s: %d scans of %d patients (%s)", DATASET, len(index), index.patient_id.nunique(),
             index.source_label.value_counts().to_dict())
    return index
