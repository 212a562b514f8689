"""The masked lung volume handed downstream: CT outside the lungs set to a background
value, cropped to the lung bounding box plus a margin (COVID-MTL section 2.1: the CNN and
the feature extractor see the segmented lung volume only)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from covidmtl.lungseg.metrics import check_same_grid


def lung_bounding_box(mask: sitk.Image, margin_mm: float = 0.0) -> tuple[list[int], list[int]]:
    """Index and size (x, y, z order, SimpleITK convention) of the box around mask > 0,
    grown by ``margin_mm`` on every side (clipped to the image)."""
    arr = sitk.GetArrayViewFromImage(mask) > 0
    if not arr.any():
        raise ValueError("empty mask: no lung to crop to")
    spacing = np.asarray(mask.GetSpacing(), dtype=float)
    margin = np.ceil(margin_mm / spacing - 1e-9).astype(int)
    index, size = [], []
    for axis_xyz in range(3):
        axis_np = 2 - axis_xyz
        other = tuple(a for a in range(3) if a != axis_np)
        idx = np.flatnonzero(arr.any(axis=other))
        lo = max(int(idx[0]) - margin[axis_xyz], 0)
        hi = min(int(idx[-1]) + 1 + margin[axis_xyz], arr.shape[axis_np])
        index.append(lo)
        size.append(hi - lo)
    return index, size


def crop_masked_volume(
    ct: sitk.Image, mask: sitk.Image, margin_mm: float = 5.0, background_hu: float = -1024.0
) -> tuple[sitk.Image, sitk.Image]:
    """(masked CT, binary mask), both cropped to the lung box plus ``margin_mm``.

    CT voxels outside the mask become ``background_hu``; the CT keeps its pixel type, the
    mask is uint8 0/1.  Both share the cropped grid: same size, spacing and direction, and
    the origin moved to the physical position of the first kept voxel.
    """
    check_same_grid(ct, mask)
    index, size = lung_bounding_box(mask, margin_mm)
    binary = sitk.Cast(mask > 0, sitk.sitkUInt8)
    ct_arr = sitk.GetArrayFromImage(ct)
    lung = sitk.GetArrayViewFromImage(binary).astype(bool)
    info = np.iinfo(ct_arr.dtype) if np.issubdtype(ct_arr.dtype, np.integer) else None
    background = np.clip(background_hu, info.min, info.max) if info else background_hu
    masked_arr = np.where(lung, ct_arr, np.asarray(background).astype(ct_arr.dtype))
    masked = sitk.GetImageFromArray(masked_arr)
    masked.CopyInformation(ct)
    # RegionOfInterest keeps spacing/direction and moves the origin to the box corner.
    size_u, index_i = [int(v) for v in size], [int(v) for v in index]
    return sitk.RegionOfInterest(masked, size_u, index_i), sitk.RegionOfInterest(binary, size_u, index_i)
