"""Slice index, patient-aware split, input checks and the slice dataset of the 2D models.

A slice index is a CSV with one row per 2D image. ``covidmtl twod-slices`` writes it for
slices cut from the curated volumes; ``covidmtl twod-index`` (:mod:`covidmtl.twod.index2d`)
converts the 2D datasets' rows (UCSD COVID-CT, MedSeg, CC-CCII, iCTCF) and merges both into
the index the workflow trains on; any other 2D data joins by giving a CSV of the same form. Columns (only ``path``, ``patient_id`` and a label are required):

- ``path``: PNG/JPEG image (relative paths are relative to the CSV's folder);
- ``mask_path``: lesion mask image of the same size, or empty;
- a label: ``label_3class`` (0 normal, 1 COVID-19, 2 CAP/other disease), and/or
  ``label_binary`` (1 COVID-19, 0 not), or a text column ``label``/``diagnosis3``
  (covid19 | normal | cap; also covid, non-covid, ...);
- ``patient_id``; optional ``subject_id`` (default: patient_id), ``slice_id`` (default: the
  file name), ``dataset``, ``split`` (train | val | test; computed when absent).

Class 1 is COVID-19 in both tasks, so that the binary positive class of the shared metrics
(:mod:`covidmtl.classical.metrics`) and the COVID-19 column of the 3-class task agree.

Images of any size and mode are accepted and converted (to 8-bit grayscale, padded to a
square, resized); the conversion is logged. Everything that stops training — a missing
file, a mask whose size differs from its image, a patient in two splits, a class missing
from a split — is a :class:`~covidmtl.errors.PipelineInputError` raised before training.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from covidmtl.errors import PipelineInputError

log = logging.getLogger(__name__)

STAGE = "twod-train"
SPLITS = ("train", "val", "test")
CLASS_NAMES = {"binary": ("non-COVID", "COVID-19"), "3class": ("normal", "COVID-19", "CAP/other")}
N_CLASSES = {"binary": 2, "3class": 3}
LABEL_COLUMN = {"binary": "label_binary", "3class": "label_3class"}
INDEX_COLUMNS = ["slice_id", "subject_id", "patient_id", "dataset", "label_binary", "label_3class", "has_mask",
                 "split", "path", "mask_path"]

# text label -> (binary, 3-class or None)
_TEXT_LABELS = {
    "covid19": (1, 1), "covid-19": (1, 1), "covid": (1, 1), "positive": (1, 1), "ncp": (1, 1),
    "normal": (0, 0), "healthy": (0, 0),
    "cap": (0, 2), "pneumonia": (0, 2), "other": (0, 2), "cp": (0, 2),
    "noncovid": (0, None), "non-covid": (0, None), "non_covid": (0, None), "negative": (0, None),
}


def labels_from_text(value: str) -> tuple[int, int | None] | None:
    key = str(value).strip().lower().replace(" ", "")
    return _TEXT_LABELS.get(key)


def _short(items: Iterable, n: int = 5) -> str:
    items = [str(i) for i in items]
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


# --------------------------------------------------------------------------- index


def read_slice_index(path: str | Path) -> pd.DataFrame:
    """Read and normalise a slice index (see the module docstring); paths become absolute."""
    path = Path(path)
    if not path.is_file():
        raise PipelineInputError(STAGE, "the slice index does not exist", path=path,
                                 hint="run `covidmtl twod-slices` first or give the CSV of a 2D dataset")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "path" not in df.columns or "patient_id" not in df.columns:
        raise PipelineInputError(STAGE, f"the slice index lacks column(s) "
                                        f"{[c for c in ('path', 'patient_id') if c not in df.columns]}", path=path,
                                 hint="a slice index needs at least path, patient_id and a label column "
                                      "(label_3class, label_binary, label or diagnosis3)")
    if df.empty:
        raise PipelineInputError(STAGE, "the slice index has no rows", path=path,
                                 hint="check that twod-slices found lung slices (see its log)")
    root = path.parent
    df["path"] = [str(p if Path(p).is_absolute() else root / p) for p in df["path"]]
    if "mask_path" not in df.columns:
        df["mask_path"] = ""
    df["mask_path"] = [("" if not p else str(p if Path(p).is_absolute() else root / p)) for p in df["mask_path"]]
    if "subject_id" not in df.columns:
        df["subject_id"] = df["patient_id"]
    df["subject_id"] = df["subject_id"].where(df["subject_id"] != "", df["patient_id"])
    if "slice_id" not in df.columns:
        df["slice_id"] = [Path(p).stem for p in df["path"]]
    if df["slice_id"].duplicated().any():
        dup = df.loc[df["slice_id"].duplicated(), "slice_id"].tolist()
        raise PipelineInputError(STAGE, f"slice_id is not unique: {_short(dup)}", path=path,
                                 hint="give every image its own slice_id (e.g. <subject>_<number>)")
    if "dataset" not in df.columns:
        df["dataset"] = path.parent.name
    _fill_labels(df, path)
    df["has_mask"] = df["mask_path"] != ""
    if "split" not in df.columns:
        df["split"] = ""
    bad = sorted(set(df["split"]) - {"", *SPLITS})
    if bad:
        raise PipelineInputError(STAGE, f"the split column has values {bad}; expected train/val/test or empty",
                                 path=path, hint="fix the split column or leave it empty to compute the split")
    return df[INDEX_COLUMNS + [c for c in df.columns if c not in INDEX_COLUMNS]].reset_index(drop=True)


def _fill_labels(df: pd.DataFrame, path: Path) -> None:
    binary = pd.to_numeric(df.get("label_binary", pd.Series("", index=df.index)).replace("", np.nan),
                           errors="coerce")
    three = pd.to_numeric(df.get("label_3class", pd.Series("", index=df.index)).replace("", np.nan),
                          errors="coerce")
    for text_col in ("label", "diagnosis3"):
        if text_col not in df.columns:
            continue
        for i, value in df[text_col].items():
            if value == "" or (pd.notna(binary[i]) and pd.notna(three[i])):
                continue
            parsed = labels_from_text(value)
            if parsed is None:
                raise PipelineInputError(STAGE, f"unknown label {value!r} in column {text_col}",
                                         subject=df.at[i, "subject_id"], path=path,
                                         hint="use covid19, normal or cap (or non-covid for binary-only data)")
            if pd.isna(binary[i]):
                binary[i] = parsed[0]
            if pd.isna(three[i]) and parsed[1] is not None:
                three[i] = parsed[1]
    # a 3-class label implies the binary one
    binary = binary.where(binary.notna(), (three == 1).astype(float).where(three.notna()))
    if binary.isna().any():
        rows = df.loc[binary.isna(), "slice_id"].tolist()
        raise PipelineInputError(STAGE, f"{len(rows)} slice(s) have no label: {_short(rows)}", path=path,
                                 hint="fill label_3class, label_binary or a text label column")
    if not binary.isin([0, 1]).all() or not three.dropna().isin([0, 1, 2]).all():
        raise PipelineInputError(STAGE, "labels out of range (label_binary must be 0/1, label_3class 0/1/2)",
                                 path=path, hint="fix the label columns of the slice index")
    df["label_binary"] = binary.astype(int)
    df["label_3class"] = three.astype("Int64")


# --------------------------------------------------------------------------- split


def patient_split(df: pd.DataFrame, fractions: Sequence[float], seed: int,
                  label_column: str = "label_3class") -> pd.Series:
    """Patient-disjoint split stratified by class: per class, the patients are shuffled (seeded)
    and dealt to train/val/test in the given proportions, each split getting at least one
    patient of every class that has enough patients. Returns the split of every row."""
    labels = df[label_column] if label_column in df and df[label_column].notna().all() else df["label_binary"]
    per_patient = (pd.DataFrame({"patient_id": df["patient_id"], "label": labels.astype(int)})
                   .groupby("patient_id", sort=True)["label"].agg(lambda s: Counter(s).most_common(1)[0][0]))
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    f_train, f_val, f_test = (float(f) for f in fractions)
    for label in sorted(per_patient.unique()):
        patients = per_patient.index[per_patient == label].to_numpy()
        patients = patients[rng.permutation(len(patients))]
        n = len(patients)
        n_test = int(round(n * f_test))
        n_val = int(round(n * f_val))
        wanted = [s for s, f in (("train", f_train), ("val", f_val), ("test", f_test)) if f > 0]
        if n >= len(wanted):  # every split with a non-zero fraction gets at least one patient
            n_test = max(n_test, 1)
            n_val = max(n_val, 1) if f_val > 0 else 0
            while n - n_test - n_val < 1:
                if n_test >= n_val and n_test > 1:
                    n_test -= 1
                else:
                    n_val -= 1
        elif n - n_test - n_val < 1:
            n_test, n_val = 0, 0
        for i, p in enumerate(patients):
            assignment[p] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return df["patient_id"].map(assignment)


def ensure_split(df: pd.DataFrame, fractions: Sequence[float], seed: int, index_path: str | Path | None = None
                 ) -> pd.DataFrame:
    """Keep the index's split when it has one (checking it), otherwise compute it."""
    df = df.copy()
    given = df["split"] != ""
    if given.any() and not given.all():
        raise PipelineInputError(STAGE, f"{int((~given).sum())} row(s) have no split while others have one",
                                 path=index_path, hint="fill the split column for every row or for none")
    if not given.any():
        df["split"] = patient_split(df, fractions, seed)
    check_patients_disjoint(df, index_path)
    return df


