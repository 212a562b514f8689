"""Inputs of the deep models: validation, volumes, features, dataset and MONAI transforms.

Everything that can be wrong with the inputs is checked by :func:`prepare_inputs` before
a model is built, and reported as :class:`~covidmtl.errors.PipelineInputError` naming the
subject, the file and the stage: a split subject without a volume, a label missing for a
task the variant trains, a feature table missing subjects or holding NaN, a volume
smaller than the crop (unless ``deep.input.pad_to_crop``).

Volumes are the lung-segmentation stage's ``lung_volume.nii.gz`` (masked lung CT in HU,
cropped to the lungs). They are read with SimpleITK, reoriented to LPS so that array axes
are (z, y, x) = (inferior->superior, anterior->posterior, right->left) whatever the file's
orientation, clipped to ``deep.input.clip_hu`` and optionally resized. Preprocessing and
augmentation use MONAI transforms (COVID-MTL preprocessing / authors' code):

- train: [pad to crop] -> random crop -> Gaussian noise (HU) -> z-score -> in-plane
  rot90 -> left-right flip
- test:  [pad to crop] -> centre crop -> z-score

Augmentation randomness is seeded per (seed, epoch, sample), so it is identical with any
number of DataLoader workers and after a resume.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
from torch.utils.data import DataLoader, Dataset

from covidmtl.deep.config import DeepConfig
from covidmtl.errors import PipelineInputError

log = logging.getLogger(__name__)

STAGE = "deep-train"
VOLUME_FILENAME = "lung_volume.nii.gz"
SPLITS = ("train", "test")


# --------------------------------------------------------------------------- inputs


def _short(items: Iterable, n: int = 5) -> str:
    items = [str(i) for i in items]
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def discover_volumes(volumes_dir: str | Path | None = None, volume_files: Sequence[str | Path] | None = None,
                     volumes_list: str | Path | None = None, filename: str = VOLUME_FILENAME) -> dict[str, Path]:
    """Map subject id -> volume file.

    - ``volumes_dir``: every ``<dir>/<subject_id>/<filename>`` below it (any depth; the
      subject id is the name of the folder holding the file);
    - ``volume_files``: explicit files, subject id = name of the folder holding each file;
    - ``volumes_list``: a text file with one path per line (subject id = folder name), or
      CSV lines ``subject_id,path``; blank lines and ``#`` comments are skipped.
    """
    given = [x is not None for x in (volumes_dir, volume_files, volumes_list)]
    if sum(given) != 1:
        raise ValueError("give exactly one of volumes_dir, volume_files, volumes_list")
    pairs: list[tuple[str, Path]] = []
    if volumes_dir is not None:
        root = Path(volumes_dir)
        if not root.is_dir():
            raise PipelineInputError(STAGE, "the volumes folder does not exist", path=root,
                                     hint="run the lung-segmentation stage first or fix --volumes-dir")
        pairs = [(p.parent.name, p) for p in sorted(root.rglob(filename))]
    elif volume_files is not None:
        pairs = [(Path(p).parent.name, Path(p)) for p in volume_files]
    else:
        list_path = Path(volumes_list)
        if not list_path.is_file():
            raise PipelineInputError(STAGE, "the volume list file does not exist", path=list_path,
                                     hint="write one volume path per line (or subject_id,path)")
        for raw in list_path.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if "," in line:
                sid, path = (s.strip() for s in line.split(",", 1))
                if sid == "subject_id":  # header line
                    continue
                pairs.append((sid, Path(path)))
            else:
                pairs.append((Path(line).parent.name, Path(line)))
    volumes: dict[str, Path] = {}
    for sid, path in pairs:
        if sid in volumes and volumes[sid] != path:
            raise PipelineInputError(STAGE, f"two volumes for the same subject: {volumes[sid]} and {path}",
                                     subject=sid, path=path,
                                     hint="keep one volume per subject folder or give subject_id,path lines")
        volumes[sid] = path
    return volumes


def read_csv_table(path: str | Path, what: str, required: Sequence[str]) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise PipelineInputError(STAGE, f"the {what} file does not exist", path=path,
                                 hint=f"run the stage that writes the {what} first")
    df = pd.read_csv(path, dtype={"subject_id": str})
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise PipelineInputError(STAGE, f"the {what} lacks column(s) {missing}", path=path,
                                 hint=f"the {what} needs columns {list(required)}")
    if df["subject_id"].duplicated().any():
        dup = df.loc[df["subject_id"].duplicated(), "subject_id"].tolist()
        raise PipelineInputError(STAGE, f"the {what} lists subject(s) twice: {_short(dup)}", subject=dup[0],
                                 path=path, hint=f"keep one row per subject in the {what}")
    return df


def volume_shape_zyx(path: Path) -> tuple[int, int, int]:
    """Array shape (z, y, x) after LPS reorientation, from the header only."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    size = reader.GetSize()
    if len(size) != 3:
        raise ValueError(f"expected a 3D image, got {len(size)}D")
    direction = np.asarray(reader.GetDirection(), dtype=float).reshape(3, 3)
    dominant = np.argmax(np.abs(direction), axis=0)  # world axis of each index axis
    if sorted(dominant.tolist()) != [0, 1, 2]:
        return tuple(int(s) for s in reversed(size))
    by_world = {int(w): int(size[j]) for j, w in enumerate(dominant)}
    return by_world[2], by_world[1], by_world[0]


