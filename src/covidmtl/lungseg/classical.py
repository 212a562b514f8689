"""Classical (threshold-based) lung segmentation of a curated chest CT.

The Kaggle Data Science Bowl 2017 method that COVID-MTL (section 2.1) starts from:
threshold around -320 HU, drop the air connected to the image border (outside the body),
keep the two lungs, remove the trachea and main bronchi, fill holes and close small gaps.
Everything works on the numpy view of a SimpleITK image, axes (z, y, x); sizes come in mm
and are converted with the image spacing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.ndimage as ndi
import SimpleITK as sitk

from covidmtl.errors import PipelineInputError
from covidmtl.lungseg.params import ClassicalParams, LungSegParams, coerce

log = logging.getLogger(__name__)

STAGE = "lungseg"
RIGHT_LUNG, LEFT_LUNG = 1, 2
"""Label values of :func:`classical_segmentation_labels`: LPS x grows toward patient left,
so the lung with the smaller x is the patient's right lung."""
OTHER_AIR = 3  # marker of air that is not lung (bowel gas, table cavities) while flooding

# Connectivity inside an axial slice only (z neighbours not connected): labels every slice
# separately in one call.
_INPLANE = np.zeros((3, 3, 3), dtype=bool)
_INPLANE[1] = ndi.generate_binary_structure(2, 1)
_FACE = ndi.generate_binary_structure(3, 1)


@dataclass
class ClassicalResult:
    """Lung labels (1 right, 2 left) on the CT grid plus what the steps found."""

    labels: np.ndarray
    info: dict = field(default_factory=dict)


def array_spacing(image: sitk.Image) -> np.ndarray:
    """Voxel size (mm) along the numpy axes (z, y, x)."""
    return np.asarray(image.GetSpacing()[::-1], dtype=float)


