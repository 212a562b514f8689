"""Inputs of DeepSC-COVID: validation, preprocessing (section V-A), patches and datasets.

Per subject the curated CT (``ct_path`` of the manifest), its lesion mask where the dataset
has one (``lesion_mask_path``; empty = none) and the lung-segmentation stage's refined lung
mask ``<lungseg_dir>/<dataset>/<subject>/lung_refined.nii.gz`` (same grid as the CT).

Preprocessing (section V-A): HU truncated to ``preprocess.hu_window`` ([-1400, 200]) and
scaled to [0, 1], multiplied by the lung mask; optionally cut to the lung bounding box.

- Segmentation input: 3D patches of ``segmentation.patch_size``. Inference tiles the volume
  with non-overlapping patches (zero-padded at the far ends) and stitches the predictions
  back, as the paper does. Training draws ``segmentation.train_patches_per_subject`` random
  patches per subject and epoch, a share (``positive_fraction``) centred on lesion voxels:
  a deliberate deviation from the paper, which describes non-overlapping patches only
  (section V-A, i.e. tiles for training too).
  Lesions fill a few percent of a lung; lesion-centred patches show them more often at the
  same cost per epoch, and fresh patch positions every epoch act as augmentation.
- Classification input: N equidistant axial slices (eq. 12), slice n of S at
  floor((n + 1/2) S / N), resized in-plane to ``classification.slice_size``.

Both inputs describe the same volume extent, so a patch's box in normalised coordinates
([-1, 1] over the volume, voxel edges at the ends) locates it in the classification input
(used by the task-aware loss).

Everything that can be wrong with the inputs is checked by :func:`prepare_subjects` before
a model is built and reported as :class:`~covidmtl.errors.PipelineInputError`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from covidmtl.deepsc.config import DeepSCConfig
from covidmtl.errors import PipelineInputError

log = logging.getLogger(__name__)

STAGE = "deepsc-train"
CLASSES = ("covid19", "cap", "normal")
CLASS_LABELS = {"covid19": "COVID-19", "cap": "CAP", "normal": "non-pneumonia"}
PNEUMONIA = (0, 1)  # class indices whose evidence masks should show lesions
LUNG_FILENAME = "lung_refined.nii.gz"
SPLITS = ("train", "test")


def _short(items: Iterable, n: int = 5) -> str:
    items = [str(i) for i in items]
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


# --------------------------------------------------------------------------- subjects


@dataclass(frozen=True)
class Subject:
    subject_id: str
    dataset: str
    label: int
    ct_path: Path
    lung_path: Path
    lesion_path: Path | None

    @property
    def has_mask(self) -> bool:
        return self.lesion_path is not None


@dataclass
class Subjects:
    train: list[Subject]
    test: list[Subject]


def read_table(path: str | Path, what: str, required: Sequence[str], stage: str = STAGE) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise PipelineInputError(stage, f"the {what} file does not exist", path=path,
                                 hint=f"run the stage that writes the {what} first")
    df = pd.read_csv(path, dtype={"subject_id": str, "dataset": str, "diagnosis3": str, "ct_path": str,
                                  "lesion_mask_path": str}, keep_default_na=False)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise PipelineInputError(stage, f"the {what} lacks column(s) {missing}", path=path,
                                 hint=f"the {what} needs columns {list(required)}")
    dup = df.loc[df["subject_id"].duplicated(), "subject_id"].tolist()
    if dup:
        raise PipelineInputError(stage, f"the {what} lists subject(s) twice: {_short(dup)}", subject=dup[0], path=path,
                                 hint=f"keep one row per subject in the {what}")
    return df


def lung_mask_path(lungseg_dir: str | Path, dataset: str, subject: str) -> Path:
    return Path(lungseg_dir) / dataset / subject / LUNG_FILENAME


def image_header(path: Path) -> tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()


def same_grid(a, b) -> bool:
    size_a, sp_a, or_a, dir_a = a
    size_b, sp_b, or_b, dir_b = b
    return (tuple(size_a) == tuple(size_b) and np.allclose(sp_a, sp_b, rtol=1e-3)
            and np.allclose(dir_a, dir_b, atol=1e-3)
            and bool(np.all(np.abs(np.subtract(or_a, or_b)) <= 0.5 * min(sp_a))))


def check_subject_files(subject: Subject, stage: str = STAGE) -> None:
    """The files exist, are readable 3D images, and the masks lie on the CT's grid."""
    headers = {}
    for kind, path in (("CT", subject.ct_path), ("lung mask", subject.lung_path), ("lesion mask", subject.lesion_path)):
        if path is None:
            continue
        hint = ("run the lung-segmentation stage for this subject, or exclude it (exclude_subjects)"
                if kind == "lung mask" else "rerun the curation stage for this subject, or exclude it")
        if not Path(path).is_file():
            raise PipelineInputError(stage, f"the {kind} file does not exist", subject=subject.subject_id, path=path,
                                     hint=hint)
        try:
            headers[kind] = image_header(Path(path))
        except RuntimeError as err:
            raise PipelineInputError(stage, f"cannot read the {kind} header ({str(err).strip().splitlines()[-1]})",
                                     subject=subject.subject_id, path=path, hint=hint) from None
        if len(headers[kind][0]) != 3:
            raise PipelineInputError(stage, f"the {kind} is not a 3D image", subject=subject.subject_id, path=path,
                                     hint=hint)
    for kind in ("lung mask", "lesion mask"):
        if kind in headers and not same_grid(headers["CT"], headers[kind]):
            raise PipelineInputError(
                stage, f"the {kind} is not on the CT's voxel grid (size {headers[kind][0]} vs {headers['CT'][0]}, "
                       f"spacing {tuple(round(s, 3) for s in headers[kind][1])} vs "
                       f"{tuple(round(s, 3) for s in headers['CT'][1])})",
                subject=subject.subject_id, path=subject.lung_path if kind == "lung mask" else subject.lesion_path,
                hint="the mask must come from the same curated ct.nii.gz; rerun its stage")