@dataclass
class SubjectSet:
    """Subjects of one split with their volume paths, labels and (scaled) features."""

    subject_ids: list[str]
    paths: list[Path]
    targets: dict[str, np.ndarray]
    features: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.subject_ids)


@dataclass
class PreparedData:
    train: SubjectSet
    test: SubjectSet
    tasks: dict[str, int]
    feature_columns: list[str] = field(default_factory=list)
    shapes: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return len(self.feature_columns)


def _check_labels(manifest: pd.DataFrame, subjects: list[str], tasks: dict[str, int], path: Path) -> dict[str, np.ndarray]:
    rows = manifest.set_index("subject_id").loc[subjects]
    targets = {}
    for task, n_classes in tasks.items():
        values = pd.to_numeric(rows[task], errors="coerce")
        missing = values.index[values.isna()].tolist()
        if missing:
            raise PipelineInputError(
                STAGE, f"label '{task}' is missing for {len(missing)} subject(s): {_short(missing)}; the variant "
                       f"trains task '{task}'", subject=missing[0], path=path,
                hint=f"fill in '{task}' in the manifest, exclude the subjects (exclude_subjects), "
                     f"or train a variant without task '{task}'")
        bad = values.index[~values.isin(range(n_classes))].tolist()
        if bad:
            raise PipelineInputError(
                STAGE, f"label '{task}' must be one of {list(range(n_classes))}; subject(s) {_short(bad)} have "
                       f"{sorted(set(values.loc[bad].tolist()))}", subject=bad[0], path=path,
                hint=f"fix the '{task}' column of the manifest")
        targets[task] = values.to_numpy().astype(np.int64)
    return targets


