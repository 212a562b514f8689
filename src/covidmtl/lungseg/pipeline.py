"""One subject through the lung-segmentation stage: classical mask, refined mask, the
masked cropped lung volume, metrics against ground truth, QC image."""

from __future__ import annotations

import json
import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
import SimpleITK as sitk

from covidmtl.errors import PipelineInputError
from covidmtl.lungseg.classical import STAGE, array_spacing, classical_segmentation_labels, labels_to_image
from covidmtl.lungseg.crop import crop_masked_volume
from covidmtl.lungseg.metrics import check_same_grid, segmentation_metrics
from covidmtl.lungseg.params import LungSegParams
from covidmtl.lungseg.refine import refine_labels

log = logging.getLogger(__name__)

METHODS = ("classical", "refined")
OUTPUT_FILES = {
    "classical": "lung_classical.nii.gz",
    "refined": "lung_refined.nii.gz",
    "volume": "lung_volume.nii.gz",
    "volume_mask": "lung_volume_mask.nii.gz",
    "metrics": "metrics.json",
    "qc": "qc.png",
}


@dataclass
class LungSegResult:
    """Lung labels (1 right, 2 left) of both methods on the CT grid, plus bookkeeping."""

    classical: sitk.Image
    refined: sitk.Image
    info: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


def segment_subject(ct: sitk.Image, params: LungSegParams | None = None, threads: int = 1, subject: str | None = None) -> LungSegResult:
    """Classical segmentation followed by the active-contour refinement (Algorithm 1)."""
    params = params or LungSegParams()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(int(threads), 1))
    start = time.perf_counter()
    classical = classical_segmentation_labels(ct, params.classical, subject)
    t_classical = time.perf_counter() - start
    start = time.perf_counter()
    refined = refine_labels(sitk.GetArrayViewFromImage(ct), classical.labels, array_spacing(ct), params.refine, threads)
    t_refined = time.perf_counter() - start
    return LungSegResult(
        classical=labels_to_image(classical.labels, ct),
        refined=labels_to_image(refined, ct),
        info=classical.info,
        seconds={"classical": t_classical, "refined": t_refined},
    )


def mask_summary(labels: sitk.Image) -> dict:
    """Lung volumes (ml) and the number of 3-D connected components of the binary mask."""
    arr = sitk.GetArrayViewFromImage(labels)
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
    _, n_components = ndi.label(arr > 0)
    return {
        "lung_volume_ml": float(np.count_nonzero(arr) * voxel_ml),
        "right_lung_ml": float(np.count_nonzero(arr == 1) * voxel_ml),
        "left_lung_ml": float(np.count_nonzero(arr == 2) * voxel_ml),
        "n_components": int(n_components),  # of the binary mask; 1 when the lungs touch
        "n_lungs": int(np.count_nonzero([np.any(arr == 1), np.any(arr == 2)])),
    }


def read_image(path: str | Path, subject: str | None, what: str) -> sitk.Image:
    path = Path(path)
    if not path.is_file():
        raise PipelineInputError(stage=STAGE, subject=subject, path=path, reason=f"{what} file does not exist",
                                 hint="run the curation stage for this subject first, or check the path")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise PipelineInputError(stage=STAGE, subject=subject, path=path, reason=f"cannot read {what}: {err}".strip(),
                                 hint="the file is damaged or not an image; rerun curation for this subject") from err


def run_subject(
    subject: str,
    ct_path: str | Path,
    out_dir: str | Path,
    params: LungSegParams | None = None,
    gt_lung_path: str | Path | None = None,
    threads: int = 1,
    write_qc: bool = True,
) -> dict:
    """Segment one curated CT and write every output of the stage into ``out_dir``.

    Returns the content of ``metrics.json``.
    """
    params = params or LungSegParams()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ct = read_image(ct_path, subject, "curated CT")
    if ct.GetDimension() != 3:
        raise PipelineInputError(stage=STAGE, subject=subject, path=ct_path, reason=f"CT must be 3-D, got {ct.GetDimension()}-D")
    gt = None
    gt_missing = None
    if gt_lung_path is not None and not Path(gt_lung_path).exists():
        # The rule always names masks/lung.nii.gz; datasets without lung masks (the real
        # studies) simply have none: no metrics, not an error.
        log.warning("%s: no ground-truth lung mask at %s; metrics are not computed", subject, gt_lung_path)
        gt_missing, gt_lung_path = str(gt_lung_path), None
    if gt_lung_path is not None:
        gt = read_image(gt_lung_path, subject, "ground-truth lung mask")
        try:
            check_same_grid(ct, gt)
        except ValueError as err:
            raise PipelineInputError(stage=STAGE, subject=subject, path=gt_lung_path,
                                     reason=f"ground-truth lung mask and CT differ: {err}",
                                     hint="resample the mask onto the curated CT grid (curation does this)") from err

    try:
        result = segment_subject(ct, params, threads, subject)
    except PipelineInputError as err:
        if err.path is not None:
            raise
        # Name the file: the segmentation itself only knows the image.
        raise PipelineInputError(stage=err.stage, subject=subject, path=ct_path, reason=err.reason, hint=err.hint) from err
    binary = {m: sitk.Cast(getattr(result, m) > 0, sitk.sitkUInt8) for m in METHODS}
    sitk.WriteImage(binary["classical"], str(out_dir / OUTPUT_FILES["classical"]), useCompression=True)
    sitk.WriteImage(binary["refined"], str(out_dir / OUTPUT_FILES["refined"]), useCompression=True)
    start = time.perf_counter()
    volume, volume_mask = crop_masked_volume(ct, result.refined, params.output.crop_margin_mm, params.output.background_hu)
    sitk.WriteImage(volume, str(out_dir / OUTPUT_FILES["volume"]), useCompression=True)
    sitk.WriteImage(volume_mask, str(out_dir / OUTPUT_FILES["volume_mask"]), useCompression=True)
    t_crop = time.perf_counter() - start

    record: dict = {
        "subject": subject,
        "ct": str(ct_path),
        "gt_lung": str(gt_lung_path) if gt_lung_path is not None else None,
        "gt_lung_missing": gt_missing,
        "spacing_mm": list(ct.GetSpacing()),
        "size": list(ct.GetSize()),
        "threads": int(threads),
        "params": params.to_dict(),
        "classical_info": result.info,
        "seconds": {**result.seconds, "crop_and_write": t_crop},
        "volume_crop": {"size": list(volume.GetSize()), "origin": list(volume.GetOrigin())},
    }
    for method in METHODS:
        entry = mask_summary(getattr(result, method))
        entry["metrics"] = _nan_to_none(segmentation_metrics(binary[method], gt)) if gt is not None else None
        record[method] = entry
    if write_qc:
        from covidmtl.lungseg.figures import write_qc_overlay

        write_qc_overlay(ct, result.refined, out_dir / OUTPUT_FILES["qc"], title=f"{subject}: refined lung mask")
    # Linux reports ru_maxrss in KiB: the peak of the whole process, all steps together.
    record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    (out_dir / OUTPUT_FILES["metrics"]).write_text(json.dumps(record, indent=2, default=_json_default) + "\n", encoding="utf-8")
    log.info("%s: lungs %.0f ml (classical) / %.0f ml (refined) in %.1f s + %.1f s", subject,
             record["classical"]["lung_volume_ml"], record["refined"]["lung_volume_ml"], *result.seconds.values())
    return record


def _nan_to_none(values: dict) -> dict:
    # Strict JSON has no NaN: an undefined metric is written as null.
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in values.items()}


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")
