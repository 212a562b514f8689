"""Active-contour refinement of the classical lung mask (COVID-MTL Algorithm 1).

Per axial slice and per lung: close the initial lung with a disk (radius 10 mm by
default), take the outer contour of every closed piece as the seed of a scikit-image
active contour (snake), let it evolve, fill the final snake to a mask and OR it into the
slice mask; the slices stack back to 3-D.  Thresholding loses lesions that touch the chest
wall (dense ground glass and consolidation are above -320 HU); the closing and the rigid
snake bridge such bites in the lung outline and bring them back.  With the authors'
parameters (see :class:`~covidmtl.lungseg.params.RefineParams`) the image forces are weak,
so the snake mainly smooths the closed outline; it cannot bridge bites much wider than the
closing disk.  The filled snake is kept inside the closed outline (one deviation from a
literal reading of Algorithm 1): an OR can only add pixels, so without that bound every
outward sub-pixel wobble of the snake adds a rim of non-lung, which costs more Dice on a
1.5 mm grid than the bites bring back.  Snake lengths (point spacing, largest move) are in
mm, converted with the in-plane spacing, so the paper's 1-pixel values on its 1 mm grid
keep their physical size on a coarser curated grid.

Cost: slices without lung are skipped, every lung is cropped to its bounding box, and the
slices run in ``threads`` worker processes (the snake's Python loop holds the GIL, so
threads would not scale).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import scipy.ndimage as ndi
import SimpleITK as sitk
from threadpoolctl import threadpool_limits
from skimage.measure import find_contours
from skimage.segmentation import active_contour

from covidmtl.lungseg.classical import (
    LEFT_LUNG,
    RIGHT_LUNG,
    array_spacing,
    labels_to_image,
    mm_to_voxels,
)
from covidmtl.lungseg.params import LungSegParams, RefineParams, coerce

log = logging.getLogger(__name__)


def _resample_closed_contour(contour: np.ndarray, spacing_px: float) -> np.ndarray:
    """Points every ``spacing_px`` pixels along a closed contour (first point not repeated)."""
    if np.allclose(contour[0], contour[-1]):
        contour = contour[:-1]
    closed = np.vstack([contour, contour[:1]])
    seg = np.hypot(*np.diff(closed, axis=0).T)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(int(round(arc[-1] / spacing_px)), 8)
    target = np.linspace(0.0, arc[-1], n, endpoint=False)
    return np.column_stack([np.interp(target, arc, closed[:, 0]), np.interp(target, arc, closed[:, 1])])


def closing_mm(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Binary closing with a Euclidean disk of ``radius_mm`` (anisotropic pixels allowed),
    via distance transforms (cheaper than a 21 x 21 structuring element); the mask is padded
    so that the border does not erode it."""
    pad = int(np.max(np.ceil(radius_mm / np.asarray(spacing, dtype=float)))) + 1
    padded = np.pad(mask, pad)
    dilated = ndi.distance_transform_edt(~padded, sampling=spacing) <= radius_mm + 1e-6
    closed = ndi.distance_transform_edt(dilated, sampling=spacing) > radius_mm + 1e-6
    return closed[pad:-pad, pad:-pad]