def mm_to_voxels(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Radius in voxels along each axis (at least 0)."""
    return np.maximum(np.round(radius_mm / np.asarray(spacing, dtype=float)), 0).astype(int)


def _bbox(mask: np.ndarray, margin: int | np.ndarray = 0) -> tuple[slice, ...]:
    """Bounding box of the True voxels grown by ``margin`` (clipped to the array)."""
    margin = np.broadcast_to(np.asarray(margin, dtype=int), (mask.ndim,))
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        lo = max(int(idx[0]) - margin[axis], 0)
        hi = min(int(idx[-1]) + 1 + margin[axis], mask.shape[axis])
        slices.append(slice(lo, hi))
    return tuple(slices)


def distance_map_mm(mask: np.ndarray, spacing: np.ndarray, inside: bool) -> np.ndarray:
    """Euclidean distance (mm) of every voxel to the nearest voxel of the other kind:
    ``inside=True`` gives, inside the mask, the distance to the background (0 outside);
    ``inside=False`` gives, outside the mask, the distance to the mask (0 inside).
    Beyond the array everything counts as background (the array is padded by one voxel)."""
    padded = np.pad(mask, 1)
    target = padded if not inside else ~padded
    image = sitk.GetImageFromArray(target.astype(np.uint8))
    image.SetSpacing([float(v) for v in np.asarray(spacing, dtype=float)[::-1]])
    dist = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    out = sitk.GetArrayFromImage(dist)[1:-1, 1:-1, 1:-1]
    return np.maximum(out, 0)


def ball_footprint(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Boolean Euclidean ball of ``radius_mm`` on a (possibly anisotropic) grid."""
    spacing = np.asarray(spacing, dtype=float)
    radii = np.floor(radius_mm / spacing + 1e-6).astype(int)
    grids = np.meshgrid(*[np.arange(-r, r + 1) * s for r, s in zip(radii, spacing)], indexing="ij")
    return sum(g**2 for g in grids) <= radius_mm**2 + 1e-6


def binary_morphology(mask: np.ndarray, radius_mm: float, spacing: np.ndarray, operation: str) -> np.ndarray:
    """Binary erosion/dilation/closing/opening with a Euclidean ball of ``radius_mm``.

    Small balls (up to 3 voxels) use a structuring element, larger ones distance maps (same
    result, cheaper for large radii).  Beyond the array everything is background; a closing
    pads the array so that it does not erode at the border.
    """
    mask = np.asarray(mask, dtype=bool)
    spacing = np.asarray(spacing, dtype=float)
    if radius_mm <= 0:
        return mask.copy()
    if operation in {"close", "open"}:
        pad = [(int(np.ceil(radius_mm / s)) + 1,) * 2 for s in spacing]
        padded = np.pad(mask, pad)
        first, second = ("dilate", "erode") if operation == "close" else ("erode", "dilate")
        out = binary_morphology(binary_morphology(padded, radius_mm, spacing, first), radius_mm, spacing, second)
        return out[tuple(slice(p[0], p[0] + n) for p, n in zip(pad, mask.shape))]
    if operation not in {"erode", "dilate"}:
        raise ValueError(f"unknown morphology operation {operation!r}")
    if np.max(radius_mm / spacing) <= 3:
        ball = ball_footprint(radius_mm, spacing)
        if operation == "erode":
            return ndi.binary_erosion(mask, structure=ball, border_value=0)
        return ndi.binary_dilation(mask, structure=ball)
    eps = 1e-6
    if operation == "erode":
        return distance_map_mm(mask, spacing, inside=True) > radius_mm + eps
    return distance_map_mm(mask, spacing, inside=False) <= radius_mm + eps


def flood_from_markers(markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Grow the labelled markers inside ``mask``; every mask voxel takes the label that
    reaches it first along paths inside the mask (geodesic competition, ITK watershed on a
    flat image).  Voxels outside the mask are 0."""
    landscape = sitk.GetImageFromArray(np.where(mask, 0, 1).astype(np.uint8))
    seeds = sitk.GetImageFromArray(markers.astype(np.uint8))
    flooded = sitk.MorphologicalWatershedFromMarkers(landscape, seeds, markWatershedLine=False, fullyConnected=False)
    out = sitk.GetArrayFromImage(flooded)
    out[~mask] = 0
    return out


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected 3-D component of a mask (all of it if empty)."""
    lab, n = ndi.label(mask, structure=_FACE)
    if n <= 1:
        return mask
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    return lab == int(np.argmax(counts))


def drop_small_slice_pieces(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    """Per axial slice keep the largest piece and every piece of at least ``min_pixels``.

    The DSB kernel keeps the largest structure per slice; small detached pieces are gas
    bubbles in the bowel or table cavities reached through partial-volume bridges.
    """
    lab, n = ndi.label(mask, structure=_INPLANE)
    if n == 0:
        return mask
    counts = np.bincount(lab.ravel())
    keep = counts >= min_pixels
    # Largest piece of every slice: labels are numbered slice by slice.
    z_of = np.zeros(n + 1, dtype=np.int64)
    z_idx, _, _ = np.nonzero(lab)
    z_of[lab[lab > 0]] = z_idx
    best = {}
    for value in range(1, n + 1):
        z = z_of[value]
        if z not in best or counts[value] > counts[best[z]]:
            best[z] = value
    keep[list(best.values())] = True
    keep[0] = False
    return keep[lab]


def _border_connected_air(air: np.ndarray) -> np.ndarray:
    """Air connected, within its axial slice, to the in-plane border of the image.

    Per slice as in the DSB kernel (``clear_border`` on every slice): air that leaves the
    field of view at the top or bottom slice (lung apex, abdomen) is not outside the body.
    """
    lab, _ = ndi.label(air, structure=_INPLANE)
    edge = np.concatenate([lab[:, 0, :].ravel(), lab[:, -1, :].ravel(), lab[:, :, 0].ravel(), lab[:, :, -1].ravel()])
    edge_labels = np.unique(edge)
    edge_labels = edge_labels[edge_labels > 0]
    lut = np.zeros(int(lab.max()) + 1, dtype=bool)
    lut[edge_labels] = True
    return lut[lab]


def _component_stats(lab2d: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts and mean x of the labels 1..n of a 2-D label image."""
    flat = lab2d.ravel()
    counts = np.bincount(flat, minlength=n + 1)
    xs = np.broadcast_to(np.arange(lab2d.shape[1]), lab2d.shape).ravel()
    sum_x = np.bincount(flat, weights=xs, minlength=n + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_x = sum_x / counts
    return counts, mean_x


def track_airway(
    ct: np.ndarray, candidate: np.ndarray, spacing: np.ndarray, midline_x: float, params: ClassicalParams
) -> tuple[np.ndarray, dict]:
    """Trachea and main bronchi: their lumen, tracked slice by slice from a trachea seed.

    The lumen is air below ``airway_threshold_hu`` (parenchyma is denser), so in every
    axial slice it forms its own components.  The seed is the most cranial trachea-like
    component (cross-section within ``trachea_area_mm2``, near the midline, persisting over
    ``trachea_min_length_mm``); from there components overlapping the previous slice are
    followed up and down, and a branch stops where its cross-section jumps (a leak into
    low-density parenchyma).
    """
    info: dict = {"trachea_found": False}
    airway = np.zeros(candidate.shape, dtype=bool)
    strict = candidate & (ct < params.airway_threshold_hu)
    if not strict.any():
        return airway, info
    lab, n = ndi.label(strict, structure=_INPLANE)
    pixel_mm2 = float(spacing[1] * spacing[2])
    # Labels are global (every slice numbered on), so one bincount gives every component's
    # cross-section, slice and mean x.
    zz, _, xx = np.nonzero(lab)
    values = lab[lab > 0]  # same (C) order as np.nonzero
    counts = np.bincount(values, minlength=n + 1).astype(float)
    z_of = np.zeros(n + 1, dtype=int)
    z_of[values] = zz
    mean_x = np.bincount(values, weights=xx, minlength=n + 1) / np.maximum(counts, 1)
    area = counts * pixel_mm2
    offset_mm = np.abs(mean_x - midline_x) * spacing[2]
    lo, hi = params.trachea_area_mm2
    trachea_like = (area >= lo) & (area <= hi) & (offset_mm <= params.trachea_max_offset_mm)
    trachea_like[0] = False

    # Overlap graph between consecutive slices, with one pixel of in-plane slack because
    # bronchi run obliquely through the slices.
    grown = ndi.grey_dilation(lab, footprint=np.ones((1, 3, 3), dtype=bool))
    up: dict[int, set[int]] = {}
    down: dict[int, set[int]] = {}
    for lower, upper in ((lab[:-1], grown[1:]), (grown[:-1], lab[1:])):
        both = (lower > 0) & (upper > 0)
        codes = np.unique(lower[both].astype(np.int64) * (n + 1) + upper[both])
        for lo_v, up_v in zip((codes // (n + 1)).tolist(), (codes % (n + 1)).tolist()):
            up.setdefault(lo_v, set()).add(up_v)
            down.setdefault(up_v, set()).add(lo_v)
    by_slice: dict[int, list[int]] = {}
    for value in np.flatnonzero(trachea_like).tolist():
        by_slice.setdefault(int(z_of[value]), []).append(value)

    min_slices = max(int(np.ceil(params.trachea_min_length_mm / spacing[0])), 1)
    seed: int | None = None
    # Superior is +z in LPS; search from the top down to the middle of the air region.
    z_occupied = np.flatnonzero(candidate.any(axis=(1, 2)))
    z_top, z_bottom = int(z_occupied[-1]), int(z_occupied[0])
    for z in range(z_top, (z_top + z_bottom) // 2 - 1, -1):
        for value in sorted(by_slice.get(z, []), key=lambda v: -area[v]):
            current, length = value, 1
            while length < min_slices:
                nxt = [v for v in down.get(current, ()) if trachea_like[v]]
                if len(nxt) != 1:
                    break
                current, length = nxt[0], length + 1
            if length >= min_slices:
                seed = value
                break
        if seed is not None:
            break
    if seed is None:
        return airway, info

    accepted_all = {seed}
    for forward, backward in ((down, up), (up, down)):
        current = {seed}
        while current:
            nxt: set[int] = set()
            for value in set().union(*(forward.get(v, set()) for v in current)):
                feeding = backward.get(value, set()) & current
                prev_area = float(sum(area[v] for v in feeding))
                if area[value] > params.airway_max_area_mm2 or area[value] > params.airway_max_growth * max(prev_area, lo):
                    continue
                nxt.add(value)
            accepted_all |= nxt
            current = nxt
    airway = np.isin(lab, np.fromiter(accepted_all, dtype=lab.dtype))
    seed_y, seed_x = np.nonzero(lab[int(z_of[seed])] == seed)
    info.update(
        trachea_found=True,
        trachea_seed_zyx=[int(z_of[seed]), int(round(seed_y.mean())), int(round(seed_x.mean()))],
        airway_volume_ml=float(airway.sum() * np.prod(spacing) / 1000.0),
    )
    return airway, info


def _split_joined_lungs(core: np.ndarray, spacing: np.ndarray, midline_x: float, params: ClassicalParams) -> np.ndarray | None:
    """Markers of the two lungs inside one core that holds both (junction lines).

    Erode until two large pieces lie on both sides of the midline; they become the markers
    (1 right, 2 left) that :func:`flood_from_markers` grows back.  None when no erosion up to
    ``split_max_erosion_mm`` separates them.
    """
    box = _bbox(core, 1)
    depth = distance_map_mm(core[box], spacing, inside=True)
    x0 = box[2].start
    step = float(min(spacing))
    max_iter = max(int(round(params.split_max_erosion_mm / step)), 1)
    xs = np.broadcast_to(np.arange(depth.shape[2]), depth.shape)
    for it in range(1, max_iter + 1):
        eroded = depth > it * step + 1e-6
        lab, n = ndi.label(eroded, structure=_FACE)
        if n == 0:
            return None
        if n < 2:
            continue
        counts = np.bincount(lab.ravel())
        counts[0] = 0
        com_x = np.bincount(lab.ravel(), weights=xs.ravel()) / np.maximum(counts, 1) + x0
        order = [int(v) for v in np.argsort(counts)[::-1] if counts[v] >= 0.1 * counts.max()]
        right = [v for v in order if com_x[v] < midline_x]
        left = [v for v in order if com_x[v] >= midline_x]
        if right and left:
            markers = np.zeros(core.shape, dtype=np.uint8)
            sub = markers[box]
            sub[lab == right[0]] = RIGHT_LUNG
            sub[lab == left[0]] = LEFT_LUNG
            log.info("joined lungs split after %d erosion steps", it)
            return markers
    return None


def _fail(subject: str | None, reason: str, hint: str | None = None) -> PipelineInputError:
    return PipelineInputError(stage=STAGE, subject=subject, reason=reason, hint=hint)


def _fov_hint(air: np.ndarray) -> str:
    """What to do when no lungs are found; mentions a field-of-view cut when the body
    reaches the left/right image edge at mid height on many slices."""
    ny = air.shape[1]
    rows = slice(int(0.2 * ny), int(0.8 * ny))
    touching = int(np.count_nonzero((~air[:, rows, 0]).any(axis=1) | (~air[:, rows, -1]).any(axis=1)))
    text = "check that the scan is a chest CT covering both lungs (curation output), or exclude the subject"
    if touching:
        text = (f"the body reaches the left/right image edge on {touching} of {air.shape[0]} slices, so the lungs may "
                "be cut by the field of view (lungs touching the image border); " + text)
    return text


def classical_segmentation_labels(
    ct: sitk.Image, params: ClassicalParams | LungSegParams | dict | None = None, subject: str | None = None
) -> ClassicalResult:
    """Lung labels (uint8 array, 1 = right lung, 2 = left lung) of a curated CT.

    Raises PipelineInputError when no lungs can be found (not a chest CT, blank image,
    one lung missing) or when a lung touches the image border (cut by the field of view).
    """
    params = coerce(params, "classical")
    if ct.GetDimension() != 3:
        raise _fail(subject, f"CT must be a 3-D image, got {ct.GetDimension()}-D")
    arr = sitk.GetArrayViewFromImage(ct)
    spacing = array_spacing(ct)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    pixel_mm2 = float(spacing[1] * spacing[2])
    info: dict = {}

    air = arr < params.threshold_hu
    if air.all() or not air.any():
        raise _fail(subject, "blank image: every voxel is " + ("below" if air.any() else "at or above")
                    + f" the lung threshold {params.threshold_hu:g} HU (no body or no air)",
                    "check that the file is a chest CT in Hounsfield units (curation output)")
    outside = _border_connected_air(air)
    candidate = air & ~outside
    if not candidate.any():
        raise _fail(subject, "no air region enclosed by the body: no lungs found", _fov_hint(air))
    # Midline from everything that is not outside air (body and table are both centred).
    weights = (~outside).sum(axis=(0, 1))
    midline_x = float(np.average(np.arange(arr.shape[2]), weights=weights))
    info["midline_x"] = midline_x

    box = _bbox(candidate, 2)
    sub_ct = arr[box]
    sub_cand = candidate[box]
    midline_sub = midline_x - box[2].start

    airway, airway_info = track_airway(sub_ct, sub_cand, spacing, midline_sub, params)
    if "trachea_seed_zyx" in airway_info:  # box -> image index
        airway_info["trachea_seed_zyx"] = [int(v + b.start) for v, b in zip(airway_info["trachea_seed_zyx"], box)]
    info.update(airway_info)
    if airway.any():
        n_dil = int(round(params.airway_dilation_mm / float(min(spacing))))
        if n_dil > 0:
            airway = ndi.binary_dilation(airway, structure=_FACE, iterations=n_dil, mask=sub_cand)
        sub_cand = sub_cand & ~airway
    else:
        log.warning("subject %s: no trachea found (scan may start below the carina)", subject)

    # Cores: the air eroded by a few mm, so that thin bridges (partial volume across the
    # diaphragm to gastric air, table cavities) no longer join regions.  The lungs are
    # chosen among the cores and grown back inside the air mask in competition with the
    # other cores (marker flooding), which keeps bowel gas out.
    core = binary_morphology(sub_cand, params.bridge_erosion_mm, spacing, "erode")
    lab, n = ndi.label(core, structure=_FACE)
    if n == 0:
        raise _fail(subject, "no air region thicker than lungseg.classical.bridge_erosion_mm enclosed by the body: "
                    "no lungs found", _fov_hint(air))
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    volumes_ml = counts * voxel_ml
    order = [int(v) for v in np.argsort(counts)[::-1] if counts[v] > 0]
    first = order[0]
    info["n_components"] = int(np.count_nonzero(volumes_ml >= params.min_lung_volume_ml))
    if volumes_ml[first] < params.min_lung_volume_ml:
        raise _fail(subject, f"no lung found: the largest air region enclosed by the body is "
                    f"{volumes_ml[first]:.0f} ml < lungseg.classical.min_lung_volume_ml = {params.min_lung_volume_ml:g} ml "
                    "(not a chest CT, e.g. a head scan?)", _fov_hint(air))

    xs = np.broadcast_to(np.arange(sub_cand.shape[2]), sub_cand.shape).ravel()
    com_x = np.bincount(lab.ravel(), weights=xs) / np.maximum(counts, 1)
    first_mask = lab == first
    right_fraction = float(np.count_nonzero(first_mask[:, :, : int(np.ceil(midline_sub))])) / float(counts[first])
    markers: np.ndarray | None = None
    second_value: int | None = None
    if min(right_fraction, 1 - right_fraction) >= params.split_min_side_fraction:
        info["lungs_joined"] = True
        markers = _split_joined_lungs(first_mask, spacing, midline_sub, params)
        if markers is None:
            if params.require_two_lungs:
                raise _fail(subject, "the two lungs form one region that could not be split",
                            "check the scan (severe artefacts?) or raise lungseg.classical.split_max_erosion_mm")
            markers = np.where(first_mask, RIGHT_LUNG if right_fraction >= 0.5 else LEFT_LUNG, 0).astype(np.uint8)
    else:
        info["lungs_joined"] = False
        first_is_right = right_fraction >= 0.5
        z_first = np.flatnonzero(first_mask.any(axis=(1, 2)))
        second = None
        for value in order[1:]:
            if volumes_ml[value] < params.min_lung_volume_ml:
                break
            comp = lab == value
            z_comp = np.flatnonzero(comp.any(axis=(1, 2)))
            overlaps_z = z_comp[0] <= z_first[-1] and z_comp[-1] >= z_first[0]
            if (com_x[value] < midline_sub) != first_is_right and overlaps_z:
                second, second_value = comp, value
                break
        if second is None and params.require_two_lungs:
            raise _fail(subject, f"only one lung found ({volumes_ml[first]:.0f} ml, patient "
                        f"{'right' if first_is_right else 'left'}); the other lung is missing", _fov_hint(air))
        markers = np.zeros(sub_cand.shape, dtype=np.uint8)
        markers[first_mask] = RIGHT_LUNG if first_is_right else LEFT_LUNG
        if second is not None:
            markers[second] = LEFT_LUNG if first_is_right else RIGHT_LUNG
    lung_cores = [first] if second_value is None else [first, second_value]
    markers[(lab > 0) & ~np.isin(lab, lung_cores)] = OTHER_AIR
    flooded = flood_from_markers(markers, sub_cand)
    labels_sub = np.where(flooded <= LEFT_LUNG, flooded, 0).astype(np.uint8)

    # Close small gaps, fill holes (vessels, airways inside the lung) and drop detached
    # specks, per lung.
    final = np.zeros(sub_cand.shape, dtype=np.uint8)
    for value in (RIGHT_LUNG, LEFT_LUNG):
        lung = labels_sub == value
        if not lung.any():
            continue
        lbox = _bbox(lung, 1)
        part = lung[lbox]
        part = binary_morphology(part, params.closing_radius_mm, spacing, "close")
        part = ndi.binary_fill_holes(part, structure=_INPLANE)
        part = drop_small_slice_pieces(part, params.min_piece_area_mm2 / pixel_mm2)
        part = largest_component(part)
        target = final[lbox]
        target[part & (target == 0)] = value

    labels = np.zeros(arr.shape, dtype=np.uint8)
    labels[box] = final

    # A lung open to the image border in some slices: the border-connected air of those
    # slices lies where the lung is in the neighbouring slices.
    lung_any = labels > 0
    near = np.zeros_like(lung_any)
    near[1:] |= lung_any[:-1]
    near[:-1] |= lung_any[1:]
    leak_mm2 = (outside & near & ~lung_any).sum(axis=(1, 2)) * pixel_mm2
    open_slices = np.flatnonzero(leak_mm2 >= params.border_leak_area_mm2)
    info["border_open_slices"] = int(open_slices.size)
    if open_slices.size:
        raise _fail(subject, f"the lungs touch the image border (cut by the field of view) on {open_slices.size} slices "
                    f"(e.g. slice {int(open_slices[0])}: {leak_mm2[open_slices[0]]:.0f} mm2 of lung open to the outside air)",
                    "use a reconstruction with a larger field of view, or exclude the subject")
    for value, name in ((RIGHT_LUNG, "right"), (LEFT_LUNG, "left")):
        info[f"{name}_lung_ml"] = float(np.count_nonzero(labels == value) * voxel_ml)
    return ClassicalResult(labels=labels, info=info)


def labels_to_image(labels: np.ndarray, reference: sitk.Image, binary: bool = False) -> sitk.Image:
    """uint8 SimpleITK image on the reference grid (optionally 0/1)."""
    data = (labels > 0).astype(np.uint8) if binary else labels.astype(np.uint8)
    image = sitk.GetImageFromArray(data)
    image.CopyInformation(reference)
    return image


def classical_segmentation(ct: sitk.Image, params: ClassicalParams | LungSegParams | dict | None = None, subject: str | None = None) -> sitk.Image:
    """Lung mask of a curated CT as a uint8 image on the CT grid: 1 = right lung, 2 = left lung.

    Use ``mask > 0`` for the binary lung mask.
    """
    result = classical_segmentation_labels(ct, params, subject)
    return labels_to_image(result.labels, ct)
