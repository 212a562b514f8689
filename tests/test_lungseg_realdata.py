"""Lung segmentation on the real COVID-CT-MD studies in ../shared/real-ct (skipped when absent).

The studies are read as the curation stage reads them (SimpleITK series reader, LPS) and
resampled to 2 mm to keep the test short; the stage itself runs on the curated 1 mm grid.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from covidmtl.lungseg.classical import LEFT_LUNG, RIGHT_LUNG, classical_segmentation_labels
from covidmtl.lungseg.figures import write_qc_overlay
from covidmtl.lungseg.refine import refine_labels

STUDIES = {
    "P001": "COVID-19 subjects/P001",
    "cap001": "Cap subjects/cap001",
    "normal001": "Normal subjects/normal001",
}


def read_study(folder, spacing_mm: float = 2.0) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series[0]))
    image = sitk.DICOMOrient(reader.Execute(), "LPS")
    size = [int(round(n * s / spacing_mm)) for n, s in zip(image.GetSize(), image.GetSpacing())]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (spacing_mm,) * 3,
                         image.GetDirection(), -1024, sitk.sitkInt16)


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("study", sorted(STUDIES))
def test_real_study(study, real_ct_dir, tmp_path):
    folder = real_ct_dir / STUDIES[study]
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    ct = read_study(folder)
    ct_arr = sitk.GetArrayFromImage(ct)
    spacing = np.asarray(ct.GetSpacing()[::-1])
    result = classical_segmentation_labels(ct, subject=study)
    refined = refine_labels(ct_arr, result.labels, spacing, threads=2)
    voxel_l = float(np.prod(spacing)) / 1e6
    for labels in (result.labels, refined):
        right, left = (labels == RIGHT_LUNG).sum() * voxel_l, (labels == LEFT_LUNG).sum() * voxel_l
        assert 0.8 < right < 5.0 and 0.8 < left < 5.0, (right, left)
        assert 3.0 < right + left < 8.0  # physiological total lung volume (litres)
        lung = labels > 0
        # Not at the in-plane border (no outside air, no field-of-view leak).
        assert not (lung[:, 0, :].any() or lung[:, -1, :].any() or lung[:, :, 0].any() or lung[:, :, -1].any())
        # Inside the body: every lung voxel has body tissue in front of and behind it
        # (table and outside air lie behind the body's back, not between tissue).
        tissue = ct_arr >= -320
        zs, ys, xs = np.nonzero(lung)
        anterior = np.maximum.accumulate(tissue, axis=1)
        posterior = np.maximum.accumulate(tissue[:, ::-1, :], axis=1)[:, ::-1, :]
        assert anterior[zs, ys, xs].all() and posterior[zs, ys, xs].all()
        # Patient right (small x) is label 1.
        xr = np.nonzero(labels == RIGHT_LUNG)[2].mean()
        xl = np.nonzero(labels == LEFT_LUNG)[2].mean()
        assert xr < xl
    # Trachea: found, and its lumen is not lung.
    assert result.info["trachea_found"]
    z, y, x = result.info["trachea_seed_zyx"]
    assert ct_arr[z, y, x] < -900 and result.labels[z, y, x] == 0 and refined[z, y, x] == 0
    # The lungs are two separate regions.
    import scipy.ndimage as ndi

    _, n = ndi.label(refined > 0)
    assert n <= 3
    png = write_qc_overlay(ct, sitk.GetImageFromArray(refined), tmp_path / f"{study}_qc.png", title=study)
    assert png.stat().st_size > 10_000
