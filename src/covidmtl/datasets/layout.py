"""Shared pieces of the dataset adapters: rows, ids, finding folders, clear errors.

Every adapter returns the index columns of :data:`covidmtl.datasets.INDEX_COLUMNS`
followed by optional extra columns (``EXTRA_COLUMNS``) that only some datasets fill.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pandas as pd

from covidmtl.datasets import INDEX_COLUMNS
from covidmtl.errors import PipelineInputError

STAGE = "index"
# image_format values besides 'nifti' | 'dicom' (which curation reads):
IMAGE2D = "image2d"      # one 2D image file (PNG/JPEG, or a 2D NIfTI slice in HU); routed to the 2D slice dataset
SLICES2D = "slices2d"    # a folder of 2D slice images of one scan; routed to the 2D slice dataset
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
EXTRA_COLUMNS = [
    "source_label",      # the dataset's own label, verbatim (e.g. 'CT-2', 'NCP', 'COVID-19')
    "official_split",    # train | val | test where the dataset publishes a split, else empty
    "label_index",       # COVID-CT-MD: row of the subject in Index.csv / the slice- and lobe-label arrays
]
SUBJECT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # the workflow's `subject` wildcard
SEVERITY_OF_MORBIDITY = {"control": 0, "suspected": 0, "mild": 1, "regular": 1, "severe": 2, "critically_ill": 2}


def input_error(dataset: str, reason: str, path: str | Path | None, hint: str | None = None,
                subject: str | None = None) -> PipelineInputError:
    return PipelineInputError(STAGE, f"{dataset}: {reason}", subject, path,
                              hint or f"check the {dataset} download (see docs/datasets.md for its expected layout)")


def safe_id(text: str) -> str:
    """An id usable as a Snakemake wildcard and a folder name; odd characters are replaced and,
    so that two names never collide, such ids get a short hash of the original."""
    clean = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-_") or "x"
    if clean != text:
        clean += "-" + hashlib.sha1(text.encode()).hexdigest()[:6]
    return clean


def row(**values) -> dict:
    base = {column: None for column in INDEX_COLUMNS + EXTRA_COLUMNS}
    unknown = set(values) - set(base)
    if unknown:
        raise KeyError(f"not an index column: {sorted(unknown)}")
    base.update(values)
    return base


def finish(dataset: str, rows: list[dict], raw_dir: Path) -> pd.DataFrame:
    """The index table: INDEX_COLUMNS then EXTRA_COLUMNS, integer labels as nullable ints, ids checked."""
    if not rows:
        raise input_error(dataset, "no scans found", raw_dir)
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS + EXTRA_COLUMNS)
    index["dataset"] = dataset
    bad = [s for s in index.subject_id if not SUBJECT_ID_PATTERN.fullmatch(str(s))]
    if bad:
        raise input_error(dataset, f"subject id(s) not usable as file names: {bad[:3]}", raw_dir)
    duplicated = index.subject_id[index.subject_id.duplicated()].tolist()
    if duplicated:
        raise input_error(dataset, f"the same subject id was derived twice: {sorted(set(duplicated))[:5]}", raw_dir,
                          "two files of the dataset map onto one id; remove the duplicate copy")
    for column in ("ct", "nat", "severity", "label_index"):
        index[column] = pd.array(index[column], dtype="Int64")
    for column in ("age",):
        index[column] = pd.to_numeric(index[column])
    return index.sort_values("subject_id").reset_index(drop=True)


def combine_indexes(indexes: list[pd.DataFrame]) -> pd.DataFrame:
    """Several datasets in one table (an integrated database, as MGA builds one): ids must stay distinct."""
    combined = pd.concat(indexes, ignore_index=True)
    duplicated = combined.subject_id[combined.subject_id.duplicated()]
    if not duplicated.empty:
        raise ValueError(f"subject ids collide across datasets: {sorted(set(duplicated))[:5]}")
    owners = combined.groupby("patient_id").dataset.nunique()
    shared = owners[owners > 1].index.tolist()
    if shared:
        raise ValueError(f"patient ids shared by several datasets: {shared[:5]}")
    return combined


def find_dir(raw_dir: Path, names: list[str], max_depth: int = 3, accept=None) -> Path | None:
    """First folder (breadth-first, names compared case-insensitively) called one of ``names``
    for which ``accept(folder)`` is true (e.g. "holds NIfTI files").

    Archives differ in whether they wrap their content in a top folder of the same name, so
    look a few levels down.
    """
    wanted = {n.lower() for n in names}
    level = [raw_dir]
    for _ in range(max_depth + 1):
        for folder in level:
            if folder.name.lower() in wanted and folder != raw_dir and (accept is None or accept(folder)):
                return folder
        level = sorted(child for folder in level for child in _subdirs(folder))
    return None


def find_file(raw_dir: Path, names: list[str], max_depth: int = 3) -> Path | None:
    wanted = {n.lower() for n in names}
    level = [raw_dir]
    for _ in range(max_depth + 1):
        for folder in level:
            for child in sorted(folder.iterdir()):
                if child.is_file() and child.name.lower() in wanted:
                    return child
        level = sorted(child for folder in level for child in _subdirs(folder))
    return None


def has_nifti(folder: Path) -> bool:
    return bool(nifti_files(folder))


def has_images(folder: Path) -> bool:
    return bool(image_files(folder))


def _subdirs(folder: Path) -> list[Path]:
    return [c for c in folder.iterdir() if c.is_dir() and not c.name.startswith(".") and c.name != "derived"]


def nifti_stem(path: Path) -> str | None:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def nifti_files(folder: Path) -> dict[str, Path]:
    """stem -> path of the NIfTI files in ``folder`` (hidden files such as macOS '._x' skipped)."""
    return {nifti_stem(p): p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and nifti_stem(p)}


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def require_raw_dir(dataset: str, raw_dir: Path) -> Path:
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise input_error(dataset, "raw data folder does not exist", raw_dir,
                          f"run `covidmtl download --dataset {dataset} ...` first, or fix the path")
    return raw_dir
