"""COVID-CT-MD (Afshar et al., Scientific Data 8, 121 (2021); figshare collection 5129081).

Layout (the dataset's own; the public sample in ../shared/real-ct/covid-ct-md has it)::

    COVID-19 subjects/P001/<slice>.dcm      one folder of single-slice DICOM files per patient
    Cap subjects/cap001/...                 ('CAP subjects' in the dataset README, 'Cap subjects' on disk;
    Normal subjects/normal001/...            the authors' script says 'COVID-19 Cases' etc.: all accepted)
    Index.csv                               Label Index, Diagnosis, Relative Path, Folder/ID
    Slice-level-labels-updated-1.npy        (n_labelled, 200): infection per slice, Slice-Location order
    Lobe-level-labels-updated-1.npy         (n_labelled, 200, 5): per lobe (LLL, LUL, RLL, RML, RUL)

Index.csv lists only the patients with slice/lobe labels (COVID-19 and CAP, not the normal
patients); the diagnosis comes from the class folder and is cross-checked against Index.csv.
Only folders present on disk are indexed (a partial copy is normal), and the log says how
many listed patients are absent. DICOM file names embed the PatientID: they never leave
this module (rows point at the series folder).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from covidmtl.datasets.layout import finish, input_error, require_raw_dir, row

log = logging.getLogger(__name__)

DATASET = "covid_ct_md"
PREFIX = "ctmd"
HOSPITAL = "Babak Imaging Center, Tehran"  # single centre (data descriptor)
INDEX_FILE = "Index.csv"
INDEX_COLUMNS_REQUIRED = ["Label Index", "Diagnosis", "Folder/ID"]
# class folder (lower-case, trailing ' subjects'/' cases' removed) -> diagnosis3
CLASS_FOLDERS = {"covid-19": "covid19", "covid19": "covid19", "cap": "cap", "normal": "normal"}
# Index.csv 'Diagnosis' -> diagnosis3
INDEX_DIAGNOSES = {"covid-19": "covid19", "cap": "cap", "normal": "normal"}
# diagnosis3 -> (morbidity, ct, nat, severity); see docs/datasets.md for the reasoning
LABELS = {
    "covid19": (None, 1, 1, None),   # RT-PCR confirmed, CT manifestations read by three radiologists
    "cap": ("control", 0, None, 0),  # CAP collected 2018-2019; no SARS-CoV-2 test reported
    "normal": ("control", 0, None, 0),
}


def class_of_folder(name: str) -> str | None:
    key = re.sub(r"\s+(subjects|cases)$", "", name.strip().lower())
    return CLASS_FOLDERS.get(key)


def read_label_index(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise input_error(DATASET, f"{INDEX_FILE} is missing", path,
                          "COVID-CT-MD ships Index.csv beside the class folders; download it with the dataset")
    table = pd.read_csv(path, dtype=str).rename(columns=lambda c: c.strip())
    missing = [c for c in INDEX_COLUMNS_REQUIRED if c not in table.columns]
    if missing:
        raise input_error(DATASET, f"{INDEX_FILE} lacks the column(s) {missing} (has {list(table.columns)})", path)
    table = table.apply(lambda column: column.str.strip())
    for number, value in enumerate(table["Diagnosis"], start=2):
        if str(value).lower() not in INDEX_DIAGNOSES:
            raise input_error(DATASET, f"unknown diagnosis {value!r} in {INDEX_FILE} line {number} "
                              f"(known: {sorted(INDEX_DIAGNOSES)})", path)
    table["diagnosis3"] = table["Diagnosis"].str.lower().map(INDEX_DIAGNOSES)
    return table.set_index("Folder/ID")


def build_index(raw_dir: Path) -> pd.DataFrame:
    raw_dir = require_raw_dir(DATASET, raw_dir)
    class_dirs = {d: class_of_folder(d.name) for d in sorted(raw_dir.iterdir()) if d.is_dir()}
    class_dirs = {d: c for d, c in class_dirs.items() if c}
    if not class_dirs:
        raise input_error(DATASET, "no class folders ('COVID-19 subjects', 'CAP subjects', 'Normal subjects') found",
                          raw_dir, "point the pipeline at the folder that holds the class folders and Index.csv")
    labels = read_label_index(raw_dir / INDEX_FILE)

    rows = []
    for class_dir, diagnosis in class_dirs.items():
        for folder in sorted(p for p in class_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not any(f.suffix.lower() == ".dcm" for f in folder.iterdir()):
                raise input_error(DATASET, f"study folder {class_dir.name}/{folder.name} holds no .dcm files", folder,
                                  "re-extract the dataset, or remove the empty folder")
            label_index = None
            if folder.name in labels.index:
                listed = labels.loc[folder.name]
                if listed["diagnosis3"] != diagnosis:
                    raise input_error(DATASET, f"{folder.name} is in the folder {class_dir.name!r} but {INDEX_FILE} "
                                      f"says {listed['Diagnosis']!r}", raw_dir / INDEX_FILE)
                label_index = int(listed["Label Index"])
            morbidity, ct, nat, severity = LABELS[diagnosis]
            subject = f"{PREFIX}-{folder.name}"
            rows.append(row(subject_id=subject, patient_id=subject, hospital=HOSPITAL, morbidity=morbidity,
                            diagnosis3=diagnosis, ct=ct, nat=nat, severity=severity, image_format="dicom",
                            image_path=str(folder), lung_mask_path="", lesion_mask_path="", source_dir=str(folder),
                            source_label=class_dir.name, label_index=label_index))

    index = finish(DATASET, rows, raw_dir)
    present = set(index.subject_id.str.removeprefix(f"{PREFIX}-"))
    listed_present = len(present & set(labels.index))
    counts = index.diagnosis3.value_counts().to_dict()
    log.info("%s: indexed the %d studies present on disk (%s). %s lists %d labelled patients; %d of them are "
             "present here, %d are not (a partial copy such as the public sample) and are not indexed.",
             DATASET, len(index), ", ".join(f"{n} {k}" for k, n in sorted(counts.items())), INDEX_FILE,
             len(labels), listed_present, len(labels) - listed_present)
    return index
