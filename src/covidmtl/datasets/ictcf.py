"""iCTCF / HUST-19 (Ning et al., Nature Biomedical Engineering 4, 1197 (2020); ictcf.biocuckoo.cn).

The COVID-MTL cohort (Bao et al., section 3): CT of 1521 patients from Union and Liyuan
hospitals, Wuhan, with clinical features including the nucleic acid test (NAT) result, CT
positivity and the morbidity outcome. The site serves one archive per patient
('Patient 1.zip' ... ) and the clinical table; there is no bulk download, so the dataset is
assembled by hand (see docs/datasets.md). Expected layout (UNVERIFIED against a full download)::

    clinical.csv                 one row per patient (CSV export of the clinical table)
    CT/Patient 1/*.jpg|png       slice images of one patient ('CT/' optional) ...
    CT/Patient 2/*.dcm           ... or a DICOM series (then curation reads it as 3D)

Clinical columns are matched by the names below (case-insensitive); values: NAT and CT
'Positive'/'Negative', morbidity 'Control', 'Suspected', 'Mild', 'Regular', 'Severe',
'Critically ill' (a control may say 'Control (Community-acquired pneumonia)' or
'Control (Healthy)'). Unknown values are errors that name the file and the line.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from covidmtl.datasets.layout import (SEVERITY_OF_MORBIDITY, SLICES2D, finish, image_files, input_error,
                                      require_raw_dir, row)

log = logging.getLogger(__name__)

DATASET = "ictcf"
PREFIX = "ictcf"
CLINICAL_FILE = "clinical.csv"
COLUMN_ALIASES = {
    "patient": ["patient id", "patient", "patientid", "patient_id", "id"],
    "hospital": ["hospital"],
    "age": ["age"],
    "sex": ["gender", "sex"],
    "nat": ["sars-cov-2 nucleic acids", "nucleic acid test", "nat", "covid", "sars-cov-2 nat"],
    "ct": ["computed tomography (ct)", "ct", "computed tomography"],
    "morbidity": ["morbidity outcome", "morbidity", "severity"],
}
BINARY = {"positive": 1, "negative": 0, "pos": 1, "neg": 0, "1": 1, "0": 0, "yes": 1, "no": 0}
MISSING = {"", "n/a", "na", "nan", "none", "-", "unknown"}
# morbidity text -> (morbidity, diagnosis3 implied by it or None)
MORBIDITY = {
    "control": ("control", None),
    "control (community-acquired pneumonia)": ("control", "cap"),
    "control (cap)": ("control", "cap"),
    "control (healthy)": ("control", "normal"),
    "control (normal)": ("control", "normal"),
    "suspected": ("suspected", "covid19"),
    "mild": ("mild", "covid19"),
    "regular": ("regular", "covid19"),
    "moderate": ("regular", "covid19"),
    "severe": ("severe", "covid19"),
    "critically ill": ("critically_ill", "covid19"),
    "critically_ill": ("critically_ill", "covid19"),
    "critical": ("critically_ill", "covid19"),
}
SEX = {"male": "M", "m": "M", "female": "F", "f": "F"}
PATIENT_FOLDER = re.compile(r"patient[ _-]*(\d+)", re.IGNORECASE)


def patient_number(value) -> int | None:
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    match = PATIENT_FOLDER.fullmatch(text)
    return int(match.group(1)) if match else None


def _value(mapping: dict, value, column: str, line: int, path: Path):
    text = "" if pd.isna(value) else str(value).strip().lower()
    if text in MISSING:
        return None
    if text not in mapping:
        raise input_error(DATASET, f"unknown {column} value {value!r} in {path.name} line {line} "
                          f"(known: {sorted(set(mapping))})", path,
                          "fix the value or extend the mapping in covidmtl/datasets/ictcf.py")
    return mapping[text]


def read_clinical(path: Path) -> dict[int, dict]:
    if not path.is_file():
        raise input_error(DATASET, f"clinical table {CLINICAL_FILE} is missing", path,
                          "export the iCTCF clinical table as CSV to this path (see docs/datasets.md)")
    table = pd.read_csv(path, dtype=str)
    lower = {c.strip().lower(): c for c in table.columns}
    columns = {key: next((lower[a] for a in aliases if a in lower), None) for key, aliases in COLUMN_ALIASES.items()}
    if columns["patient"] is None or not any(columns[k] for k in ("nat", "ct", "morbidity")):
        raise input_error(DATASET, f"{path.name} needs a patient id column and at least one of NAT / CT / morbidity "
                          f"(found columns {list(table.columns)})", path)
    records = {}
    for line, (_, values) in enumerate(table.iterrows(), start=2):
        number = patient_number(values[columns["patient"]])
        if number is None:
            raise input_error(DATASET, f"unreadable patient id {values[columns['patient']]!r} in {path.name} line {line}", path)
        get = {key: (values[col] if col else None) for key, col in columns.items()}
        morbidity, implied = _value(MORBIDITY, get["morbidity"], "morbidity", line, path) or (None, None)
        nat = _value(BINARY, get["nat"], "NAT", line, path)
        ct = _value(BINARY, get["ct"], "CT", line, path)
        diagnosis = "covid19" if nat == 1 else implied
        age = pd.to_numeric(get["age"], errors="coerce") if get["age"] is not None else None
        records[number] = {
            "hospital": None if pd.isna(get["hospital"]) else get["hospital"],
            "age": None if age is None or pd.isna(age) else float(age),
            "sex": _value(SEX, get["sex"], "sex", line, path) if get["sex"] is not None else None,
            "morbidity": morbidity, "diagnosis3": diagnosis, "nat": nat, "ct": ct,
            "severity": SEVERITY_OF_MORBIDITY.get(morbidity), "source_label": get["morbidity"],
        }
    return records


def build_index(raw_dir: Path) -> pd.DataFrame:
    raw_dir = require_raw_dir(DATASET, raw_dir)
    clinical = read_clinical(raw_dir / CLINICAL_FILE)
    parents = [raw_dir / "CT", raw_dir] if (raw_dir / "CT").is_dir() else [raw_dir]
    folders = {}
    for parent in parents:
        for folder in sorted(p for p in parent.iterdir() if p.is_dir()):
            number = patient_number(folder.name)
            if number is not None:
                folders.setdefault(number, folder)
    if not folders:
        raise input_error(DATASET, "no patient folders ('Patient 1', 'Patient 2', ...) found", raw_dir,
                          "extract the per-patient CT archives into <raw>/CT/ (see docs/datasets.md)")
    rows, unlabelled = [], []
    for number, folder in sorted(folders.items()):
        if any(f.suffix.lower() == ".dcm" for f in folder.iterdir()):
            image_format = "dicom"
        elif image_files(folder):
            image_format = SLICES2D
        else:
            raise input_error(DATASET, f"patient folder {folder.name!r} holds neither slice images nor DICOM files",
                              folder, "re-extract the patient's archive")
        labels = clinical.get(number)
        if labels is None:
            unlabelled.append(folder.name)
            labels = {}
        subject = f"{PREFIX}-p{number:04d}"
        rows.append(row(subject_id=subject, patient_id=subject, image_format=image_format, image_path=str(folder),
                        lung_mask_path="", lesion_mask_path="", source_dir=str(folder), **labels))
    index = finish(DATASET, rows, raw_dir)
    if unlabelled:
        log.warning("%s: %d patient folder(s) have no row in %s and are indexed without labels, e.g. %s",
                    DATASET, len(unlabelled), CLINICAL_FILE, unlabelled[:3])
    log.info("%s: %d patients with CT (%s); %d patients of %s have no CT folder here", DATASET, len(index),
             index.image_format.value_counts().to_dict(), len(set(clinical) - set(folders)), CLINICAL_FILE)
    return index