def check_patients_disjoint(df: pd.DataFrame, index_path: str | Path | None = None) -> None:
    per_patient = df.groupby("patient_id")["split"].nunique()
    shared = per_patient.index[per_patient > 1].tolist()
    if shared:
        raise PipelineInputError(STAGE, f"{len(shared)} patient(s) appear in more than one split: {_short(shared)}",
                                 subject=shared[0], path=index_path,
                                 hint="split by patient (clear the split column to let covidmtl compute it)")


def check_classes(df: pd.DataFrame, task: str, index_path: str | Path | None = None,
                  splits: Sequence[str] = SPLITS) -> None:
    """Every class of ``task`` must have slices in every split (before training)."""
    column = LABEL_COLUMN[task]
    if df[column].isna().any():
        n = int(df[column].isna().sum())
        raise PipelineInputError(STAGE, f"{n} slice(s) have no {task} label (e.g. {df.loc[df[column].isna(), 'slice_id'].iloc[0]}); "
                                        f"a binary-only dataset cannot train a 3-class variant", path=index_path,
                                 hint="train the binary variant or add label_3class")
    for split in splits:
        part = df[df["split"] == split]
        if part.empty:
            raise PipelineInputError(STAGE, f"the {split} split is empty", path=index_path,
                                     hint="add patients or change twod.split.fractions")
        missing = [CLASS_NAMES[task][k] for k in range(N_CLASSES[task]) if not (part[column] == k).any()]
        if missing:
            raise PipelineInputError(
                STAGE, f"class(es) {missing} have no slices in the {split} split ({task} task; the split has "
                       f"{part['patient_id'].nunique()} patient(s))", path=index_path,
                hint="add patients of that class, change twod.split.fractions, or fix the split column")


