"""The cohort manifest: one row per curated subject (ids, labels, paths, geometry)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "subject_id", "patient_id", "dataset", "hospital", "age", "sex",
    "morbidity", "diagnosis3", "ct", "nat", "severity",
    "ct_path", "lung_mask_path", "lesion_mask_path",
    "source_format", "original_spacing", "original_size", "original_orientation",
    "spacing", "size", "orientation",
]


def manifest_row(meta_path: Path) -> dict:
    meta = json.loads(Path(meta_path).read_text(encoding="utf-8"))
    subject_dir = Path(meta_path).parent
    row = {k: v for k, v in meta.items() if k != "acquisition"}
    row["ct_path"] = str(subject_dir / "ct.nii.gz")
    row["lung_mask_path"] = str(subject_dir / "masks" / "lung.nii.gz") if meta["has_lung_mask"] else ""
    row["lesion_mask_path"] = str(subject_dir / "masks" / "lesion.nii.gz") if meta["has_lesion_mask"] else ""
    for key in ("original_spacing", "original_size", "spacing", "size"):
        row[key] = "x".join(str(v) for v in meta[key])
    for key, value in (meta.get("acquisition") or {}).items():
        row[f"acq_{key}"] = value
    return row


def build_manifest(meta_paths: list[Path]) -> pd.DataFrame:
    rows = [manifest_row(p) for p in meta_paths]
    manifest = pd.DataFrame(rows)
    duplicated = manifest.subject_id[manifest.subject_id.duplicated()].tolist()
    if duplicated:
        raise ValueError(f"subject ids are not unique across datasets: {sorted(set(duplicated))}")
    extra = [c for c in manifest.columns if c not in MANIFEST_COLUMNS]
    for label in ("ct", "nat", "severity"):
        manifest[label] = pd.array(manifest[label], dtype="Int64")
    return manifest[MANIFEST_COLUMNS + extra].sort_values("subject_id").reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="covidmtl manifest", description="Collect curated subjects into the manifest.")
    parser.add_argument("--meta", nargs="+", required=True, type=Path, help="meta.json files of curated subjects")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    manifest = build_manifest(args.meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(args.out, index=False)
    log.info("manifest: %d subjects from %s", len(manifest), sorted(manifest.dataset.unique()))
    return 0
