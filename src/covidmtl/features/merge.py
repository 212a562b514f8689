"""Merge the per-subject feature rows into one table with the cohort's labels.

Subjects or features that cannot be used are excluded here, and every exclusion is
listed in the QC table (columns ``item, kind, reason``; kind is ``subject`` or
``feature``), never dropped silently:

- manifest subjects without a feature file (extraction failed, e.g. run with --keep-going);
- feature files of subjects that are not in the manifest;
- subjects with more than ``max_nonfinite_fraction`` NaN/infinite features;
- features that are still NaN/infinite for any remaining subject.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from covidmtl.errors import PipelineInputError
from covidmtl.features.radiomics import (
    DEFAULT_PARAMS,
    STAGE,
    feature_columns,
    parse_params,
    read_table_file,
    write_table_file,
)

log = logging.getLogger(__name__)

LABEL_COLUMNS = ["patient_id", "dataset", "hospital", "age", "sex", "morbidity", "diagnosis3", "ct", "nat", "severity"]
QC_COLUMNS = ["item", "kind", "reason"]



def _qc(item: str, kind: str, reason: str) -> dict[str, str]:
    return {"item": str(item), "kind": kind, "reason": reason}


def _short_list(items: Iterable[str], n: int = 5) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def collect_rows(inputs: list[str | Path]) -> pd.DataFrame:
    """Concatenate per-subject rows; one feature set, one parameter file, no duplicate subjects."""
    if not inputs:
        raise PipelineInputError(stage=STAGE, reason="no per-subject feature files were given",
                                 hint="run features-extract for at least one subject")
    frames, source, reference_cols, reference_path = [], {}, None, None
    for path in inputs:
        try:
            df = read_table_file(path)
        except Exception as err:  # damaged Parquet/CSV
            raise PipelineInputError(stage=STAGE, path=path, reason=f"cannot read the feature file ({err})",
                                     hint="delete the file and rerun features-extract for this subject") from err
        if "subject_id" not in df.columns or df.empty:
            raise PipelineInputError(stage=STAGE, path=path, reason="feature file has no subject_id row",
                                     hint="delete the file and rerun features-extract for this subject")
        df["subject_id"] = df["subject_id"].astype(str)
        cols = feature_columns(df)
        subject = df["subject_id"].iloc[0]
        if reference_cols is None:
            reference_cols, reference_path = cols, path
        elif set(cols) != set(reference_cols):
            missing, extra = sorted(set(reference_cols) - set(cols)), sorted(set(cols) - set(reference_cols))
            raise PipelineInputError(
                stage=STAGE, subject=subject, path=path,
                reason=f"feature set differs from {reference_path} (missing: {_short_list(missing)}; "
                f"extra: {_short_list(extra)})",
                hint="all subjects must be extracted with the same parameter file; rerun features-extract",
            )
        for sid in df["subject_id"]:
            if sid in source:
                raise PipelineInputError(stage=STAGE, subject=sid, path=path,
                                         reason=f"subject also has features in {source[sid]}",
                                         hint="pass each subject's feature file once")
            source[sid] = str(path)
        frames.append(df)
    rows = pd.concat(frames, ignore_index=True)
    if "qc_params_sha256" in rows.columns and rows["qc_params_sha256"].nunique(dropna=True) > 1:
        first = rows["qc_params_sha256"].iloc[0]
        odd = rows.loc[rows["qc_params_sha256"] != first, "subject_id"]
        raise PipelineInputError(stage=STAGE, subject=odd.iloc[0],
                                 reason=f"features of {_short_list(odd)} come from a different parameter file "
                                 f"than those of {rows['subject_id'].iloc[0]}",
                                 hint="rerun features-extract for every subject with one parameter file")
    return rows


def merge_features(
    rows: pd.DataFrame,
    manifest: pd.DataFrame,
    max_nonfinite_fraction: float = DEFAULT_PARAMS["max_nonfinite_fraction"],
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Return (features table with labels, per-subject diagnostics, QC of exclusions)."""
    if "subject_id" not in manifest.columns:
        raise PipelineInputError(stage=STAGE, reason="the manifest has no subject_id column",
                                 hint="pass the cohort manifest written by `covidmtl manifest`")
    manifest = manifest.copy()
    manifest["subject_id"] = manifest["subject_id"].astype(str)
    qc: list[dict[str, str]] = []
    feats = feature_columns(rows)
    if not feats:
        raise PipelineInputError(stage=STAGE, reason="the feature files contain no PyRadiomics feature columns",
                                 hint="check config/radiomics.yaml and rerun features-extract")

    have = set(rows["subject_id"])
    for sid in manifest["subject_id"]:
        if sid not in have:
            qc.append(_qc(sid, "subject", "no feature file (feature extraction failed or was not run)"))
    in_manifest = rows["subject_id"].isin(set(manifest["subject_id"]))
    for sid in rows.loc[~in_manifest, "subject_id"]:
        qc.append(_qc(sid, "subject", "has features but is not in the manifest; left out"))
    rows = rows.loc[in_manifest].reset_index(drop=True)

    values = rows[feats].apply(pd.to_numeric, errors="coerce").astype(np.float64)
    nonfinite = ~np.isfinite(values.to_numpy())
    fraction = nonfinite.mean(axis=1)
    bad_subjects = fraction > max_nonfinite_fraction
    for i in np.flatnonzero(bad_subjects):
        names = [f for f, bad in zip(feats, nonfinite[i]) if bad]
        qc.append(_qc(rows.at[i, "subject_id"], "subject",
                      f"{len(names)} of {len(feats)} features NaN/infinite ({fraction[i]:.1%} > "
                      f"features.max_nonfinite_fraction={max_nonfinite_fraction}): {_short_list(names)}"))
        log.warning("subject %s excluded: %d features NaN/infinite", rows.at[i, "subject_id"], len(names))
    keep = ~bad_subjects
    rows, values, nonfinite = rows.loc[keep].reset_index(drop=True), values.loc[keep].reset_index(drop=True), nonfinite[keep]

    bad_features = nonfinite.any(axis=0)
    for j in np.flatnonzero(bad_features):
        subjects = rows.loc[nonfinite[:, j], "subject_id"].tolist()
        qc.append(_qc(feats[j], "feature", f"NaN/infinite for {len(subjects)} subject(s): {_short_list(subjects)}"))
        log.warning("feature %s excluded: NaN/infinite for %d subject(s)", feats[j], len(subjects))
    kept = [f for f, bad in zip(feats, bad_features) if not bad]
    if rows.empty or not kept:
        raise PipelineInputError(stage=STAGE, reason=f"nothing left after QC ({len(rows)} subjects, "
                                 f"{len(kept)} features); see the QC table",
                                 hint="inspect the lung volumes and the feature extraction logs")

    labels = [c for c in LABEL_COLUMNS if c in manifest.columns]
    table = manifest[["subject_id", *labels]].merge(
        pd.concat([rows[["subject_id"]], values[kept]], axis=1), on="subject_id", how="inner")
    diag_cols = [c for c in rows.columns if c.startswith("qc_")]
    diagnostics = rows[["subject_id", *diag_cols]].copy()
    return table, diagnostics, pd.DataFrame(qc, columns=QC_COLUMNS)


