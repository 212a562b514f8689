"""High-throughput lung features with PyRadiomics (COVID-MTL section 4.2, Table 5).

One job per subject: read the segmented lung volume (HU) and its lung mask, check them,
run PyRadiomics as configured by ``config/radiomics.yaml`` and write one row
(``subject_id``, the features under their PyRadiomics names, ``qc_*`` diagnostics).

The parameter file is a standard PyRadiomics file plus one covidmtl key,
``featureClassByImageType``, which restricts the feature classes per image type
(COVID-MTL: first-order/GLCM/GLRLM/GLSZM on the original image, GLCM/GLRLM on the
wavelet sub-bands). PyRadiomics applies one set of classes to every image type, so the
extraction runs one PyRadiomics pass per group of image types sharing the same classes.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
import yaml

from covidmtl.errors import PipelineInputError

STAGE = "features"
log = logging.getLogger(__name__)

# Custom key of the parameter file; removed before PyRadiomics validates the rest.
CLASSES_BY_IMAGE_TYPE_KEY = "featureClassByImageType"

# PyRadiomics names: <imageType>_<featureClass>_<feature>, e.g. wavelet-HLL_glcm_ClusterProminence.
FEATURE_NAME_RE = re.compile(
    r"^[A-Za-z0-9.\-]+_(firstorder|glcm|glrlm|glszm|gldm|ngtdm|shape|shape2D)_[A-Za-z0-9]+$"
)

DEFAULT_PARAMS: dict[str, Any] = {
    # The pyradiomics parameter file (the rule also passes it as --params-file, a tracked input).
    "params_file": "config/radiomics.yaml",
    # Masks smaller than this (voxels; 1 mL at 1 mm) mean the lung segmentation failed.
    "min_mask_voxels": 1000,
    # PyRadiomics logs every class at INFO; only its warnings and errors reach the job log.
    "log_level": "WARNING",
    # Merge step: a subject whose share of NaN/infinite features exceeds this is excluded
    # (its scan is unusable); below it, the affected features are excluded instead.
    "max_nonfinite_fraction": 0.05,
}


def is_feature_column(name: str) -> bool:
    """True for a PyRadiomics feature column (not subject_id, labels or qc_* diagnostics)."""
    return bool(FEATURE_NAME_RE.match(str(name)))


def feature_columns(df: pd.DataFrame) -> list[str]:
    """Feature columns of a table, in table order."""
    return [c for c in df.columns if is_feature_column(c)]


@dataclass(frozen=True)
class RadiomicsParams:
    """A parsed parameter file: the PyRadiomics part and the per-image-type classes."""

    pyradiomics: dict[str, Any]
    classes_by_image_type: dict[str, list[str]] | None = None
    path: str | None = None
    sha256: str = field(default="")

    def passes(self) -> list[dict[str, Any]]:
        """PyRadiomics parameter dicts, one per group of image types sharing feature classes."""
        base = copy.deepcopy(self.pyradiomics)
        if not self.classes_by_image_type:
            return [base]
        image_types = base.get("imageType") or {"Original": {}}
        all_classes = base.get("featureClass") or {}
        groups: dict[tuple[str, ...], list[str]] = {}
        for image_type in image_types:
            classes = self.classes_by_image_type.get(image_type)
            if classes is None:
                raise ValueError(
                    f"image type {image_type!r} is enabled in 'imageType' but has no entry in "
                    f"'{CLASSES_BY_IMAGE_TYPE_KEY}'"
                )
            groups.setdefault(tuple(classes), []).append(image_type)
        passes = []
        for classes, types in groups.items():
            p = copy.deepcopy(base)
            p["imageType"] = {t: copy.deepcopy(image_types[t]) for t in types}
            p["featureClass"] = {c: copy.deepcopy(all_classes.get(c)) for c in classes}
            passes.append(p)
        return passes


def load_params(params_file: str | Path) -> RadiomicsParams:
    """Read and check a parameter file (see ``config/radiomics.yaml``)."""
    path = Path(params_file)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise PipelineInputError(
            stage=STAGE, path=path, reason=f"cannot read the PyRadiomics parameter file ({err})",
            hint="point --params-file at a valid YAML file such as config/radiomics.yaml",
        ) from err
    if not isinstance(raw, dict):
        raise PipelineInputError(stage=STAGE, path=path, reason="the parameter file is not a YAML mapping",
                                 hint="see config/radiomics.yaml for the expected layout")
    classes = raw.pop(CLASSES_BY_IMAGE_TYPE_KEY, None)
    if classes is not None:
        unknown = {c for cs in classes.values() for c in cs} - set((raw.get("featureClass") or {}).keys())
        if unknown:
            raise PipelineInputError(
                stage=STAGE, path=path,
                reason=f"{CLASSES_BY_IMAGE_TYPE_KEY} names classes missing from featureClass: {sorted(unknown)}",
                hint="list every class used per image type under featureClass too",
            )
    digest = hashlib.sha256(json.dumps([raw, classes], sort_keys=True, default=str).encode()).hexdigest()
    params = RadiomicsParams(pyradiomics=raw, classes_by_image_type=classes, path=str(path), sha256=digest)
    try:  # let PyRadiomics validate every pass now, so a typo fails before any image is read
        make_extractors(params)
    except Exception as err:  # pykwalify raises its own SchemaError
        raise PipelineInputError(stage=STAGE, path=path, reason=f"PyRadiomics rejects the parameters: {err}",
                                 hint="fix the parameter file (PyRadiomics parameter-file format)") from err
    return params


def quiet_pyradiomics(level: str | int = "WARNING") -> None:
    """Route PyRadiomics messages at ``level`` and above through the normal log, once."""
    import radiomics

    lvl = logging.getLevelName(level) if isinstance(level, str) else int(level)
    # Its own stderr handler would print every warning a second time next to the root handler.
    radiomics.setVerbosity(60)
    logging.getLogger("radiomics").setLevel(lvl)
    logging.getLogger("pykwalify").setLevel(max(lvl, logging.WARNING))


def make_extractors(params: RadiomicsParams) -> list[Any]:
    """One configured ``RadiomicsFeatureExtractor`` per pass."""
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    return [RadiomicsFeatureExtractor(p) for p in params.passes()]


def binarize_mask(mask: sitk.Image) -> sitk.Image:
    """Any non-zero label is lung (the mask may label left/right lungs separately)."""
    return sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)


def _same_geometry(a: sitk.Image, b: sitk.Image) -> str | None:
    if a.GetSize() != b.GetSize():
        return f"image size {a.GetSize()} != mask size {b.GetSize()}"
    if not np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-4, atol=1e-6):
        return f"image spacing {a.GetSpacing()} != mask spacing {b.GetSpacing()}"
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3):
        return f"image origin {a.GetOrigin()} != mask origin {b.GetOrigin()}"
    if not np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4):
        return "image and mask directions differ"
    return None


def check_inputs(
    image: sitk.Image,
    mask: sitk.Image,
    subject: str | None = None,
    image_path: str | Path | None = None,
    mask_path: str | Path | None = None,
    min_mask_voxels: int = DEFAULT_PARAMS["min_mask_voxels"],
) -> tuple[sitk.Image, dict[str, Any]]:
    """Check image and mask; returns the binarised mask and QC diagnostics.

    Raises PipelineInputError for a grid mismatch, an empty or tiny mask, or an image
    that is constant inside the mask (no texture to describe).
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise PipelineInputError(stage=STAGE, subject=subject, path=image_path,
                                 reason="the lung volume is not a 3D scalar image",
                                 hint="rerun the lung segmentation stage for this subject")
    mismatch = _same_geometry(image, mask)
    if mismatch:
        raise PipelineInputError(stage=STAGE, subject=subject, path=mask_path,
                                 reason=f"lung mask is not on the lung volume's grid ({mismatch})",
                                 hint="rerun the lung segmentation stage so that both files come from one run")
    mask = binarize_mask(mask)
    m = sitk.GetArrayViewFromImage(mask).astype(bool)
    n_voxels = int(m.sum())
    if n_voxels < min_mask_voxels:
        what = "empty" if n_voxels == 0 else f"tiny ({n_voxels} voxels < features.min_mask_voxels={min_mask_voxels})"
        raise PipelineInputError(stage=STAGE, subject=subject, path=mask_path, reason=f"lung mask is {what}",
                                 hint="inspect the lung segmentation of this subject (failed segmentation "
                                 "or not a chest CT); fix it or add the subject to exclude_subjects")
    values = sitk.GetArrayViewFromImage(image)[m].astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise PipelineInputError(stage=STAGE, subject=subject, path=image_path,
                                 reason="lung volume has NaN or infinite intensities inside the lung mask",
                                 hint="rerun curation and lung segmentation for this subject")
    vmin, vmax = float(values.min()), float(values.max())
    if vmax <= vmin:
        raise PipelineInputError(stage=STAGE, subject=subject, path=image_path,
                                 reason=f"lung volume is constant ({vmin:g} HU) inside the lung mask; "
                                 "texture features are undefined",
                                 hint="check that the CT was read correctly (rescale slope/intercept) and that "
                                 "the mask lies on the lungs")
    spacing = image.GetSpacing()
    qc = {
        "qc_mask_voxels": n_voxels,
        "qc_lung_volume_ml": n_voxels * float(np.prod(spacing)) / 1000.0,
        "qc_hu_min": vmin,
        "qc_hu_max": vmax,
        "qc_hu_mean": float(values.mean()),
        "qc_spacing_mm": "x".join(f"{s:.3g}" for s in spacing),
        "qc_size": "x".join(str(s) for s in image.GetSize()),
    }
    return mask, qc


