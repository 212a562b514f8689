"""COVID-MTL Table 1: cohort characteristics per split and per hospital."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from covidmtl.tables import mean_sd, write_table

log = logging.getLogger(__name__)

SEVERITY_NAMES = {0: "control/suspected", 1: "mild/regular", 2: "severe/critically ill"}
BINARY_NAMES = {1: "positive", 0: "negative"}


def _count(series: pd.Series, value) -> str:
    n = int((series == value).sum())
    total = int(series.notna().sum())
    return f"{n} ({100 * n / total:.1f}%)" if total else "-"


def cohort_table(manifest: pd.DataFrame, split: pd.DataFrame) -> pd.DataFrame:
    data = manifest.merge(split[["subject_id", "split"]], on="subject_id", how="left")
    groups: dict[str, pd.DataFrame] = {
        "Train": data[data.split == "train"],
        "Test": data[data.split == "test"],
        "All": data,
    }
    for hospital in sorted(data.hospital.dropna().unique()):
        groups[f"{hospital}"] = data[data.hospital == hospital]

    rows: list[tuple[str, str, dict]] = []

    def add(characteristic: str, value: str, fn) -> None:
        rows.append((characteristic, value, {name: fn(df) for name, df in groups.items()}))

    add("Scans", "n", lambda df: str(len(df)))
    add("Patients", "n", lambda df: str(df.patient_id.nunique()))
    for label, title in (("ct", "COVID-19 by radiology (CT)"), ("nat", "COVID-19 by nucleic acid test (NAT)")):
        if data[label].notna().any():
            for value, name in BINARY_NAMES.items():
                add(title, name, lambda df, v=value, c=label: _count(df[c], v))
    if data.severity.notna().any():
        for value, name in SEVERITY_NAMES.items():
            add("Severity", name, lambda df, v=value: _count(df.severity, v))
    if data.morbidity.notna().any():
        for value in ["control", "suspected", "mild", "regular", "severe", "critically_ill"]:
            add("Morbidity", value.replace("_", " "), lambda df, v=value: _count(df.morbidity, v))
    if data.diagnosis3.notna().any():
        for value, name in (("covid19", "COVID-19"), ("cap", "CAP"), ("normal", "normal")):
            add("Diagnosis (3-class)", name, lambda df, v=value: _count(df.diagnosis3, v))
    add("Sex", "male", lambda df: _count(df.sex, "M"))
    add("Sex", "female", lambda df: _count(df.sex, "F"))
    add("Age (years)", "mean ± sd", lambda df: mean_sd(df.age))
    return pd.DataFrame([{"characteristic": c, "value": v, **cells} for c, v, cells in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="covidmtl table1", description="COVID-MTL Table 1 from the manifest and split.")
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--split", required=True, type=Path)
    parser.add_argument("--out-stem", required=True, type=Path, help="writes <stem>.csv and <stem>.md")
    args = parser.parse_args(argv)
    manifest = pd.read_csv(args.manifest, dtype={"subject_id": str, "patient_id": str})
    split = pd.read_csv(args.split, dtype={"subject_id": str})
    table = cohort_table(manifest, split)
    write_table(table, args.out_stem)
    log.info("Table 1 written to %s.{csv,md}", args.out_stem)
    return 0