def prepare_subjects(manifest_path: str | Path, split_path: str | Path, lungseg_dir: str | Path,
                     tasks: Sequence[str], check_files: bool = True, stage: str = STAGE) -> Subjects:
    """Validate manifest, split and files for a variant training ``tasks`` ('seg', 'cls')."""
    manifest_path, split_path = Path(manifest_path), Path(split_path)
    split = read_table(split_path, "split", ["subject_id", "split"], stage)
    bad = sorted(set(split["split"].astype(str)) - set(SPLITS))
    if bad:
        raise PipelineInputError(stage, f"the split file has values {bad}; expected train/test", path=split_path,
                                 hint="use the split written by `covidmtl split`")
    manifest = read_table(manifest_path, "manifest",
                          ["subject_id", "dataset", "diagnosis3", "ct_path", "lesion_mask_path"], stage)
    rows = manifest.set_index("subject_id")
    ids = {s: split.loc[split["split"] == s, "subject_id"].astype(str).tolist() for s in SPLITS}
    for s in SPLITS:
        if not ids[s]:
            raise PipelineInputError(stage, f"the {s} split is empty", path=split_path,
                                     hint="the cohort is too small to train and test; add subjects")
    missing = [s for s in ids["train"] + ids["test"] if s not in rows.index]
    if missing:
        raise PipelineInputError(stage, f"split subject(s) missing from the manifest: {_short(missing)}",
                                 subject=missing[0], path=manifest_path, hint="rebuild the split from the current manifest")

    out: dict[str, list[Subject]] = {}
    for s in SPLITS:
        subjects = []
        for sid in ids[s]:
            row = rows.loc[sid]
            diagnosis = str(row["diagnosis3"]).strip().lower()
            if diagnosis not in CLASSES:
                raise PipelineInputError(stage, f"diagnosis3 is {row['diagnosis3']!r}; expected one of {list(CLASSES)}",
                                         subject=sid, path=manifest_path,
                                         hint="fill in diagnosis3 (covid19, cap or normal) or exclude the subject")
            lesion = str(row["lesion_mask_path"]).strip()
            subjects.append(Subject(sid, str(row["dataset"]), CLASSES.index(diagnosis), Path(str(row["ct_path"])),
                                    lung_mask_path(lungseg_dir, str(row["dataset"]), sid),
                                    Path(lesion) if lesion and lesion.lower() != "nan" else None))
        out[s] = subjects

    if "cls" in tasks:
        for s in SPLITS:
            present = {x.label for x in out[s]}
            absent = [CLASSES[k] for k in range(len(CLASSES)) if k not in present]
            if absent:
                raise PipelineInputError(
                    stage, f"class(es) {absent} have no {s} subjects; the 3-class diagnosis needs every class in "
                           f"train and test (test metrics are macro-averaged over the classes)", path=split_path,
                    hint="add subjects of that class to the cohort, or rebuild the split stratified by diagnosis3")
    if "seg" in tasks:
        for s in SPLITS:
            if not any(x.has_mask for x in out[s]):
                raise PipelineInputError(stage, f"no {s} subject has a lesion mask; segmentation cannot be "
                                                f"{'trained' if s == 'train' else 'evaluated'}", path=manifest_path,
                                         hint="use a dataset with lesion annotations or a classification-only variant")
    without = [x.subject_id for s in SPLITS for x in out[s] if not x.has_mask]
    if without and "seg" in tasks:
        log.warning("%d subject(s) have no lesion mask (%s): the segmentation loss is skipped for them and they "
                    "are left out of the segmentation metrics", len(without), _short(without))
    if check_files:
        for s in SPLITS:
            for x in out[s]:
                check_subject_files(x, stage)
    return Subjects(out["train"], out["test"])


