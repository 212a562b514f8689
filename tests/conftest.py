"""Shared fixtures: repository paths, the real CT studies, small synthetic volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
REAL_CT = REPO.parent / "shared" / "real-ct"
COVID_CT_MD = REAL_CT / "covid-ct-md"
REAL_STUDIES = {
    "P001": COVID_CT_MD / "COVID-19 subjects" / "P001",
    "cap001": COVID_CT_MD / "Cap subjects" / "cap001",
    "normal001": COVID_CT_MD / "Normal subjects" / "normal001",
}


@pytest.fixture(scope="session")
def real_ct_dir() -> Path:
    if not COVID_CT_MD.is_dir():
        pytest.skip(f"real CT studies not present at {REAL_CT} (they live in ../shared/real-ct beside the checkout)")
    return COVID_CT_MD


def make_ct(shape_zyx=(24, 40, 48), spacing=(0.8, 0.8, 2.5), origin=(-20.0, -16.0, -30.0), direction=None, seed=0):
    """A small CT-like volume: air around an elliptic 'body' of soft tissue with two dark 'lungs'."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape_zyx).astype(np.float32)
    cz, cy, cx = [(n - 1) / 2 for n in shape_zyx]
    body = ((x - cx) / (0.45 * shape_zyx[2])) ** 2 + ((y - cy) / (0.4 * shape_zyx[1])) ** 2 < 1
    array = np.full(shape_zyx, -1000, np.float32)
    array[body] = 40
    for side in (-1, 1):
        lung = ((x - cx - side * 0.2 * shape_zyx[2]) / (0.14 * shape_zyx[2])) ** 2 + ((y - cy) / (0.28 * shape_zyx[1])) ** 2 < 1
        array[lung & (np.abs(z - cz) < 0.4 * shape_zyx[0])] = -850
    array += rng.normal(0, 10, shape_zyx)
    image = sitk.GetImageFromArray(np.round(array).astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    mask = sitk.GetImageFromArray((array < -500).astype(np.uint8) * body.astype(np.uint8))
    mask.CopyInformation(image)
    return image, mask