def check_masks_present(df: pd.DataFrame, index_path: str | Path | None = None,
                        splits: Sequence[str] = ("train", "test"), variant: str | None = None) -> None:
    """Every split in ``splits`` must have slices with a lesion mask (before training)."""
    for split in splits:
        if df.loc[df["split"] == split, "has_mask"].any():
            continue
        who = f"variant {variant}" if variant else "segmentation"
        if split == "val":
            raise PipelineInputError(
                STAGE, f"no slice of the val split has a lesion mask; {who} is validated and early-stopped on the "
                       f"val slices with a mask, so it cannot be trained", path=index_path,
                hint="add patients with lesion masks, change twod.split.fractions so that the val split gets some "
                     "(the split is stratified by class, not by mask), or give a split column in the slice index")
        raise PipelineInputError(STAGE, f"no slice of the {split} split has a lesion mask; {who} "
                                        f"cannot be trained/evaluated", path=index_path,
                                 hint="use a dataset with lesion masks (mask_path) or a variant without "
                                      "segmentation")


def subsample_train(df: pd.DataFrame, fraction: float, seed: int, task: str) -> pd.DataFrame:
    """Keep ``fraction`` of the training patients of every class (at least one); val/test unchanged."""
    if fraction >= 1:
        return df
    if fraction <= 0:
        raise ValueError("--train-fraction must be in (0, 1]")
    column = LABEL_COLUMN[task]
    rng = np.random.default_rng([seed, 6301])
    train = df[df["split"] == "train"]
    keep: list[str] = []
    per_patient = train.groupby("patient_id")[column].first()
    for label in sorted(per_patient.unique()):
        patients = np.sort(per_patient.index[per_patient == label].to_numpy())
        n = max(1, int(round(fraction * len(patients))))
        keep.extend(patients[rng.permutation(len(patients))[:n]].tolist())
    return df[(df["split"] != "train") | df["patient_id"].isin(keep)].reset_index(drop=True)