# --------------------------------------------------------------------------- preprocessing


@dataclass
class Case:
    """One preprocessed subject: arrays (z, y, x), cut to ``box`` of the full volume."""

    subject_id: str
    label: int
    image: np.ndarray            # float32 in [0, 1], lung-masked
    lesion: np.ndarray | None    # uint8 {0, 1}, or None without a lesion mask
    lung: np.ndarray             # bool
    spacing: tuple[float, float, float]   # mm along (z, y, x)
    full_shape: tuple[int, int, int]
    box: tuple[slice, slice, slice]        # where image lies in the full volume
    lesion_index: np.ndarray | None = None  # flat indices of lesion voxels (positive patch centres)
    cls_input: np.ndarray | None = None     # (N, h, w) float32

    @property
    def has_mask(self) -> bool:
        return self.lesion is not None


def read_lps(path: Path, pixel_type=sitk.sitkFloat32) -> sitk.Image:
    return sitk.DICOMOrient(sitk.ReadImage(str(path), pixel_type), "LPS")


def scale_hu(hu: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Truncate to [low, high] HU and scale linearly to [0, 1] (section V-A)."""
    lo, hi = float(window[0]), float(window[1])
    return ((np.clip(hu.astype(np.float32), lo, hi) - lo) / (hi - lo)).astype(np.float32)


def lung_box(lung: np.ndarray, margin_vox: Sequence[int]) -> tuple[slice, slice, slice]:
    idx = np.nonzero(lung.any(axis=(1, 2)))[0], np.nonzero(lung.any(axis=(0, 2)))[0], np.nonzero(lung.any(axis=(0, 1)))[0]
    return tuple(slice(max(0, int(i[0]) - m), min(n, int(i[-1]) + 1 + m))
                 for i, m, n in zip(idx, margin_vox, lung.shape))


def load_case(subject: Subject, cfg: DeepSCConfig, stage: str = STAGE) -> Case:
    """Read and preprocess one subject (section V-A)."""
    try:
        ct = read_lps(subject.ct_path)
        lung_img = read_lps(subject.lung_path, sitk.sitkUInt8)
        lesion_img = read_lps(subject.lesion_path, sitk.sitkUInt8) if subject.lesion_path is not None else None
    except RuntimeError as err:
        raise PipelineInputError(stage, f"cannot read the images ({str(err).strip().splitlines()[-1]})",
                                 subject=subject.subject_id, path=subject.ct_path,
                                 hint="rerun the curation and lung-segmentation stages for this subject") from None
    hu = sitk.GetArrayFromImage(ct)
    lung = sitk.GetArrayFromImage(lung_img) > 0
    if not lung.any():
        raise PipelineInputError(stage, "the lung mask is empty", subject=subject.subject_id, path=subject.lung_path,
                                 hint="check the lung segmentation of this subject, or exclude it")
    lesion = (sitk.GetArrayFromImage(lesion_img) > 0).astype(np.uint8) if lesion_img is not None else None
    spacing = tuple(float(s) for s in ct.GetSpacing()[::-1])
    image = scale_hu(hu, cfg.preprocess.hu_window)
    if cfg.preprocess.mask_with_lung:
        image *= lung
    box = tuple(slice(0, n) for n in image.shape)
    if cfg.preprocess.crop_to_lung:
        margin = [int(np.ceil(cfg.preprocess.crop_margin_mm / s)) for s in spacing]
        box = lung_box(lung, margin)
        if lesion is not None and lesion.any():  # keep every annotated lesion voxel inside the box
            lz = lung_box(lesion.astype(bool), [0, 0, 0])
            box = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(box, lz))
    case = Case(subject.subject_id, subject.label, np.ascontiguousarray(image[box]),
                None if lesion is None else np.ascontiguousarray(lesion[box]), np.ascontiguousarray(lung[box]),
                spacing, tuple(hu.shape), box)
    if case.lesion is not None:
        case.lesion_index = np.flatnonzero(case.lesion)
    case.cls_input = classification_input(case.image, cfg.classification.n_slices, cfg.classification.slice_size)
    return case


def equidistant_slices(n_total: int, n: int) -> np.ndarray:
    """Eq. 12: N equidistant slice indices, the centres of N equal parts of the volume."""
    return np.minimum(np.floor((np.arange(n) + 0.5) * n_total / n).astype(int), n_total - 1)


def classification_input(image: np.ndarray, n_slices: int, slice_size: Sequence[int]) -> np.ndarray:
    """(N, h, w) float32: N equidistant axial slices, resized in-plane (antialiased bilinear)."""
    slices = torch.from_numpy(np.ascontiguousarray(image[equidistant_slices(image.shape[0], n_slices)]))[:, None]
    size = tuple(int(s) for s in slice_size)
    if tuple(slices.shape[2:]) != size:
        slices = F.interpolate(slices, size=size, mode="bilinear", antialias=True, align_corners=False)
    return slices[:, 0].numpy().astype(np.float32)


# --------------------------------------------------------------------------- patches


def pad_to_multiple(volume: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """Zero-pad at the far end of each axis to a multiple of the patch size (at least one patch)."""
    target = [max(p, int(np.ceil(n / p)) * p) for n, p in zip(volume.shape, patch)]
    pad = [(0, t - n) for n, t in zip(volume.shape, target)]
    return np.pad(volume, pad) if any(p[1] for p in pad) else volume


def patch_starts(shape: Sequence[int], patch: Sequence[int]) -> list[tuple[int, int, int]]:
    """Corners of the non-overlapping patches tiling a volume padded by :func:`pad_to_multiple`."""
    ranges = [range(0, max(p, int(np.ceil(n / p)) * p), p) for n, p in zip(shape, patch)]
    return [(z, y, x) for z in ranges[0] for y in ranges[1] for x in ranges[2]]


def extract_patches(volume: np.ndarray, patch: Sequence[int]) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """(n_patches, D, H, W) non-overlapping patches and their corners."""
    padded = pad_to_multiple(volume, patch)
    starts = patch_starts(volume.shape, patch)
    d, h, w = patch
    return np.stack([padded[z:z + d, y:y + h, x:x + w] for z, y, x in starts]), starts


def stitch_patches(patches: np.ndarray, starts: Sequence[tuple[int, int, int]], shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`extract_patches`: put the patches back and cut the padding."""
    d, h, w = patches.shape[1:]
    padded_shape = [max(p, int(np.ceil(n / p)) * p) for n, p in zip(shape, (d, h, w))]
    out = np.zeros(padded_shape, dtype=patches.dtype)
    for p, (z, y, x) in zip(patches, starts):
        out[z:z + d, y:y + h, x:x + w] = p
    return out[: shape[0], : shape[1], : shape[2]]


def patch_box(start: Sequence[int], patch: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """(z_lo, z_hi, y_lo, y_hi, x_lo, x_hi) of a patch in normalised [-1, 1] volume coordinates."""
    out = []
    for s, p, n in zip(start, patch, shape):
        out += [2.0 * s / n - 1.0, 2.0 * (s + p) / n - 1.0]
    return np.asarray(out, dtype=np.float32)


def sample_patch(case: Case, patch: Sequence[int], rng: np.random.Generator, positive: bool
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A training patch (image, lesion, normalised box): centred on a random lesion voxel when
    ``positive`` and the case has lesions, uniform otherwise; zero-padded where the volume is
    smaller than the patch."""
    shape = case.image.shape
    patch = [int(p) for p in patch]
    if positive and case.lesion_index is not None and case.lesion_index.size:
        centre = np.unravel_index(case.lesion_index[rng.integers(case.lesion_index.size)], shape)
        start = [int(np.clip(c - p // 2, 0, max(n - p, 0))) for c, p, n in zip(centre, patch, shape)]
    else:
        start = [int(rng.integers(0, max(n - p, 0) + 1)) for n, p in zip(shape, patch)]
    sl = tuple(slice(s, s + p) for s, p in zip(start, patch))
    pad = [(0, p - len(range(n)[s])) for p, n, s in zip(patch, shape, sl)]
    image = case.image[sl]
    lesion = case.lesion[sl] if case.lesion is not None else np.zeros(image.shape, np.uint8)
    if any(p[1] for p in pad):
        image, lesion = np.pad(image, pad), np.pad(lesion, pad)
    return image, lesion, patch_box(start, patch, shape)


# --------------------------------------------------------------------------- datasets


class CaseStore:
    """Loads cases on demand (optionally keeping them in memory)."""

    def __init__(self, subjects: Sequence[Subject], cfg: DeepSCConfig, cache: bool | None = None,
                 stage: str = STAGE) -> None:
        self.subjects = {s.subject_id: s for s in subjects}
        self.cfg = cfg
        self.cache = cfg.preprocess.cache_in_memory if cache is None else cache
        self.stage = stage
        self._cases: dict[str, Case] = {}
        self._warned: set[tuple[str, str]] = set()

    def __call__(self, subject_id: str) -> Case:
        if subject_id in self._cases:
            return self._cases[subject_id]
        case = load_case(self.subjects[subject_id], self.cfg, self.stage)
        small = [n < p for n, p in zip(case.image.shape, self.cfg.segmentation.patch_size)]
        if any(small) and (subject_id, "patch") not in self._warned:
            self._warned.add((subject_id, "patch"))
            log.warning("%s: the volume %s is smaller than the patch %s along %s; it is zero-padded (background)",
                        subject_id, tuple(case.image.shape), tuple(self.cfg.segmentation.patch_size),
                        [ax for ax, s in zip("zyx", small) if s])
        n = self.cfg.classification.n_slices
        if case.image.shape[0] < n and (subject_id, "slices") not in self._warned:
            self._warned.add((subject_id, "slices"))
            log.warning("%s: %d axial slices, fewer than the N = %d of the classification input; slices repeat",
                        subject_id, case.image.shape[0], n)
        if self.cache:
            self._cases[subject_id] = case
        return case


class DeepSCDataset(Dataset):
    """Training / per-epoch evaluation items for one mode ('seg', 'cls', 'joint').

    Item: ``{"inputs": {"seg_image"?, "cls_image"?}, "targets": {"label", "lesion"?, "has_mask"?,
    "box"?}, "subject_id"}``; 'seg' and 'joint' give ``patches`` items per subject, 'cls'
    one. Patch randomness is seeded per (seed, epoch, item), so it is the same with any
    worker count and after a resume; ``fixed=True`` ignores the epoch (evaluation patches).
    """

    def __init__(self, subjects: Sequence[Subject], store: CaseStore, mode: str, patches: int = 1, seed: int = 0,
                 fixed: bool = False) -> None:
        if mode == "seg":
            subjects = [s for s in subjects if s.has_mask]
        self.subjects = list(subjects)
        self.store = store
        self.mode = mode
        self.patches = 1 if mode == "cls" else int(patches)
        self.seed = int(seed)
        self.fixed = fixed
        self.epoch = 0
        cfg = store.cfg
        self.patch_size = tuple(int(p) for p in cfg.segmentation.patch_size)
        self.positive_fraction = float(cfg.segmentation.positive_fraction)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.subjects) * self.patches

    def __getitem__(self, index: int) -> dict:
        subject = self.subjects[index // self.patches]
        case = self.store(subject.subject_id)
        inputs, targets = {}, {"label": torch.tensor(case.label, dtype=torch.long)}
        if self.mode in ("seg", "joint"):
            rng = np.random.default_rng([self.seed, 0 if self.fixed else self.epoch, index, 31])
            positive = bool(rng.random() < self.positive_fraction)
            image, lesion, box = sample_patch(case, self.patch_size, rng, positive)
            inputs["seg_image"] = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
            targets["lesion"] = torch.from_numpy(np.ascontiguousarray(lesion, dtype=np.float32))[None]
            targets["has_mask"] = torch.tensor(case.has_mask)
            targets["box"] = torch.from_numpy(box)
        if self.mode in ("cls", "joint"):
            inputs["cls_image"] = torch.from_numpy(case.cls_input)[None]
        return {"inputs": inputs, "targets": targets, "subject_id": subject.subject_id}


def class_counts(subjects: Sequence[Subject]) -> np.ndarray:
    return np.bincount([s.label for s in subjects], minlength=len(CLASSES))