def extract_features(image: sitk.Image, mask: sitk.Image, params: RadiomicsParams,
                     extractors: list[Any] | None = None) -> dict[str, float]:
    """Run every PyRadiomics pass on a checked image and binary mask; feature name -> value."""
    label = int(params.pyradiomics.get("setting", {}).get("label", 1))
    if label != 1:
        # binarize_mask() writes label 1; relabel so a parameter file with another label still works
        mask = sitk.Cast(mask * label, sitk.sitkUInt8)
    features: dict[str, float] = {}
    for extractor in extractors or make_extractors(params):
        for name, value in extractor.execute(image, mask).items():
            if name.startswith("diagnostics_"):
                continue
            features[name] = float(np.asarray(value, dtype=np.float64))
    return features


def read_image(path: str | Path, subject: str | None, what: str) -> sitk.Image:
    path = Path(path)
    if not path.is_file():
        raise PipelineInputError(stage=STAGE, subject=subject, path=path, reason=f"{what} file does not exist",
                                 hint="run the lung segmentation stage for this subject first")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise PipelineInputError(stage=STAGE, subject=subject, path=path,
                                 reason=f"cannot read the {what} ({str(err).strip().splitlines()[-1]})",
                                 hint="the file is damaged or not an image; rerun the lung segmentation stage") from err


