"""Curation: raw scan -> one canonical grid (orientation, spacing), HU kept, masks aligned.

Writes per subject ``ct.nii.gz`` (int16 HU), ``masks/lung.nii.gz`` and
``masks/lesion.nii.gz`` where the dataset has them, and ``meta.json`` (labels,
geometry before/after, non-identifying acquisition facts) that the manifest collects.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from covidmtl.config import parse_params
from covidmtl.datasets import LABEL_COLUMNS
from covidmtl.errors import PipelineInputError
from covidmtl.imageio import STAGE, check_ct_intensities, read_nifti, read_scan

log = logging.getLogger(__name__)

HU_AIR, HU_MAX = -1024, 3071
INTERPOLATORS = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline, "nearest": sitk.sitkNearestNeighbor}


def reorient(image: sitk.Image, orientation: str) -> sitk.Image:
    return sitk.DICOMOrient(image, orientation)


def orientation_code(image: sitk.Image) -> str:
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def resample_ct(image: sitk.Image, spacing: tuple[float, float, float], interpolator: str = "linear",
                antialias: bool = True) -> sitk.Image:
    """Resample CT to ``spacing`` keeping HU; Gaussian anti-aliasing along axes that get coarser."""
    old_spacing = np.array(image.GetSpacing())
    new_spacing = np.array(spacing, dtype=float)
    size = [max(1, int(round(n * o / s))) for n, o, s in zip(image.GetSize(), old_spacing, new_spacing)]
    work = sitk.Cast(image, sitk.sitkFloat32)
    if antialias and np.any(new_spacing > old_spacing * 1.01):
        # sigma so the new grid's Nyquist limit is respected (FWHM ~ target spacing)
        sigma = np.sqrt(np.clip(new_spacing**2 - old_spacing**2, 0, None)) / 2.355
        sigma = np.where(sigma > 0, sigma, 1e-6)
        work = sitk.SmoothingRecursiveGaussian(work, sigma.tolist())
    out = sitk.Resample(work, size, sitk.Transform(), INTERPOLATORS[interpolator], image.GetOrigin(),
                        new_spacing.tolist(), image.GetDirection(), float(HU_AIR), sitk.sitkFloat32)
    out = sitk.Clamp(sitk.Round(out), sitk.sitkFloat32, HU_AIR, HU_MAX)
    return sitk.Cast(out, sitk.sitkInt16)


def resample_mask_like(mask: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Nearest-neighbour resampling of a label mask onto the curated CT grid (physical space)."""
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    return sitk.Resample(binary, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def same_physical_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """True when two images cover the same voxels (size, spacing, origin, direction up to half a voxel)."""
    if a.GetSize() != b.GetSize():
        return False
    spacing = np.array(a.GetSpacing())
    if not np.allclose(spacing, b.GetSpacing(), rtol=1e-3):
        return False
    if not np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-3):
        return False
    return bool(np.all(np.abs(np.array(a.GetOrigin()) - b.GetOrigin()) <= 0.5 * spacing.min()))


def curate_subject(row: dict, params: dict, out_dir: Path) -> dict:
    """Curate one index row into ``out_dir``; returns the metadata written to meta.json."""
    subject = row["subject_id"]
    raw = read_scan(row["image_path"], row["image_format"], subject,
                    **({"min_slices": params["min_slices"], "slice_gap_tolerance": params["slice_gap_tolerance"]}
                       if row["image_format"] == "dicom" else {}))
    image = raw.image
    if image.GetSize()[2] < params["min_slices"]:
        raise PipelineInputError(STAGE, f"only {image.GetSize()[2]} slices (a chest CT needs at least {params['min_slices']})",
                                 subject, row["image_path"], "check that the whole volume was exported")
    spacing = image.GetSpacing()
    if min(spacing) <= 0 or max(spacing) > 20:
        raise PipelineInputError(STAGE, f"implausible voxel spacing {tuple(round(s, 3) for s in spacing)} mm",
                                 subject, row["image_path"], "fix the header or exclude the subject")
    hu_stats = check_ct_intensities(image, subject, row["image_path"], tuple(params["hu_range"]))

    original = {
        "original_spacing": [round(s, 4) for s in image.GetSpacing()],
        "original_size": list(image.GetSize()),
        "original_orientation": orientation_code(image),
    }
    oriented = reorient(image, params["orientation"])
    curated = resample_ct(oriented, tuple(params["spacing_mm"]), params["interpolator"])

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(exist_ok=True)
    sitk.WriteImage(curated, str(out_dir / "ct.nii.gz"), useCompression=True)

    has_mask = {}
    for kind in ("lung", "lesion"):
        mask_path = row.get(f"{kind}_mask_path")
        has_mask[kind] = isinstance(mask_path, str) and bool(mask_path)
        if not has_mask[kind]:
            continue
        mask = read_nifti(mask_path, subject).image
        if not same_physical_grid(mask, image):
            raise PipelineInputError(
                STAGE, f"the {kind} mask does not share the image's grid (mask size {mask.GetSize()}, "
                f"image size {image.GetSize()})", subject, mask_path,
                f"the {kind} mask must be on the same voxels as {row['image_path']}")
        sitk.WriteImage(resample_mask_like(mask, curated), str(out_dir / "masks" / f"{kind}.nii.gz"), useCompression=True)

    facts = {k: v for k, v in raw.facts.items() if k not in {"age", "sex"}}
    age = raw.facts.get("age") if raw.facts.get("age") is not None else row.get("age")
    sex = raw.facts.get("sex") or row.get("sex")
    meta = {
        "subject_id": subject,
        "patient_id": row["patient_id"],
        "dataset": row["dataset"],
        "hospital": row.get("hospital"),
        "age": None if age is None or (isinstance(age, float) and math.isnan(age)) else float(age),
        "sex": sex if isinstance(sex, str) and sex else None,
        **{label: _clean(row.get(label)) for label in LABEL_COLUMNS},
        "source_format": raw.source_format,
        **original,
        "spacing": [round(s, 4) for s in curated.GetSpacing()],
        "size": list(curated.GetSize()),
        "orientation": orientation_code(curated),
        **hu_stats,
        "has_lung_mask": has_mask["lung"],
        "has_lesion_mask": has_mask["lesion"],
        "acquisition": facts,
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return meta


def _clean(value):
    """NaN/empty -> None, numpy scalars -> Python, numeric labels -> int."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def index_row(index_path: Path, subject: str) -> dict:
    index = pd.read_csv(index_path, dtype={"subject_id": str, "patient_id": str})
    rows = index[index.subject_id == subject]
    if rows.empty:
        raise PipelineInputError(STAGE, "subject is not in the dataset index", subject, index_path,
                                 "regenerate the index or remove the subject from the request")
    row = rows.iloc[0].to_dict()
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="covidmtl curate", description="Curate one subject to the canonical grid.")
    parser.add_argument("--subject", required=True)
    parser.add_argument("--index", required=True, type=Path, help="the dataset's index.csv")
    parser.add_argument("--params", required=True, help="JSON of the `curation` config section")
    parser.add_argument("--out-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    meta = curate_subject(index_row(args.index, args.subject), parse_params(args.params), args.out_dir)
    log.info("curated %s: %s -> %s voxels at %s mm", args.subject, meta["original_size"], meta["size"], meta["spacing"])
    return 0