# --------------------------------------------------------------------------- images


def _open(path: str, what: str, subject: str | None) -> Image.Image:
    if not Path(path).is_file():
        raise PipelineInputError(STAGE, f"the {what} file does not exist", subject=subject, path=path,
                                 hint="rerun twod-slices or fix the path in the slice index")
    try:
        return Image.open(path)
    except Exception as err:  # noqa: BLE001 - any decoder failure is a bad file
        raise PipelineInputError(STAGE, f"cannot read the {what} ({err})", subject=subject, path=path,
                                 hint="replace the file or drop its row from the slice index") from err


def check_images(df: pd.DataFrame) -> dict[str, Counter]:
    """Header pass over every image and mask: exists, readable, mask size = image size.
    Returns and logs what will be converted (modes other than 8-bit grayscale, sizes)."""
    modes: Counter = Counter()
    sizes: Counter = Counter()
    for row in df.itertuples(index=False):
        with _open(row.path, "image", row.subject_id) as im:
            modes[im.mode] += 1
            sizes[im.size] += 1
            size = im.size
        if row.mask_path:
            with _open(row.mask_path, "lesion mask", row.subject_id) as mk:
                if mk.size != size:
                    raise PipelineInputError(
                        STAGE, f"the lesion mask is {mk.size[0]}x{mk.size[1]} pixels but its image "
                               f"{row.path} is {size[0]}x{size[1]}", subject=row.subject_id, path=row.mask_path,
                        hint=f"give a mask of the image's size for slice {row.slice_id}, or clear its mask_path")
    other_modes = {m: n for m, n in modes.items() if m != "L"}
    if other_modes:
        log.warning("converted %d image(s) to 8-bit grayscale (modes %s)", sum(other_modes.values()), other_modes)
    if len(sizes) > 1:
        log.warning("images have %d different sizes (%s); converted: padded to square and resized",
                    len(sizes), _short(f"{w}x{h}: {n}" for (w, h), n in sizes.most_common()))
    return {"modes": modes, "sizes": sizes}


def to_gray_float(im: Image.Image) -> np.ndarray:
    """Any PIL image -> float32 (H, W) in [0, 1]."""
    if im.mode in {"I;16", "I;16B", "I;16L"}:
        return np.asarray(im, dtype=np.float32) / 65535.0
    if im.mode in {"I", "F"}:
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    if im.mode != "L":
        im = im.convert("L")
    return np.asarray(im, dtype=np.float32) / 255.0


def pad_square(a: np.ndarray, value: float = 0.0) -> np.ndarray:
    h, w = a.shape
    if h == w:
        return a
    s = max(h, w)
    out = np.full((s, s), value, dtype=a.dtype)
    y0, x0 = (s - h) // 2, (s - w) // 2
    out[y0:y0 + h, x0:x0 + w] = a
    return out


def resize_image(a: np.ndarray, size: int, pad_value: float = 0.0) -> np.ndarray:
    """Float image -> size x size (antialiased bilinear: PIL's resize filters when shrinking)."""
    a = pad_square(a, pad_value)
    if a.shape == (size, size):
        return a.astype(np.float32)
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BILINEAR),
                      dtype=np.float32)


