"""``covidmtl twod-index``: the 2D models' slice index, from the 2D datasets and the volume slices.

    covidmtl twod-index --index resources/raw/ucsd_covid_ct/index.csv resources/raw/medseg/index.csv \
        --volume-slices results/twod/volume_slices/index.csv --params '<json of config "twod">' \
        --out-dir results/twod/slices

The dataset adapters (:mod:`covidmtl.datasets`) index 2D data with ``image_format``
``image2d`` (one image: PNG/JPEG, or MedSeg's 2D NIfTI slices in HU) or ``slices2d`` (a
folder of slice images of one scan: CC-CCII, iCTCF). This command turns those rows into
slices of the same form as ``covidmtl twod-slices`` writes for the curated volumes, and
merges both into the one index that every 2D training run reads:

- a ``slices2d`` folder is expanded into its images (natural order: 2.png before 10.png);
  ``twod.slices.per_subject`` > 0 keeps that many, evenly spaced, as for the volumes (the
  images carry no HU, so there is no lung-fraction filter);
- PNG/JPEG are read with PIL and converted to 8-bit grayscale (already windowed by their
  publishers); NIfTI slices are read with SimpleITK, in their stored orientation, and put
  through the lung window of ``twod.slices`` (``window_level_hu``, ``window_width_hu``);
- every slice is padded to a square and resized to ``twod.slices.image_size``, written as
  ``images/<subject>/<slice_id>.png``; a lesion mask (NIfTI or image, nonzero = lesion, of
  the image's size) as 0/255 ``masks/<subject>/<slice_id>.png``;
- labels: ``diagnosis3`` (covid19 -> COVID-19, normal, cap); without it the binary label
  comes from ``nat``, else ``ct`` (UCSD COVID-CT's non-COVID class mixes normal and other
  disease: binary only; the 3-class variants leave such slices out). Rows without any label
  are skipped.

Bad input never loses the rest: an unreadable image, a mask whose size differs from its
image or a folder without images is logged with the subject, the file and this stage, and
recorded in ``qc.csv`` (dataset, subject_id, file, status ok | skipped | error, n_slices,
reason); only when no slice at all is left does the command fail.

``index.csv`` has the columns of the slice index (:mod:`covidmtl.twod.data`), with paths
relative to ``--out-dir`` (the volume slices stay where twod-slices wrote them), plus
``diagnosis3``, ``source_file`` and ``official_split``. The split is computed here over all
datasets together, patient-aware and stratified by class (binary-only patients form their
own strata), with ``twod.split.fractions`` and the seed: the datasets' official splits are
kept in ``official_split`` for reference but not used, since one dataset's official split
cannot stratify the union. With volume slices only, the split equals twod-slices' own.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from PIL import Image

from covidmtl.datasets.layout import IMAGE_SUFFIXES, IMAGE2D, SLICES2D, nifti_stem
from covidmtl.errors import PipelineInputError
from covidmtl.stageplan import read_indexes
from covidmtl.twod.config import TwoDConfig, add_config_arguments, config_from_args
from covidmtl.twod.data import INDEX_COLUMNS, labels_from_text, patient_split, resize_image, resize_mask, to_gray_float
from covidmtl.twod.slices import HU_AIR, window

log = logging.getLogger(__name__)

STAGE = "twod-index"
TWOD_FORMATS = (IMAGE2D, SLICES2D)
EXTRA_COLUMNS = ["diagnosis3", "source_file", "official_split"]
QC_COLUMNS = ["dataset", "subject_id", "file", "status", "n_slices", "reason"]


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _is_nifti(path: Path) -> bool:
    return nifti_stem(path) is not None


def row_labels(row: dict) -> tuple[int, int | None] | None:
    """(binary, 3-class or None) of an index row: diagnosis3, else NAT, else CT; None if unlabelled."""
    diagnosis = str(row.get("diagnosis3") or "").strip()
    if diagnosis:
        return labels_from_text(diagnosis)
    for column in ("nat", "ct"):
        value = str(row.get(column) or "").strip().removesuffix(".0")
        if value in {"0", "1"}:
            binary = int(value)
            return binary, (1 if binary else None)  # COVID-19 is class 1 in both tasks
    return None


def row_files(row: dict, per_subject: int) -> list[Path]:
    """The image files of a 2D index row (a slices2d folder expanded, evenly subsampled)."""
    path = Path(row["image_path"])
    subject = str(row["subject_id"])
    if row["image_format"] == IMAGE2D:
        return [path]
    if not path.is_dir():
        raise PipelineInputError(STAGE, "the slice folder does not exist", subject=subject, path=path,
                                 hint="rerun the dataset's download and dataset-index")
    files = sorted((p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                    and (p.suffix.lower() in IMAGE_SUFFIXES or _is_nifti(p))), key=_natural_key)
    if not files:
        raise PipelineInputError(STAGE, "the slice folder holds no images", subject=subject, path=path,
                                 hint="re-extract the scan's archive, or exclude the subject (exclude_subjects)")
    if per_subject and len(files) > per_subject:
        picks = np.unique(np.round(np.linspace(0, len(files) - 1, per_subject)).astype(int))
        files = [files[i] for i in picks]
    return files


def read_image(path: Path, subject: str, level: float, width: float) -> tuple[np.ndarray, float]:
    """(float32 (H, W) in [0, 1], value of air after the conversion) of a 2D image file."""
    if not path.is_file():
        raise PipelineInputError(STAGE, "the image file does not exist", subject=subject, path=path,
                                 hint="rerun the dataset's download and dataset-index")
    if _is_nifti(path):
        array = _read_nifti(path, "image", subject)
        return window(array, level, width), float(window(np.array([HU_AIR]), level, width)[0])
    try:
        with Image.open(path) as im:
            return to_gray_float(im), 0.0
    except Exception as err:  # noqa: BLE001 - any decoder failure is a bad file
        raise PipelineInputError(STAGE, f"cannot read the image ({err})", subject=subject, path=path,
                                 hint="replace the file (re-download) or exclude the subject") from None


def read_mask(path: Path, subject: str, shape: tuple[int, int], image_path: Path) -> np.ndarray:
    """Boolean (H, W) lesion mask of the image's size."""
    if not path.is_file():
        raise PipelineInputError(STAGE, "the lesion mask file does not exist", subject=subject, path=path,
                                 hint="rerun the dataset's dataset-index (it writes the merged masks)")
    if _is_nifti(path):
        mask = _read_nifti(path, "lesion mask", subject) > 0
    else:
        try:
            with Image.open(path) as im:
                m = np.asarray(im.convert("L"))
        except Exception as err:  # noqa: BLE001
            raise PipelineInputError(STAGE, f"cannot read the lesion mask ({err})", subject=subject, path=path,
                                     hint="replace the file or clear the subject's lesion_mask_path") from None
        mask = m > (127 if m.max(initial=0) > 1 else 0)
    if mask.shape != shape:
        raise PipelineInputError(STAGE, f"the lesion mask is {mask.shape[1]}x{mask.shape[0]} pixels but its image "
                                        f"{image_path} is {shape[1]}x{shape[0]}", subject=subject, path=path,
                                 hint="give a mask of the image's size, or clear the subject's lesion_mask_path")
    return mask