def load_features(path: str | Path, train_ids: list[str], test_ids: list[str], scaling: str
                  ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Radiomics feature matrices of train and test, scaled with train statistics only."""
    from covidmtl.features.radiomics import feature_columns, read_table_file

    path = Path(path)
    if not path.is_file():
        raise PipelineInputError(STAGE, "the radiomics feature table does not exist", path=path,
                                 hint="run the feature-extraction stage first or drop --features")
    table = read_table_file(path)
    if "subject_id" not in table.columns:
        raise PipelineInputError(STAGE, "the feature table has no subject_id column", path=path,
                                 hint="use the table written by the feature-merge stage")
    table["subject_id"] = table["subject_id"].astype(str)
    columns = feature_columns(table)
    if not columns:
        raise PipelineInputError(STAGE, "the feature table holds no radiomics feature columns "
                                        "(names like original_firstorder_Mean)", path=path,
                                 hint="use the table written by the feature-merge stage")
    table = table.drop_duplicates("subject_id").set_index("subject_id")
    wanted = train_ids + test_ids
    missing = [s for s in wanted if s not in table.index]
    if missing:
        raise PipelineInputError(
            STAGE, f"the feature table lacks {len(missing)} subject(s) of the split: {_short(missing)}",
            subject=missing[0], path=path,
            hint="the feature stage excluded or failed these subjects (see its QC table); exclude them from the "
                 "cohort too (exclude_subjects) or fix their feature extraction")
    values = table.loc[wanted, columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad_rows, bad_cols = np.nonzero(~np.isfinite(values))
    if bad_rows.size:
        sid, col = wanted[bad_rows[0]], columns[bad_cols[0]]
        raise PipelineInputError(
            STAGE, f"the feature table has {bad_rows.size} NaN/infinite value(s), e.g. {col}", subject=sid,
            path=path, hint="the feature-merge stage removes such features; use its output table")
    x_train, x_test = values[: len(train_ids)], values[len(train_ids):]
    if scaling == "standard":
        from sklearn.preprocessing import StandardScaler
        scaler = StandardScaler().fit(x_train)
        x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    elif scaling == "minmax":
        from sklearn.preprocessing import MinMaxScaler
        scaler = MinMaxScaler().fit(x_train)
        x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    return x_train.astype(np.float32), x_test.astype(np.float32), columns


def prepare_inputs(tasks: dict[str, int], cfg: DeepConfig, volumes: dict[str, Path], manifest_path: str | Path,
                   split_path: str | Path, features_path: str | Path | None = None, use_features: bool = False,
                   check_volumes: bool = True) -> PreparedData:
    """Validate all inputs and assemble train/test subject sets (errors before any training)."""
    split_path, manifest_path = Path(split_path), Path(manifest_path)
    split = read_csv_table(split_path, "split", ["subject_id", "split"])
    unknown = sorted(set(split["split"].astype(str)) - set(SPLITS))
    if unknown:
        raise PipelineInputError(STAGE, f"the split file has values {unknown}; expected train/test",
                                 path=split_path, hint="use the split written by `covidmtl split`")
    manifest = read_csv_table(manifest_path, "manifest", ["subject_id", *tasks])
    ids = {s: split.loc[split["split"] == s, "subject_id"].astype(str).tolist() for s in SPLITS}
    for s in SPLITS:
        if not ids[s]:
            raise PipelineInputError(STAGE, f"the {s} split is empty", path=split_path,
                                     hint="the cohort is too small to train and test; add subjects")
    all_ids = ids["train"] + ids["test"]
    not_in_manifest = [s for s in all_ids if s not in set(manifest["subject_id"])]
    if not_in_manifest:
        raise PipelineInputError(STAGE, f"split subject(s) missing from the manifest: {_short(not_in_manifest)}",
                                 subject=not_in_manifest[0], path=manifest_path,
                                 hint="rebuild the split from the current manifest")
    no_volume = [s for s in all_ids if s not in volumes]
    if no_volume:
        raise PipelineInputError(
            STAGE, f"{len(no_volume)} split subject(s) have no lung volume: {_short(no_volume)}",
            subject=no_volume[0], hint="run the lung-segmentation stage for them, or exclude them "
                                       "(exclude_subjects) if their segmentation failed")
    extra = sorted(set(volumes) - set(all_ids))
    if extra:
        log.info("%d volume(s) are not in the split and are ignored: %s", len(extra), _short(extra))
    targets = {s: _check_labels(manifest, ids[s], tasks, manifest_path) for s in SPLITS}
    for task in tasks:
        present = np.unique(targets["train"][task])
        if present.size < tasks[task]:
            log.warning("task %s: the train split holds only class(es) %s of %d", task, present.tolist(), tasks[task])

    shapes: dict[str, tuple[int, int, int]] = {}
    if check_volumes:
        crop = tuple(cfg.input.crop_size)
        for sid in all_ids:
            path = Path(volumes[sid])
            if not path.is_file():
                raise PipelineInputError(STAGE, "the lung volume file does not exist", subject=sid, path=path,
                                         hint="rerun the lung-segmentation stage for this subject")
            try:
                shapes[sid] = volume_shape_zyx(path)
            except Exception as err:  # noqa: BLE001 - any reader failure is a bad file
                raise PipelineInputError(STAGE, f"cannot read the lung volume header ({err})", subject=sid,
                                         path=path, hint="rerun the lung-segmentation stage for this subject") from err
            if cfg.input.input_size is None and not cfg.input.pad_to_crop and any(
                    s < c for s, c in zip(shapes[sid], crop)):
                raise PipelineInputError(
                    STAGE, f"the volume (z, y, x) = {shapes[sid]} voxels is smaller than the crop {crop}",
                    subject=sid, path=path,
                    hint="set deep.input.pad_to_crop: true to pad small volumes, lower deep.input.crop_size, "
                         "or exclude the subject")

    features = {"train": None, "test": None}
    columns: list[str] = []
    if use_features:
        if features_path is None:
            raise PipelineInputError(STAGE, "this variant uses radiomics features but no --features table was given",
                                     hint="pass --features <feature table>")
        features["train"], features["test"], columns = load_features(features_path, ids["train"], ids["test"],
                                                                     cfg.features.scaling)
    sets = {s: SubjectSet(ids[s], [Path(volumes[i]) for i in ids[s]], targets[s], features[s]) for s in SPLITS}
    return PreparedData(sets["train"], sets["test"], dict(tasks), columns, shapes)


# --------------------------------------------------------------------------- volumes


class VolumeLoader:
    """Reads a volume as float32 (z, y, x) in HU: LPS orientation, clipped, optionally resized."""

    def __init__(self, clip_hu: Sequence[float] | None = (-1024.0, 2000.0),
                 input_size: Sequence[int] | None = None, cache: bool = False) -> None:
        self.clip_hu = tuple(clip_hu) if clip_hu is not None else None
        self.input_size = tuple(int(s) for s in input_size) if input_size is not None else None
        self.cache = cache
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, path: str | Path, subject: str | None = None) -> np.ndarray:
        key = str(path)
        if self.cache and key in self._cache:
            return self._cache[key]
        try:
            image = sitk.DICOMOrient(sitk.ReadImage(key, sitk.sitkFloat32), "LPS")
        except Exception as err:  # noqa: BLE001
            raise PipelineInputError(STAGE, f"cannot read the lung volume ({err})", subject=subject, path=path,
                                     hint="rerun the lung-segmentation stage for this subject") from err
        array = sitk.GetArrayFromImage(image)
        if self.clip_hu is not None:
            np.clip(array, self.clip_hu[0], self.clip_hu[1], out=array)
        if self.input_size is not None and tuple(array.shape) != self.input_size:
            from monai.transforms import Resize
            resized = Resize(spatial_size=self.input_size, mode="area")(torch.from_numpy(array)[None])
            array = np.ascontiguousarray(torch.as_tensor(resized)[0].numpy(), dtype=np.float32)
        if self.cache:
            self._cache[key] = array
        return array


def build_transform(cfg: DeepConfig, train: bool, mean: float, std: float):
    """MONAI Compose of the preprocessing (and, for train, augmentation) on (1, z, y, x) tensors."""
    from monai.transforms import (CenterSpatialCrop, Compose, NormalizeIntensity, RandFlip, RandGaussianNoise,
                                  RandRotate90, RandSpatialCrop, SpatialPad)

    crop = [int(c) for c in cfg.input.crop_size]
    steps = []
    if cfg.input.pad_to_crop:
        pad_value = cfg.input.clip_hu[0] if cfg.input.clip_hu is not None else -1024.0
        steps.append(SpatialPad(spatial_size=crop, mode="constant", value=float(pad_value)))
    aug = cfg.augment
    if train and aug.enabled:
        steps.append(RandSpatialCrop(roi_size=crop, random_center=True, random_size=False))
        if aug.noise_prob > 0 and aug.noise_std_hu > 0:
            steps.append(RandGaussianNoise(prob=aug.noise_prob, mean=0.0, std=aug.noise_std_hu, sample_std=True))
        steps.append(NormalizeIntensity(subtrahend=mean, divisor=std))
        if aug.rot90_prob > 0:
            steps.append(RandRotate90(prob=aug.rot90_prob, max_k=3, spatial_axes=(1, 2)))
        if aug.flip_prob > 0:
            steps.append(RandFlip(prob=aug.flip_prob, spatial_axis=2))
    else:
        steps.append(CenterSpatialCrop(roi_size=crop))
        steps.append(NormalizeIntensity(subtrahend=mean, divisor=std))
    return Compose(steps)


class VolumeDataset(Dataset):
    """Items ``{"inputs": {"image", ["features"]}, "targets": {task: class}, "subject_id"}``."""

    def __init__(self, subjects: SubjectSet, loader: VolumeLoader, transform, seed: int = 0) -> None:
        self.subjects = subjects
        self.loader = loader
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, index: int) -> dict:
        sid = self.subjects.subject_ids[index]
        array = self.loader(self.subjects.paths[index], sid)
        # Seeded per (seed, epoch, index): identical with any worker count and after a resume.
        item_seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        self.transform.set_random_state(seed=item_seed)
        image = self.transform(torch.from_numpy(np.array(array, dtype=np.float32, copy=True))[None])
        image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        inputs = {"image": image.float().contiguous()}
        if self.subjects.features is not None:
            inputs["features"] = torch.from_numpy(self.subjects.features[index])
        targets = {t: torch.tensor(int(v[index]), dtype=torch.long) for t, v in self.subjects.targets.items()}
        return {"inputs": inputs, "targets": targets, "subject_id": sid}


class _StatsDataset(Dataset):
    def __init__(self, subjects: SubjectSet, loader: VolumeLoader) -> None:
        self.subjects, self.loader = subjects, loader

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, index: int) -> torch.Tensor:
        a = self.loader(self.subjects.paths[index], self.subjects.subject_ids[index]).astype(np.float64)
        return torch.tensor([a.mean(), a.std()], dtype=torch.float64)


def intensity_stats(subjects: SubjectSet, loader: VolumeLoader, num_workers: int = 0) -> tuple[float, float]:
    """Mean of per-volume means and sds of the (clipped, resized) training volumes (authors'
    CTMEAN/CTSTD)."""
    dl = DataLoader(_StatsDataset(subjects, loader), batch_size=1, num_workers=num_workers)
    stats = torch.cat([b for b in dl]).numpy()
    mean, std = float(stats[:, 0].mean()), float(stats[:, 1].mean())
    if not np.isfinite(std) or std <= 0:
        raise PipelineInputError(STAGE, f"the training volumes have no intensity spread (sd {std})",
                                 hint="check the lung volumes; every one looks constant")
    return mean, std