def write_outputs(table: pd.DataFrame, diagnostics: pd.DataFrame, qc: pd.DataFrame,
                  out_stem: str | Path, qc_path: str | Path) -> list[Path]:
    out_stem = Path(out_stem)
    paths = [write_table_file(table, out_stem.with_suffix(".parquet")),
             write_table_file(table, out_stem.with_suffix(".csv")),
             write_table_file(diagnostics, out_stem.parent / f"{out_stem.name}_diagnostics.csv")]
    qc_path = Path(qc_path)
    qc_path.parent.mkdir(parents=True, exist_ok=True)
    qc.to_csv(qc_path, index=False)
    return [*paths, qc_path]


def main(argv: list[str] | None = None) -> int:
    """``covidmtl features-merge``: per-subject rows + manifest -> features table and QC."""
    ap = argparse.ArgumentParser(prog="covidmtl features-merge", description=main.__doc__)
    ap.add_argument("--inputs", nargs="*", default=[], help="per-subject feature files")
    ap.add_argument("--inputs-from", default=None, help="text file listing per-subject feature files, one a line")
    ap.add_argument("--manifest", required=True, help="cohort manifest CSV (subject_id + labels)")
    ap.add_argument("--out-stem", required=True, help="writes <stem>.parquet, <stem>.csv, <stem>_diagnostics.csv")
    ap.add_argument("--qc", required=True, help="QC CSV of excluded subjects/features (item, kind, reason)")
    ap.add_argument("--params", default=None, help="JSON of the 'features' config section")
    args = ap.parse_args(argv)
    max_frac = float(parse_params(args.params)["max_nonfinite_fraction"])
    if not 0 <= max_frac <= 1 or math.isnan(max_frac):
        raise ValueError("features.max_nonfinite_fraction must be within [0, 1]")
    inputs = list(args.inputs)
    if args.inputs_from:
        inputs += [line.strip() for line in Path(args.inputs_from).read_text(encoding="utf-8").splitlines() if line.strip()]
    manifest = pd.read_csv(args.manifest, dtype={"subject_id": str, "patient_id": str})
    table, diagnostics, qc = merge_features(collect_rows(inputs), manifest, max_frac)
    write_outputs(table, diagnostics, qc, args.out_stem, args.qc)
    log.info("features table: %d subjects x %d features; %d QC exclusion(s) -> %s",
             len(table), len(feature_columns(table)), len(qc), args.qc)
    return 0
