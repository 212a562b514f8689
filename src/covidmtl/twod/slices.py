"""``covidmtl twod-slices``: axial slices of the curated volumes for the 2D models.

    covidmtl twod-slices --manifest results/manifest.csv --params '<json of config "twod">' \
        --out-dir results/twod/slices

Per subject of the manifest: the curated CT (LPS, so array rows run anterior -> posterior and
columns patient right -> left, the radiological display), its lung mask (or a threshold
estimate) and its lesion mask where present. Candidate slices are those with lung on at
least ``twod.slices.min_lung_fraction`` of the slice; for COVID-19/CAP subjects with a lesion
mask, only slices showing lesion (``positive_slices: lesion``). ``per_subject`` slices are
taken evenly spaced over the candidates. Each slice is windowed (lung window, [0, 1]),
padded to a square with air, resized to ``slices.image_size`` and written as 8-bit PNG;
masks as 0/255 PNG.

Outputs in ``--out-dir``: ``images/<subject>/<slice_id>.png``, ``masks/<subject>/<slice_id>.png``
and ``index.csv`` (slice_id, subject_id, patient_id, dataset, label_binary, label_3class,
has_mask, split, path, mask_path, diagnosis3, slice_z, lung_fraction, lesion_fraction; paths
relative to the folder). The split is patient-aware and stratified (``twod.split``), so that
every training run reads the same one.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage

from covidmtl.errors import PipelineInputError
from covidmtl.twod.config import SlicesConfig, TwoDConfig, add_config_arguments, config_from_args
from covidmtl.twod.data import INDEX_COLUMNS, labels_from_text, patient_split, resize_image, resize_mask

log = logging.getLogger(__name__)

STAGE = "twod-slices"
HU_AIR = -1024.0


def read_volume(path: str | Path, what: str, subject: str) -> np.ndarray:
    """(z, y, x) array of a NIfTI volume in LPS orientation."""
    path = Path(path)
    if not path.is_file():
        raise PipelineInputError(STAGE, f"the {what} does not exist", subject=subject, path=path,
                                 hint="rerun the curation stage for this subject")
    try:
        image = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
    except RuntimeError as err:
        raise PipelineInputError(STAGE, f"cannot read the {what} ({str(err).strip().splitlines()[-1]})",
                                 subject=subject, path=path, hint="rerun the curation stage for this subject") from None
    return sitk.GetArrayFromImage(image)


def estimate_lung(ct_slice: np.ndarray, threshold_hu: float) -> np.ndarray:
    """Air below ``threshold_hu`` that does not touch the image border (the air around the
    body does): a rough lung mask for subjects without one."""
    air = ct_slice < threshold_hu
    labels, n = ndimage.label(air)
    if n == 0:
        return air
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return air & ~np.isin(labels, border)


def window(ct_slice: np.ndarray, level: float, width: float) -> np.ndarray:
    lo = level - width / 2
    return np.clip((ct_slice.astype(np.float32) - lo) / width, 0.0, 1.0)


def select_slices(lung_fraction: np.ndarray, lesion_pixels: np.ndarray | None, positive: bool,
                  cfg: SlicesConfig) -> np.ndarray:
    """Indices (z) of the slices to extract."""
    candidates = np.flatnonzero(lung_fraction >= cfg.min_lung_fraction)
    if positive and cfg.positive_slices == "lesion" and lesion_pixels is not None:
        with_lesion = candidates[lesion_pixels[candidates] > 0]
        if with_lesion.size:
            candidates = with_lesion
    if cfg.per_subject and candidates.size > cfg.per_subject:
        picks = np.unique(np.round(np.linspace(0, candidates.size - 1, cfg.per_subject)).astype(int))
        candidates = candidates[picks]
    return candidates


def subject_slices(row: dict, cfg: TwoDConfig, out_dir: Path) -> list[dict]:
    """Extract one subject's slices; returns their index rows (paths relative to out_dir)."""
    subject = str(row["subject_id"])
    labels = labels_from_text(row.get("diagnosis3", ""))
    if labels is None:
        log.warning("subject %s: diagnosis3 %r is not covid19/cap/normal; skipped", subject, row.get("diagnosis3"))
        return []
    ct = read_volume(row["ct_path"], "curated CT", subject)
    masks: dict[str, np.ndarray | None] = {}
    for kind in ("lung", "lesion"):
        path = row.get(f"{kind}_mask_path") or ""
        if not isinstance(path, str) or not path:
            masks[kind] = None
            continue
        m = read_volume(path, f"{kind} mask", subject) > 0
        if m.shape != ct.shape:
            raise PipelineInputError(STAGE, f"the {kind} mask has shape {m.shape} (z, y, x) but the CT "
                                            f"{row['ct_path']} has {ct.shape}", subject=subject, path=path,
                                     hint="rerun the curation stage (it puts masks on the CT grid)")
        masks[kind] = m
    s = cfg.slices
    if masks["lung"] is not None:
        lung_fraction = masks["lung"].reshape(ct.shape[0], -1).mean(axis=1)
    else:
        lung_fraction = np.array([estimate_lung(ct[z], s.lung_threshold_hu).mean() for z in range(ct.shape[0])])
    lesion_pixels = masks["lesion"].reshape(ct.shape[0], -1).sum(axis=1) if masks["lesion"] is not None else None
    zs = select_slices(lung_fraction, lesion_pixels, labels[0] == 1 or labels[1] == 2, s)
    if zs.size == 0:
        log.warning("subject %s: no slice has lung on >= %.0f%% of its area (max %.1f%%); skipped", subject,
                    100 * s.min_lung_fraction, 100 * float(lung_fraction.max(initial=0)))
        return []
    (out_dir / "images" / subject).mkdir(parents=True, exist_ok=True)
    if masks["lesion"] is not None:
        (out_dir / "masks" / subject).mkdir(parents=True, exist_ok=True)
    pad_value = float(window(np.array([HU_AIR]), s.window_level_hu, s.window_width_hu)[0])
    rows = []
    for z in zs:
        slice_id = f"{subject}_z{z:04d}"
        image = resize_image(window(ct[z], s.window_level_hu, s.window_width_hu), s.image_size, pad_value)
        image_rel = Path("images") / subject / f"{slice_id}.png"
        Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), mode="L").save(out_dir / image_rel)
        mask_rel, lesion_fraction = "", np.nan
        if masks["lesion"] is not None:
            mask = resize_mask(masks["lesion"][z], s.image_size)
            mask_rel = str(Path("masks") / subject / f"{slice_id}.png")
            Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(out_dir / mask_rel)
            lesion_fraction = float(masks["lesion"][z].mean())
        rows.append({"slice_id": slice_id, "subject_id": subject, "patient_id": str(row["patient_id"]),
                     "dataset": row.get("dataset", ""), "label_binary": labels[0], "label_3class": labels[1],
                     "has_mask": bool(mask_rel), "split": "", "path": str(image_rel), "mask_path": mask_rel,
                     "diagnosis3": row.get("diagnosis3", ""), "slice_z": int(z),
                     "lung_fraction": round(float(lung_fraction[z]), 4), "lesion_fraction": lesion_fraction})
    return rows


