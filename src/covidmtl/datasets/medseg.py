"""MedSeg COVID-19 CT segmentation datasets (medicalsegmentation.com/covid19; figshare 13521488, 13521509).

Layout (file names as published; each archive extracted into this folder)::

    tr_im.nii.gz, tr_mask.nii.gz     Dataset 1: 100 axial 2D slices (512 x 512 x 100 stack) of > 40 patients
                                     (Italian Society of Medical and Interventional Radiology), masks
                                     1 ground glass, 2 consolidation, 3 pleural effusion
    val_im.nii.gz                    Dataset 1: 10 test slices without published masks
    tr_lungmasks_updated.nii.gz      Dataset 1 lung masks (optional; distributed separately)
    rp_im/1.nii.gz ... 9.nii.gz      Dataset 2: 9 axial volumes (Radiopaedia)
    rp_msk/1.nii.gz ...              Dataset 2 masks, same labels
    rp_lung_msk/1.nii.gz ...         Dataset 2 lung masks

As Amyar et al. do, the lesion labels are merged into one lesion label: the adapter writes a
binary mask (``MERGED_LESION_LABELS`` -> 1) under ``<raw>/derived/`` next to the originals.
Dataset 1 slices are 2D (``image_format='image2d'``): each is written as a 2D NIfTI slice in
the intensities of the stack (with its merged lesion and lung mask) under ``<raw>/derived/slices``.
The slices' patients are not published, so each slice is its own patient id (patient-disjoint
splits cannot be guaranteed for Dataset 1; docs/datasets.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from covidmtl.datasets.layout import (IMAGE2D, find_dir, find_file, finish, has_nifti, input_error, nifti_files,
                                      require_raw_dir, row)

log = logging.getLogger(__name__)

DATASET = "medseg"
PREFIX = "medseg"
# label values merged into the binary lesion mask: 1 ground glass, 2 consolidation, 3 pleural effusion
MERGED_LESION_LABELS = (1, 2, 3)
DERIVED = "derived"


def _up_to_date(target: Path, *sources: Path) -> bool:
    return target.exists() and all(target.stat().st_mtime >= s.stat().st_mtime for s in sources)


def _write(image: sitk.Image, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(".tmp-" + target.name)
    sitk.WriteImage(image, str(tmp), useCompression=True)
    os.replace(tmp, target)


def merged_lesion(mask: sitk.Image) -> sitk.Image:
    """One binary lesion label from MedSeg's multi-label mask (values outside MERGED_LESION_LABELS -> 0)."""
    array = sitk.GetArrayViewFromImage(mask)
    merged = sitk.GetImageFromArray(np.isin(array, MERGED_LESION_LABELS).astype(np.uint8))
    merged.CopyInformation(mask)
    return merged


def _read(path: Path) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError:
        raise input_error(DATASET, f"cannot read {path.name} (truncated or corrupt)", path,
                          "re-download the file") from None


def _check_writable(raw_dir: Path) -> Path:
    derived = raw_dir / DERIVED
    try:
        derived.mkdir(exist_ok=True)
    except OSError:
        raise input_error(DATASET, f"cannot write the merged lesion masks into {derived}", raw_dir,
                          "the raw folder must be writable (use `covidmtl download` with a mirror: it links the "
                          "read-only files and keeps the folder itself writable)") from None
    return derived