def resize_mask(m: np.ndarray, size: int) -> np.ndarray:
    """Binary mask -> size x size (area average, then >= 0.5)."""
    m = pad_square(m.astype(np.float32))
    if m.shape == (size, size):
        return m > 0.5
    box = Image.Resampling.BOX if size < m.shape[0] else Image.Resampling.NEAREST
    return np.asarray(Image.fromarray(m, mode="F").resize((size, size), box)) >= 0.5


def load_slice(path: str, mask_path: str, size: int, subject: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 in [0, 1], mask bool), both size x size; mask all False when there is none."""
    with _open(path, "image", subject) as im:
        image = to_gray_float(im)
    mask = np.zeros(image.shape, dtype=bool)
    if mask_path:
        with _open(mask_path, "lesion mask", subject) as mk:
            m = np.asarray(mk.convert("L"))
        if m.shape != image.shape:
            raise PipelineInputError(STAGE, f"the lesion mask is {m.shape[1]}x{m.shape[0]} pixels but its image "
                                            f"{path} is {image.shape[1]}x{image.shape[0]}", subject=subject,
                                     path=mask_path, hint="give a mask of the image's size, or clear its mask_path")
        mask = m > (127 if m.max() > 1 else 0)
    return resize_image(image, size), resize_mask(mask, size)


@dataclass
class SliceRecords:
    """Rows of one split in array form."""

    slice_ids: list[str]
    subject_ids: list[str]
    paths: list[str]
    mask_paths: list[str]
    labels: np.ndarray          # class index, -1 when the task has no label
    has_mask: np.ndarray        # bool

    @classmethod
    def from_frame(cls, df: pd.DataFrame, task: str | None) -> "SliceRecords":
        if task is None:
            labels = np.full(len(df), -1, dtype=np.int64)
        else:
            labels = df[LABEL_COLUMN[task]].fillna(-1).astype(int).to_numpy()
        return cls(df["slice_id"].tolist(), df["subject_id"].tolist(), df["path"].tolist(),
                   df["mask_path"].tolist(), labels, df["has_mask"].to_numpy(dtype=bool))

    def __len__(self) -> int:
        return len(self.slice_ids)


class SliceDataset(Dataset):
    """Items in the shared loop's layout: ``{"inputs": {"image"}, "targets": {"label", "mask",
    "has_mask", "guide", "guide_valid"}, "subject_id": slice_id}``; image (1, S, S) in [0, 1].

    ``guides`` (N, g, g) float in [0, 1]: per-slice masks that supervise an attention map
    (MGA); ``guide_valid`` says which slices have one."""

    def __init__(self, records: SliceRecords, size: int, cache: bool = True, guides: np.ndarray | None = None,
                 guide_valid: np.ndarray | None = None) -> None:
        self.records = records
        self.size = int(size)
        self.cache = cache
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.guides = guides
        self.guide_valid = guide_valid
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8, mask bool) at the network size."""
        if index in self._cache:
            return self._cache[index]
        r = self.records
        image, mask = load_slice(r.paths[index], r.mask_paths[index], self.size, r.subject_ids[index])
        out = (np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), mask)
        if self.cache:
            self._cache[index] = out
        return out

    def __getitem__(self, index: int) -> dict:
        image_u8, mask = self.arrays(index)
        r = self.records
        targets = {
            "label": torch.tensor(int(r.labels[index]), dtype=torch.long),
            "mask": torch.from_numpy(mask[None].astype(np.float32)),
            "has_mask": torch.tensor(float(r.has_mask[index])),
        }
        if self.guides is not None:
            targets["guide"] = torch.from_numpy(np.asarray(self.guides[index], dtype=np.float32)[None])
            targets["guide_valid"] = torch.tensor(float(self.guide_valid[index]) if self.guide_valid is not None else 1.0)
        return {"inputs": {"image": torch.from_numpy(image_u8[None].astype(np.float32) / 255.0)},
                "targets": targets, "subject_id": r.slice_ids[index]}