def _read_nifti(path: Path, what: str, subject: str) -> np.ndarray:
    try:
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as err:
        raise PipelineInputError(STAGE, f"cannot read the {what} ({str(err).strip().splitlines()[-1]})",
                                 subject=subject, path=path, hint="replace the file (re-download)") from None
    array = np.squeeze(array)
    if array.ndim != 2:
        raise PipelineInputError(STAGE, f"the {what} is not a 2D slice (shape {array.shape})", subject=subject,
                                 path=path, hint="index volumes as image_format nifti (curation), not image2d")
    return array.astype(np.float32)


def subject_slices(row: dict, cfg: TwoDConfig, out_dir: Path, qc: list[dict]) -> list[dict]:
    """Convert one 2D index row; returns its slice rows (paths relative to ``out_dir``).
    A bad file is logged and recorded in ``qc``; the subject's other files are still used."""
    subject, dataset = str(row["subject_id"]), str(row.get("dataset") or "")
    record = {"dataset": dataset, "subject_id": subject, "file": row["image_path"]}
    labels = row_labels(row)
    if labels is None:
        reason = f"no label (diagnosis3 {row.get('diagnosis3')!r}, nat and ct empty or unknown)"
        log.warning("[stage=%s subject=%s] %s; skipped", STAGE, subject, reason)
        qc.append({**record, "status": "skipped", "n_slices": 0, "reason": reason})
        return []
    s = cfg.slices
    try:
        files = row_files(row, s.per_subject)
    except PipelineInputError as err:
        log.error("%s", err)
        qc.append({**record, "status": "error", "n_slices": 0, "reason": err.reason})
        return []
    mask_path = Path(row["lesion_mask_path"]) if row.get("lesion_mask_path") else None
    if mask_path is not None and row["image_format"] != IMAGE2D:
        log.warning("[stage=%s subject=%s] a lesion mask for a slice folder is not supported; ignored", STAGE, subject)
        mask_path = None
    rows = []
    for k, path in enumerate(files):
        slice_id = subject if row["image_format"] == IMAGE2D else f"{subject}_s{k:04d}"
        try:
            image, pad_value = read_image(path, subject, s.window_level_hu, s.window_width_hu)
            mask = read_mask(mask_path, subject, image.shape, path) if mask_path is not None else None
        except PipelineInputError as err:
            log.error("%s", err)
            qc.append({**record, "file": str(err.path or path), "status": "error", "n_slices": 0, "reason": err.reason})
            continue
        image_rel = Path("images") / subject / f"{slice_id}.png"
        (out_dir / image_rel).parent.mkdir(parents=True, exist_ok=True)
        small = resize_image(image, s.image_size, pad_value)
        Image.fromarray(np.round(np.clip(small, 0, 1) * 255).astype(np.uint8), mode="L").save(out_dir / image_rel)
        mask_rel, lesion_fraction = "", np.nan
        if mask is not None:
            mask_rel = str(Path("masks") / subject / f"{slice_id}.png")
            (out_dir / mask_rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(resize_mask(mask, s.image_size).astype(np.uint8) * 255, mode="L").save(out_dir / mask_rel)
            lesion_fraction = float(mask.mean())
        rows.append({"slice_id": slice_id, "subject_id": subject, "patient_id": str(row["patient_id"]),
                     "dataset": dataset, "label_binary": labels[0], "label_3class": labels[1],
                     "has_mask": bool(mask_rel), "split": "", "path": str(image_rel), "mask_path": mask_rel,
                     "diagnosis3": str(row.get("diagnosis3") or ""), "source_file": str(path),
                     "official_split": str(row.get("official_split") or ""), "slice_z": k,
                     "lesion_fraction": lesion_fraction})
    if rows:
        qc.append({**record, "status": "ok", "n_slices": len(rows), "reason": ""})
    return rows


def convert(index: pd.DataFrame, cfg: TwoDConfig, out_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Slices of the 2D rows of a dataset index (other rows are ignored) and the QC table."""
    rows: list[dict] = []
    qc: list[dict] = []
    records = index[index["image_format"].isin(TWOD_FORMATS)].to_dict("records") if len(index) else []
    for record in records:
        rows.extend(subject_slices(record, cfg, out_dir, qc))
    slices = pd.DataFrame(rows, columns=INDEX_COLUMNS + EXTRA_COLUMNS + ["slice_z", "lesion_fraction"])
    qc_table = pd.DataFrame(qc, columns=QC_COLUMNS)
    if records:
        counts = qc_table["status"].value_counts().to_dict()
        log.info("%d 2D subject(s) of %s: %d slices; %s", len(records), sorted({r["dataset"] for r in records}),
                 len(slices), counts)
    return slices, qc_table


def volume_slices(index_csv: Path, out_dir: Path) -> pd.DataFrame:
    """twod-slices' index with its paths made relative to ``out_dir``."""
    if not index_csv.is_file():
        raise PipelineInputError(STAGE, "the volume slice index does not exist", path=index_csv,
                                 hint="run `covidmtl twod-slices` first")
    df = pd.read_csv(index_csv, dtype={"slice_id": str, "subject_id": str, "patient_id": str, "dataset": str,
                                       "path": str, "mask_path": str}, keep_default_na=False,
                     na_values={"label_3class": [""], "lesion_fraction": [""]})
    root = index_csv.parent
    for column in ("path", "mask_path"):
        df[column] = [os.path.relpath(root / p, out_dir) if p else "" for p in df[column]]
    return df


def merge(parts: list[pd.DataFrame], fractions, seed: int) -> pd.DataFrame:
    """One slice index: ids checked, split computed over all patients (module docstring)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        raise PipelineInputError(STAGE, "no slice was found: neither 2D dataset rows nor volume slices",
                                 hint="select a dataset with 2D images or CT volumes (see qc.csv and the log)")
    df = pd.concat(parts, ignore_index=True)
    duplicated = df.loc[df["slice_id"].duplicated(), "slice_id"].tolist()
    if duplicated:
        raise PipelineInputError(STAGE, f"slice ids occur twice: {duplicated[:5]}",
                                 hint="the datasets' subject ids must be distinct (adapters prefix them)")
    owners = df.groupby("patient_id")["dataset"].nunique()
    shared = owners.index[owners > 1].tolist()
    if shared:
        raise PipelineInputError(STAGE, f"patient ids shared by several datasets: {shared[:5]}", subject=shared[0],
                                 hint="the datasets' patient ids must be distinct (adapters prefix them)")
    three = pd.to_numeric(df["label_3class"], errors="coerce")
    binary = pd.to_numeric(df["label_binary"]).astype(int)
    # binary-only patients are their own strata, so that the 3-class ones stay stratified
    stratum = three.where(three.notna(), 3 + binary).astype(int)
    df["split"] = patient_split(df.assign(stratum=stratum), fractions, seed, label_column="stratum").to_numpy()
    df["label_3class"] = three.astype("Int64")
    df["label_binary"] = binary
    return df[INDEX_COLUMNS + [c for c in df.columns if c not in INDEX_COLUMNS]]


def build(indexes: list[Path], cfg: TwoDConfig, out_dir: Path, volume_index: Path | None = None,
          exclude: list[str] | None = None) -> pd.DataFrame:
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset_rows = read_indexes(indexes, exclude) if indexes else pd.DataFrame(columns=["image_format"])
    slices2d, qc = convert(dataset_rows, cfg, out_dir)
    qc.to_csv(out_dir / "qc.csv", index=False)
    parts = [slices2d] + ([volume_slices(volume_index, out_dir)] if volume_index is not None else [])
    index = merge(parts, cfg.split.fractions, cfg.seed)
    index.to_csv(out_dir / "index.csv", index=False)
    summary = index.groupby(["split", "dataset"])["patient_id"].nunique().unstack(fill_value=0)
    log.info("%d slices (%d from 2D datasets, %d from volumes); patients per split and dataset:\n%s", len(index),
             len(slices2d), len(index) - len(slices2d), summary.to_string())
    if (qc["status"] == "error").any():
        log.warning("%d file(s) or folder(s) could not be used; see %s", int((qc["status"] == "error").sum()),
                    out_dir / "qc.csv")
    return index


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="covidmtl twod-index", description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", type=Path, nargs="*", default=[], help="dataset index tables (dataset-index); "
                                                                      "their image2d/slices2d rows are used")
    ap.add_argument("--exclude-subjects", nargs="*", default=[], help="subject ids to leave out")
    ap.add_argument("--volume-slices", type=Path, default=None, help="index.csv of twod-slices (curated volumes)")
    add_config_arguments(ap)
    ap.add_argument("--out-dir", type=Path, required=True)
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    for path in args.index:
        if not path.is_file():
            raise PipelineInputError(STAGE, "the dataset index does not exist", path=path,
                                     hint="run `covidmtl dataset-index` first")
    build(args.index, cfg, args.out_dir, args.volume_slices, args.exclude_subjects)
    return 0