def extract(manifest: pd.DataFrame, cfg: TwoDConfig, out_dir: Path) -> pd.DataFrame:
    out_dir.mkdir(parents=True, exist_ok=True)
    required = ["subject_id", "patient_id", "diagnosis3", "ct_path"]
    missing = [c for c in required if c not in manifest.columns]
    if missing:
        raise PipelineInputError(STAGE, f"the manifest lacks column(s) {missing}",
                                 hint="use the manifest written by `covidmtl manifest`")
    rows: list[dict] = []
    for record in manifest.fillna("").to_dict("records"):
        rows.extend(subject_slices(record, cfg, out_dir))
    if not rows:
        raise PipelineInputError(STAGE, "no slices were extracted from any subject",
                                 hint="check the manifest's diagnosis3 column and twod.slices.min_lung_fraction")
    index = pd.DataFrame(rows)
    index["split"] = patient_split(index, cfg.split.fractions, cfg.seed)
    index = index[INDEX_COLUMNS + [c for c in index.columns if c not in INDEX_COLUMNS]]
    index.to_csv(out_dir / "index.csv", index=False)
    summary = index.groupby(["split", "label_3class"])["patient_id"].nunique().unstack(fill_value=0)
    log.info("%d slices of %d subjects; patients per split and class (0 normal, 1 COVID-19, 2 CAP):\n%s",
             len(index), index["subject_id"].nunique(), summary.to_string())
    return index


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="covidmtl twod-slices", description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", type=Path, required=True, help="manifest CSV (subject_id, patient_id, diagnosis3, "
                                                                 "ct_path, lung_mask_path, lesion_mask_path)")
    add_config_arguments(ap)
    ap.add_argument("--out-dir", type=Path, required=True)
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    if not args.manifest.is_file():
        raise PipelineInputError(STAGE, "the manifest does not exist", path=args.manifest,
                                 hint="run the manifest rule first")
    manifest = pd.read_csv(args.manifest, dtype={"subject_id": str, "patient_id": str})
    extract(manifest, cfg, args.out_dir)
    return 0