def _slices_rows(raw_dir: Path, derived: Path) -> list[dict]:
    """Dataset 1: the 2D slice stacks, one row per slice."""
    rows = []
    train = find_file(raw_dir, ["tr_im.nii.gz", "tr_im.nii"])
    test = find_file(raw_dir, ["val_im.nii.gz", "val_im.nii"])
    if train is None and test is None:
        return rows
    stacks = []
    if train is not None:
        mask_path = find_file(raw_dir, ["tr_mask.nii.gz", "tr_mask.nii"])
        if mask_path is None:
            raise input_error(DATASET, "tr_im.nii.gz is present but tr_mask.nii.gz is missing", train.parent,
                              "download tr_mask.nii.gz (MedSeg Covid Dataset 1)")
        lung_path = find_file(raw_dir, ["tr_lungmasks_updated.nii.gz", "tr_lungmasks_updated.nii"])
        stacks.append(("tr", "train", train, mask_path, lung_path))
    if test is not None:
        stacks.append(("val", "test", test, None, None))
    out = derived / "slices"
    for tag, split, image_path, mask_path, lung_path in stacks:
        image = _read(image_path)
        mask = _read(mask_path) if mask_path else None
        lung = _read(lung_path) if lung_path else None
        for other, path in ((mask, mask_path), (lung, lung_path)):
            if other is not None and other.GetSize() != image.GetSize():
                raise input_error(DATASET, f"{path.name} has size {other.GetSize()}, {image_path.name} {image.GetSize()}",
                                  path, "the mask must cover the same slices as the image stack")
        sources = [p for p in (image_path, mask_path, lung_path) if p]
        for k in range(image.GetSize()[2]):
            name = f"{tag}_{k:03d}"
            targets = {"image": out / f"{name}.nii.gz",
                       "lesion": out / f"{name}_lesion.nii.gz" if mask else None,
                       "lung": out / f"{name}_lung.nii.gz" if lung else None}
            if not all(_up_to_date(t, *sources) for t in targets.values() if t):
                _write(image[:, :, k], targets["image"])
                if mask is not None:
                    _write(merged_lesion(mask[:, :, k]), targets["lesion"])
                if lung is not None:
                    _write(sitk.Cast(sitk.NotEqual(lung[:, :, k], 0), sitk.sitkUInt8), targets["lung"])
            subject = f"{PREFIX}-{name}"
            rows.append(row(subject_id=subject, patient_id=subject, hospital="SIRM (Italy)", diagnosis3="covid19", ct=1,
                            image_format=IMAGE2D, image_path=str(targets["image"]),
                            lung_mask_path=str(targets["lung"] or ""), lesion_mask_path=str(targets["lesion"] or ""),
                            source_dir=str(image_path.parent), source_label="COVID-19", official_split=split))
    return rows


def _volume_rows(raw_dir: Path, derived: Path) -> list[dict]:
    """Dataset 2: nine volumes with multi-label lesion masks and lung masks."""
    images_dir = find_dir(raw_dir, ["rp_im"], accept=has_nifti)
    if images_dir is None:
        return []
    masks_dir = find_dir(raw_dir, ["rp_msk"], accept=has_nifti)
    lungs_dir = find_dir(raw_dir, ["rp_lung_msk"], accept=has_nifti)
    if masks_dir is None:
        raise input_error(DATASET, "rp_im/ is present but rp_msk/ (the lesion masks) is missing", raw_dir,
                          "download and extract rp_msk.zip (MedSeg Covid Dataset 2)")
    masks = nifti_files(masks_dir)
    lungs = nifti_files(lungs_dir) if lungs_dir else {}
    rows = []
    for stem, path in nifti_files(images_dir).items():
        if stem not in masks:
            raise input_error(DATASET, f"no lesion mask rp_msk/{stem}.nii.gz for rp_im/{path.name}", masks_dir,
                              "re-extract rp_msk.zip")
        merged = derived / "lesion_binary" / f"rp_{stem}.nii.gz"
        if not _up_to_date(merged, masks[stem]):
            _write(merged_lesion(_read(masks[stem])), merged)
        subject = f"{PREFIX}-rp_{stem}"
        rows.append(row(subject_id=subject, patient_id=subject, hospital="radiopaedia.org", diagnosis3="covid19", ct=1,
                        image_format="nifti", image_path=str(path),
                        lung_mask_path=str(lungs[stem]) if stem in lungs else "", lesion_mask_path=str(merged),
                        source_dir=str(images_dir), source_label="COVID-19"))
    return rows


def build_index(raw_dir: Path) -> pd.DataFrame:
    raw_dir = require_raw_dir(DATASET, raw_dir)
    has_any = find_file(raw_dir, ["tr_im.nii.gz", "tr_im.nii", "val_im.nii.gz", "val_im.nii"]) or find_dir(raw_dir, ["rp_im"], accept=has_nifti)
    if not has_any:
        raise input_error(DATASET, "neither Dataset 1 (tr_im.nii.gz) nor Dataset 2 (rp_im/) found", raw_dir,
                          "download the MedSeg archives and extract them here (see docs/datasets.md)")
    derived = _check_writable(raw_dir)
    rows = _slices_rows(raw_dir, derived) + _volume_rows(raw_dir, derived)
    index = finish(DATASET, rows, raw_dir)
    log.info("%s: %d 2D slices and %d volumes; lesion labels %s merged into one binary mask under %s", DATASET,
             int((index.image_format == IMAGE2D).sum()), int((index.image_format == "nifti").sum()),
             MERGED_LESION_LABELS, derived)
    return index