def extract_subject(
    subject: str,
    image_path: str | Path,
    mask_path: str | Path,
    params_file: str | Path,
    min_mask_voxels: int = DEFAULT_PARAMS["min_mask_voxels"],
    log_level: str = DEFAULT_PARAMS["log_level"],
) -> pd.DataFrame:
    """Features of one subject as a one-row table (subject_id, features, qc_* diagnostics)."""
    import radiomics

    quiet_pyradiomics(log_level)
    params = load_params(params_file)
    image = read_image(image_path, subject, "lung volume")
    mask = read_image(mask_path, subject, "lung mask")
    mask, qc = check_inputs(image, mask, subject, image_path, mask_path, min_mask_voxels)
    t0 = time.perf_counter()
    try:
        features = extract_features(image, mask, params)
    except (ValueError, RuntimeError) as err:  # PyRadiomics signals unusable ROIs with ValueError
        raise PipelineInputError(stage=STAGE, subject=subject, path=mask_path,
                                 reason=f"PyRadiomics failed: {err}",
                                 hint="inspect this subject's lung volume and mask") from err
    nonfinite = sorted(k for k, v in features.items() if not math.isfinite(v))
    if nonfinite:
        # Not fatal: the merge step decides (and lists) what is excluded.
        log.warning("subject %s: %d feature(s) are NaN or infinite: %s", subject, len(nonfinite),
                    ", ".join(nonfinite[:20]) + (" ..." if len(nonfinite) > 20 else ""))
    row: dict[str, Any] = {"subject_id": str(subject)}
    row.update(features)
    row.update(qc)
    row.update({
        "qc_n_features": len(features),
        "qc_nonfinite_features": ";".join(nonfinite),
        "qc_extraction_seconds": time.perf_counter() - t0,
        "qc_params_sha256": params.sha256,
        "qc_pyradiomics_version": str(radiomics.__version__),
    })
    return pd.DataFrame([row])