def fill_polygon(vertices: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside the closed polygon ``vertices`` (rows, cols).

    Even-odd scanline fill, linear in the number of vertices and pixels (the point-in-
    polygon test of ``skimage.draw.polygon`` costs pixels x vertices, too slow for lung
    contours with hundreds of points).  Same rule as ``skimage.draw.polygon`` up to pixel
    centres lying exactly on an edge.
    """
    out = np.zeros(shape, dtype=bool)
    r0, c0 = vertices[:, 0], vertices[:, 1]
    r1, c1 = np.roll(r0, -1), np.roll(c0, -1)
    lo, hi = np.minimum(r0, r1), np.maximum(r0, r1)
    # Rows (pixel centres) each edge crosses, half-open [lo, hi) so vertices count once.
    first = np.ceil(lo).astype(int)
    last = np.ceil(hi).astype(int) - 1
    n_rows = np.maximum(last - first + 1, 0)
    keep = n_rows > 0
    if not keep.any():
        return out
    edge = np.repeat(np.flatnonzero(keep), n_rows[keep])
    offsets = np.arange(edge.size) - np.repeat(np.cumsum(n_rows[keep]) - n_rows[keep], n_rows[keep])
    rows = first[edge] + offsets
    t = (rows - r0[edge]) / (r1[edge] - r0[edge])
    cols = c0[edge] + t * (c1[edge] - c0[edge])
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    # Crossings pair up per row (even-odd rule): fill between the 1st-2nd, 3rd-4th, ...
    start_rows, start_cols, end_cols = rows[0::2], cols[0::2], cols[1::2]
    inside = (start_rows >= 0) & (start_rows < shape[0])
    start_rows, start_cols, end_cols = start_rows[inside], start_cols[inside], end_cols[inside]
    a = np.clip(np.ceil(start_cols).astype(int), 0, shape[1])
    b = np.clip(np.floor(end_cols).astype(int) + 1, 0, shape[1])
    valid = b > a
    diff = np.zeros((shape[0], shape[1] + 1), dtype=np.int32)
    np.add.at(diff, (start_rows[valid], a[valid]), 1)
    np.add.at(diff, (start_rows[valid], b[valid]), -1)
    return np.cumsum(diff[:, :-1], axis=1) > 0


def _snake_image(ct2d: np.ndarray, lung2d: np.ndarray, params: RefineParams, sigma_px: np.ndarray) -> np.ndarray:
    lo, hi = params.window_hu
    image = np.clip((ct2d.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)
    if params.snake_image == "masked":
        # As the authors' code: everything outside the initial lung becomes background.
        image = np.where(lung2d, image, 0.0)
    elif params.snake_image != "ct":
        raise ValueError(f"lungseg.refine.snake_image must be 'masked' or 'ct', got {params.snake_image!r}")
    if np.any(sigma_px > 0):
        image = ndi.gaussian_filter(image, sigma=sigma_px)
    return image


def refine_slice(ct2d: np.ndarray, labels2d: np.ndarray, params: RefineParams, pixel_spacing: np.ndarray) -> np.ndarray:
    """Algorithm 1 on one axial slice: refined labels (1 right, 2 left) of that slice."""
    out = labels2d.copy()
    if not labels2d.any():
        return out
    radius_px = mm_to_voxels(params.closing_radius_mm, pixel_spacing)
    # Snake lengths are in mm (the paper's pixels were 1 mm); the snake itself works in pixels.
    pixel_mm = float(np.mean(pixel_spacing))
    max_px_move = params.max_move_mm / pixel_mm
    point_spacing_px = params.point_spacing_mm / pixel_mm
    reach = int(np.ceil(params.max_num_iter * max_px_move))
    margin = radius_px + reach + 2
    min_pixels = params.min_area_mm2 / float(np.prod(pixel_spacing))
    sigma_px = params.smoothing_sigma_mm / np.asarray(pixel_spacing, dtype=float)
    for value in (RIGHT_LUNG, LEFT_LUNG):
        lung = labels2d == value
        if not lung.any():
            continue
        rows, cols = np.nonzero(lung)
        r0, r1 = max(rows.min() - margin[0], 0), min(rows.max() + margin[0] + 1, lung.shape[0])
        c0, c1 = max(cols.min() - margin[1], 0), min(cols.max() + margin[1] + 1, lung.shape[1])
        lung_crop = lung[r0:r1, c0:c1]
        closed = closing_mm(lung_crop, params.closing_radius_mm, pixel_spacing) if params.closing_radius_mm > 0 else lung_crop
        pieces, n = ndi.label(closed)
        if n == 0:
            continue
        image = _snake_image(ct2d[r0:r1, c0:c1], lung_crop, params, sigma_px)
        refined = lung_crop.copy()
        sizes = np.bincount(pieces.ravel())
        for piece_value in range(1, n + 1):
            if sizes[piece_value] < min_pixels:
                continue
            piece = np.pad(pieces == piece_value, 1)
            contours = find_contours(piece.astype(np.float32), 0.5)
            if not contours:
                continue
            seed = max(contours, key=len) - 1.0
            seed = _resample_closed_contour(seed, point_spacing_px)
            if params.max_num_iter <= 0:
                refined |= piece[1:-1, 1:-1]
                continue
            snake = active_contour(
                image,
                seed,
                alpha=params.alpha,
                beta=params.beta,
                gamma=params.gamma,
                w_line=params.w_line,
                w_edge=params.w_edge,
                max_px_move=max_px_move,
                max_num_iter=params.max_num_iter,
                convergence=params.convergence,
                boundary_condition="periodic",
            )
            # The closed outline bounds the snake: Algorithm 1 only ever adds pixels (OR), so
            # a snake drifting outwards (sub-pixel jitter, rigidity bridging a concavity)
            # would add a rim of non-lung; the snake's job is to pull back to the true edge.
            refined |= fill_polygon(snake, refined.shape) & piece[1:-1, 1:-1]
        refined = ndi.binary_fill_holes(refined)
        target = out[r0:r1, c0:c1]
        # The other lung keeps its initial pixels: the OR never moves the junction line.
        target[refined & (target == 0)] = value
    return out


# Inputs of the slice workers.  Set before a fork-started pool is created, so the worker
# processes inherit them (copy-on-write) instead of receiving pickled volumes.
_SHARED: dict = {}


def _init_worker() -> None:
    # One BLAS thread per worker process: the snake's matrices are small, and a
    # multi-threaded BLAS in every worker only oversubscribes the cores.
    threadpool_limits(limits=1, user_api="blas")


def _refine_slices(zs: list[int]) -> list[tuple[int, np.ndarray]]:
    ct, labels, params, pixel_spacing = _SHARED["args"]
    return [(z, refine_slice(ct[z], labels[z], params, pixel_spacing)) for z in zs]


def refine_labels(ct: np.ndarray, labels: np.ndarray, spacing_zyx: np.ndarray, params: RefineParams | LungSegParams | dict | None = None, threads: int = 1) -> np.ndarray:
    """Algorithm 1 on a whole volume (numpy arrays, axes z, y, x).

    Slices without lung are skipped.  With ``threads`` > 1 the slices run in that many
    worker processes (forked; the snake's Python loop holds the GIL, so threads would not
    scale), else in this process; the result is the same either way.
    """
    params = coerce(params, "refine")
    out = labels.copy()
    todo = [int(z) for z in np.flatnonzero(labels.any(axis=(1, 2)))]
    pixel_spacing = np.asarray(spacing_zyx, dtype=float)[1:]
    _SHARED["args"] = (ct, labels, params, pixel_spacing)
    try:
        workers = min(int(threads), len(todo))
        if workers > 1 and "fork" in mp.get_all_start_methods():
            # Interleaved chunks balance the load (slices near the lung centre cost most).
            chunks = [todo[i::workers * 4] for i in range(workers * 4)]
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"), initializer=_init_worker) as pool:
                for part in pool.map(_refine_slices, [c for c in chunks if c]):
                    for z, refined in part:
                        out[z] = refined
        else:
            with threadpool_limits(limits=1, user_api="blas"):
                for z, refined in _refine_slices(todo):
                    out[z] = refined
    finally:
        _SHARED.clear()
    return out


def refine_with_active_contours(ct: sitk.Image, initial_mask: sitk.Image, params: RefineParams | LungSegParams | dict | None = None, threads: int = 1) -> sitk.Image:
    """Refined lung mask on the CT grid (uint8; 1 right, 2 left where the initial mask has
    lung labels, otherwise every 3-D component of a binary mask is refined as one lung).

    ``initial_mask`` is the output of :func:`classical_segmentation` (or any mask on the
    CT grid).
    """
    ct_arr = sitk.GetArrayViewFromImage(ct)
    labels = sitk.GetArrayFromImage(initial_mask).astype(np.uint8)
    if ct_arr.shape != labels.shape:
        raise ValueError(f"CT {ct_arr.shape} and mask {labels.shape} differ in size")
    if labels.max() > LEFT_LUNG:
        raise ValueError(f"mask labels must be 0, 1 (right) and 2 (left); found {int(labels.max())}")
    if set(np.unique(labels)) <= {0, 1}:
        labels = _split_binary_by_side(labels)
    refined = refine_labels(ct_arr, labels, array_spacing(ct), params, threads)
    return labels_to_image(refined, ct)


def _split_binary_by_side(mask: np.ndarray) -> np.ndarray:
    """Lung labels for a binary mask: the two largest 3-D components are the lungs (right =
    smaller x); every other component joins the lung on its side of the midpoint."""
    lab, n = ndi.label(mask > 0)
    out = np.zeros(mask.shape, dtype=np.uint8)
    if n == 0:
        return out
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    xs = np.broadcast_to(np.arange(mask.shape[2]), mask.shape).ravel()
    com_x = np.bincount(lab.ravel(), weights=xs) / np.maximum(counts, 1)
    largest = [int(v) for v in np.argsort(counts)[::-1][: min(n, 2)]]
    if len(largest) == 1:
        out[lab > 0] = RIGHT_LUNG
        return out
    split_x = (com_x[largest[0]] + com_x[largest[1]]) / 2
    side = np.where(com_x < split_x, RIGHT_LUNG, LEFT_LUNG).astype(np.uint8)
    side[0] = 0
    return side[lab]
