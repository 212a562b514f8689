"""Train/test split: patient-disjoint, stratified, deterministic (COVID-MTL section 3: 70/30 by NAT)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from covidmtl.config import parse_params

log = logging.getLogger(__name__)


def patient_split(manifest: pd.DataFrame, test_fraction: float, stratify_by: str, seed: int) -> pd.DataFrame:
    """Assign every subject to train/test so that no patient is in both and the label mix is kept.

    Stratification is done on patients (label of their first scan; missing labels form
    their own stratum). Falls back to an unstratified split, with a warning, when a
    stratum has fewer than two patients (tiny real-data runs).
    """
    patients = (manifest.sort_values("subject_id").groupby("patient_id", sort=True)[stratify_by].first()
                .astype("string").fillna("missing"))
    ids = patients.index.to_numpy()
    if len(ids) < 2:
        assignment = {pid: "train" for pid in ids}
        log.warning("only %d patient(s): everything goes to the train split", len(ids))
    else:
        n_test = max(1, int(round(test_fraction * len(ids))))
        stratify = patients.to_numpy()
        counts = patients.value_counts()
        if counts.min() < 2 or n_test < counts.size or len(ids) - n_test < counts.size:
            log.warning("cannot stratify by %s (strata sizes %s); using an unstratified patient split",
                        stratify_by, counts.to_dict())
            stratify = None
        train_ids, test_ids = train_test_split(ids, test_size=n_test, random_state=seed, stratify=stratify)
        assignment = {**{p: "train" for p in train_ids}, **{p: "test" for p in test_ids}}
    split = manifest[["subject_id", "patient_id"]].copy()
    split["split"] = split.patient_id.map(assignment)
    return split.sort_values("subject_id").reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="covidmtl split", description="Patient-disjoint stratified train/test split.")
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--params", required=True, help="JSON of the `split` config section")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    params = parse_params(args.params)
    manifest = pd.read_csv(args.manifest, dtype={"subject_id": str, "patient_id": str})
    split = patient_split(manifest, params["test_fraction"], params["stratify_by"], params["seed"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    split.to_csv(args.out, index=False)
    log.info("split: %s", split.split.value_counts().to_dict())
    return 0