def write_table_file(df: pd.DataFrame, out: str | Path) -> Path:
    """Write a table as Parquet, CSV or JSON (records) by file suffix."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix == ".parquet":
        df.to_parquet(out, index=False)
    elif suffix == ".csv":
        df.to_csv(out, index=False)
    elif suffix == ".json":
        out.write_text(df.to_json(orient="records", indent=1), encoding="utf-8")
    else:
        raise ValueError(f"unsupported table format {out.suffix!r} (use .parquet, .csv or .json)")
    return out


def read_table_file(path: str | Path) -> pd.DataFrame:
    """Read a table written by :func:`write_table_file`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix == ".csv":
        return pd.read_csv(path, dtype={"subject_id": str})
    if suffix == ".json":
        return pd.read_json(path, orient="records", dtype={"subject_id": str})
    raise ValueError(f"unsupported table format {path.suffix!r} (use .parquet, .csv or .json)")


def parse_params(text: str | None) -> dict[str, Any]:
    """Merge the ``features`` config section (JSON) over the defaults; unknown keys are errors."""
    params = dict(DEFAULT_PARAMS)
    given = json.loads(text) if text else {}
    unknown = set(given) - set(DEFAULT_PARAMS)
    if unknown:
        raise ValueError(f"unknown features parameter(s): {sorted(unknown)}; known: {sorted(DEFAULT_PARAMS)}")
    params.update(given)
    return params


def main(argv: list[str] | None = None) -> int:
    """``covidmtl features-extract``: features of one subject -> one-row table."""
    ap = argparse.ArgumentParser(prog="covidmtl features-extract", description=main.__doc__)
    ap.add_argument("--subject", required=True, help="subject id written into the row")
    ap.add_argument("--image", required=True, help="lung_volume.nii.gz (HU, lungs only)")
    ap.add_argument("--mask", required=True, help="lung_volume_mask.nii.gz (non-zero = lung)")
    ap.add_argument("--params-file", default=None, help="PyRadiomics parameter file (default: features.params_file)")
    ap.add_argument("--params", default=None, help="JSON of the 'features' config section")
    ap.add_argument("--out", required=True, help="output row: .parquet, .csv or .json")
    args = ap.parse_args(argv)
    params = parse_params(args.params)
    row = extract_subject(args.subject, args.image, args.mask, args.params_file or params["params_file"],
                          min_mask_voxels=int(params["min_mask_voxels"]), log_level=params["log_level"])
    write_table_file(row, args.out)
    log.info("subject %s: %d features -> %s", args.subject, int(row["qc_n_features"].iloc[0]), args.out)
    return 0
