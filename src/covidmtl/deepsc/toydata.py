"""A tiny toy cohort in the pipeline's file layout, for the DeepSC tests and benchmark.

Not a substitute for :mod:`covidmtl.synthetic` (the realistic phantom cohort): this writes
small block-shaped chests in seconds, with the planted DeepSC-COVID findings in caricature:
COVID-19 scans get several small peripheral ground-glass blobs (-550 HU), CAP scans one or
two larger central consolidations (-50 HU), normal scans none.

Layout (as the curation and lung-segmentation stages write it)::

    <root>/curated/toy/<subject>/ct.nii.gz, masks/lesion.nii.gz
    <root>/lungseg/toy/<subject>/lung_refined.nii.gz   (1 = right lung, 2 = left lung)
    <root>/manifest.csv, <root>/split.csv
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage as ndi

DATASET = "toy"
CLASS_NAMES = ("covid19", "cap", "normal")


def toy_volume(shape: Sequence[int], diagnosis: str, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(CT in HU int16, lung labels uint8, lesion mask uint8) of one toy chest."""
    z, y, x = np.indices(shape).astype(np.float32)
    nz, ny, nx = shape
    cy, cx = (ny - 1) / 2, (nx - 1) / 2
    ct = np.full(shape, -1000.0, np.float32)
    body = ((y - cy) / (0.46 * ny)) ** 2 + ((x - cx) / (0.48 * nx)) ** 2 < 1
    ct[body] = 40.0
    lungs = np.zeros(shape, np.uint8)
    for label, side in ((1, -1), (2, 1)):
        lx = cx + side * 0.22 * nx
        inside = (((x - lx) / (0.17 * nx)) ** 2 + ((y - cy) / (0.33 * ny)) ** 2
                  + ((z - (nz - 1) / 2) / (0.42 * nz)) ** 2) < 1
        lungs[inside] = label
    lung = lungs > 0
    ct[lung] = -850.0
    lesion = np.zeros(shape, np.uint8)
    depth = ndi.distance_transform_edt(lung)
    if diagnosis != "normal":
        inner = depth[lung]
        if diagnosis == "covid19":
            n, radius, hu = int(rng.integers(4, 7)), (2.0, 2.8), -550.0
            candidates = np.argwhere(lung & (depth <= max(np.quantile(inner, 0.25), 2.0)))
        else:
            n, radius, hu = int(rng.integers(1, 3)), (2.5, 3.5), -50.0
            candidates = np.argwhere(lung & (depth >= np.quantile(inner, 0.75)))
        for _ in range(n):
            c = candidates[rng.integers(len(candidates))]
            r = rng.uniform(*radius)
            blob = ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) <= r * r
            lesion[blob & lung] = 1
        ct[lesion > 0] = hu
    ct += rng.normal(0, 15, shape).astype(np.float32)
    return np.round(ct).astype(np.int16), lungs, lesion


def _write(array: np.ndarray, path: Path, spacing: Sequence[float]) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in spacing][::-1])  # spacing given as (z, y, x)
    image.SetOrigin((-100.0, -120.0, -200.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def write_toy_cohort(root: str | Path, n_train: int = 2, n_test: int = 1, shape: Sequence[int] = (20, 36, 44),
                     spacing: Sequence[float] = (2.0, 2.0, 2.0), seed: int = 0,
                     without_mask: Sequence[str] = ()) -> Path:
    """Write ``n_train`` + ``n_test`` subjects per class; returns ``root``. Subjects named in
    ``without_mask`` get no lesion mask (empty ``lesion_mask_path``)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows, split = [], []
    i = 0
    for part, n in (("train", n_train), ("test", n_test)):
        for k in range(n):
            for diagnosis in CLASS_NAMES:
                i += 1
                sid = f"toy-{i:03d}"
                ct, lungs, lesion = toy_volume(shape, diagnosis, rng)
                folder = root / "curated" / DATASET / sid
                _write(ct, folder / "ct.nii.gz", spacing)
                _write(lungs, root / "lungseg" / DATASET / sid / "lung_refined.nii.gz", spacing)
                lesion_path = ""
                if sid not in set(without_mask):
                    lesion_path = str(folder / "masks" / "lesion.nii.gz")
                    _write(lesion, Path(lesion_path), spacing)
                rows.append({"subject_id": sid, "patient_id": f"P{sid}", "dataset": DATASET, "diagnosis3": diagnosis,
                             "ct_path": str(folder / "ct.nii.gz"), "lesion_mask_path": lesion_path,
                             "spacing": "x".join(str(s) for s in spacing[::-1])})
                split.append({"subject_id": sid, "patient_id": f"P{sid}", "split": part})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    pd.DataFrame(split).to_csv(root / "split.csv", index=False)
    return root
