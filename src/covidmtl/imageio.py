"""Reading raw CT scans (NIfTI files or DICOM series) with the checks a real cohort needs.

Every failure raises :class:`~covidmtl.errors.PipelineInputError` naming the subject,
the file and the stage. Only facts a study needs (age, sex, spacing, acquisition
parameters) leave this module; direct identifiers in DICOM headers never do, and file
names are redacted when they embed the patient id (some exports name slices after it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from covidmtl.errors import PipelineInputError

STAGE = "curate"

# DICOM tags read from the headers; everything else is left behind.
TAG_MODALITY = "0008|0060"
TAG_PATIENT_ID = "0010|0020"
TAG_PATIENT_NAME = "0010|0010"
TAG_AGE = "0010|1010"
TAG_SEX = "0010|0040"
TAG_POSITION = "0020|0032"
TAG_ORIENTATION = "0020|0037"
ACQUISITION_TAGS = {
    "manufacturer": "0008|0070",
    "model": "0008|1090",
    "kvp": "0018|0060",
    "slice_thickness_mm": "0018|0050",
    "convolution_kernel": "0018|1210",
}


@dataclass
class RawScan:
    """A scan as read: the image in HU plus the non-identifying facts from its headers."""

    image: sitk.Image
    source_format: str
    facts: dict = field(default_factory=dict)


def redact(text: str, identifiers: list[str]) -> str:
    for ident in identifiers:
        ident = ident.strip()
        if len(ident) >= 3:
            text = text.replace(ident, "<patient-id>")
    return text


def parse_dicom_age(value: str | None) -> float | None:
    """DICOM Age String ('039Y', '006M', '010W', '021D') in years."""
    if not value:
        return None
    match = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY]?)\s*", value)
    if not match:
        return None
    number, unit = int(match.group(1)), match.group(2) or "Y"
    return round(number / {"Y": 1, "M": 12, "W": 52.1775, "D": 365.25}[unit], 2)


def _meta(reader: sitk.ImageFileReader, tag: str) -> str | None:
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else None


def nifti_completeness_problem(path: Path) -> str | None:
    """Why a NIfTI file is truncated or corrupt, or None. ITK silently zero-fills a short file."""
    import gzip
    import zlib

    import nibabel as nib

    try:
        header = nib.load(str(path)).header
    except Exception as err:  # nibabel raises several types for bad headers
        return f"unreadable NIfTI header ({err})"
    expected = int(header["vox_offset"]) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    if path.name.endswith(".gz"):
        size = 0
        try:
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(1 << 22):
                    size += len(chunk)
        except (EOFError, OSError, zlib.error) as err:
            return f"compressed data is truncated or corrupt ({err})"
    else:
        size = path.stat().st_size
    if size < expected:
        return f"file is truncated ({size} of {expected} bytes)"
    return None


def read_nifti(path: str | Path, subject: str | None = None) -> RawScan:
    path = Path(path)
    if not path.exists():
        raise PipelineInputError(STAGE, "image file does not exist", subject, path,
                                 "check the dataset download/mirror or the index table")
    problem = nifti_completeness_problem(path)
    if problem:
        raise PipelineInputError(STAGE, f"cannot read the volume: {problem}", subject, path,
                                 "re-download or replace the file, or exclude the subject")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[-1] if str(err).strip() else "unreadable"
        raise PipelineInputError(STAGE, f"cannot read the volume (corrupt or truncated file: {first_line})", subject, path,
                                 "re-download or replace the file, or exclude the subject") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise PipelineInputError(STAGE, f"expected a 3D single-channel CT volume, got {image.GetDimension()}D with "
                                 f"{image.GetNumberOfComponentsPerPixel()} component(s)", subject, path)
    return RawScan(image=image, source_format="nifti")


def _series_files(folder: Path, subject: str | None) -> tuple[list[str], list[str]]:
    if not folder.is_dir():
        raise PipelineInputError(STAGE, "DICOM series folder does not exist", subject, folder,
                                 "check the dataset download/mirror or the index table")
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise PipelineInputError(STAGE, "no DICOM series found in the folder", subject, folder,
                                 "point the index at a folder of DICOM slice files")
    if len(series_ids) > 1:
        raise PipelineInputError(STAGE, f"the folder mixes {len(series_ids)} DICOM series", subject, folder,
                                 "keep one axial CT series per folder (move localizers/other reconstructions out)")
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_ids[0]))
    return files, list(series_ids)


def read_dicom_series(folder: str | Path, subject: str | None = None, min_slices: int = 16,
                      slice_gap_tolerance: float = 0.5) -> RawScan:
    """Read one CT series, ordered by position along the slice normal (not by file name)."""
    folder = Path(folder)
    files, _ = _series_files(folder, subject)

    headers = []
    identifiers: list[str] = []
    for file_number, name in enumerate(files):
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        reader.LoadPrivateTagsOff()
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            raise PipelineInputError(STAGE, f"slice file #{file_number + 1} of {len(files)} has an unreadable header",
                                     subject, folder, "re-export or replace the series") from None
        if not identifiers:
            identifiers = [v for v in (_meta(reader, TAG_PATIENT_ID), _meta(reader, TAG_PATIENT_NAME)) if v]
        headers.append(reader)

    first = headers[0]
    modality = _meta(first, TAG_MODALITY)
    if modality and modality.upper() != "CT":
        raise PipelineInputError(STAGE, f"the series is not CT (Modality={modality})", subject, folder,
                                 "only chest CT enters this pipeline; remove or exclude the subject")
    if len(files) < min_slices:
        raise PipelineInputError(STAGE, f"only {len(files)} slices (a chest CT series needs at least {min_slices})",
                                 subject, folder, "check that the whole series was exported")
    sizes = {tuple(h.GetSize()[:2]) for h in headers}
    if len(sizes) > 1:
        raise PipelineInputError(STAGE, f"slices of different sizes {sorted(sizes)} (mixed series)", subject, folder,
                                 "keep one axial CT series per folder")

    try:
        orientation = np.array([float(v) for v in _meta(first, TAG_ORIENTATION).split("\\")])
        positions = np.array([[float(v) for v in _meta(h, TAG_POSITION).split("\\")] for h in headers])
    except (AttributeError, ValueError):
        raise PipelineInputError(STAGE, "slices lack ImagePositionPatient/ImageOrientationPatient", subject, folder,
                                 "re-export the series with full geometry headers") from None
    normal = np.cross(orientation[:3], orientation[3:])
    along = positions @ normal
    order = np.argsort(along)
    along = along[order]
    files = [files[i] for i in order]
    gaps = np.diff(along)
    median_gap = float(np.median(gaps))
    if median_gap <= 1e-3 or np.any(gaps < 1e-3):
        raise PipelineInputError(STAGE, "several slices share one position (duplicate or mixed series)", subject, folder,
                                 "keep one axial CT series per folder")
    bad = np.flatnonzero(np.abs(gaps - median_gap) > slice_gap_tolerance * median_gap)
    if bad.size:
        k = int(bad[0])
        raise PipelineInputError(
            STAGE,
            f"missing slices: gap of {gaps[k]:.2f} mm between positions {along[k]:.1f} and {along[k + 1]:.1f} mm "
            f"(regular spacing {median_gap:.2f} mm; {bad.size} irregular gap(s))",
            subject, folder, "re-export the complete series, or exclude the subject")

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as err:
        message = redact(str(err).strip().splitlines()[-1] if str(err).strip() else "", identifiers)
        raise PipelineInputError(STAGE, f"cannot decode the pixel data ({message})", subject, folder,
                                 "re-export or replace the truncated/corrupt slice files") from None
    # The series reader takes the spacing from the first two slices; use the median gap instead.
    spacing = list(image.GetSpacing())
    spacing[2] = median_gap
    image.SetSpacing(spacing)

    facts = {"modality": modality or "CT", "n_slices": len(files)}
    age = parse_dicom_age(_meta(first, TAG_AGE))
    sex = _meta(first, TAG_SEX)
    facts["age"] = age
    facts["sex"] = sex.upper() if sex and sex.upper() in {"M", "F", "O"} else None
    for key, tag in ACQUISITION_TAGS.items():
        value = _meta(first, tag)
        facts[key] = value if value else None
    return RawScan(image=image, source_format="dicom", facts=facts)


def read_scan(path: str | Path, image_format: str, subject: str | None = None, **kwargs) -> RawScan:
    if image_format == "dicom":
        return read_dicom_series(path, subject, **kwargs)
    if image_format == "nifti":
        return read_nifti(path, subject)
    raise PipelineInputError(STAGE, f"unknown image format {image_format!r}", subject, path,
                             "the dataset index must say 'nifti' or 'dicom'")


def check_ct_intensities(image: sitk.Image, subject: str | None, path: str | Path,
                         hu_range: tuple[float, float] = (-1100, 3100)) -> dict:
    """Reject images that are not CT in Hounsfield units (MR, unscaled, blank); returns HU stats."""
    array = sitk.GetArrayViewFromImage(image)
    sample = array[:: max(1, array.shape[0] // 32), ::4, ::4].astype(np.float32)
    p1, p50, p99 = np.percentile(sample, [1, 50, 99])
    stats = {"hu_p1": float(p1), "hu_median": float(p50), "hu_p99": float(p99)}
    if p99 - p1 < 50:
        raise PipelineInputError(STAGE, f"the image is (almost) constant (1st-99th percentile {p1:.0f}..{p99:.0f})",
                                 subject, path, "replace the file or exclude the subject")
    if p1 > -500 or p99 > hu_range[1] or p1 < hu_range[0] - 2000:
        raise PipelineInputError(
            STAGE,
            f"intensities do not look like chest CT in Hounsfield units (1st percentile {p1:.0f}, 99th {p99:.0f}; "
            "a chest CT has air near -1000 HU and soft tissue near 0-100 HU)",
            subject, path, "only CT in HU enters the pipeline; check rescale slope/intercept or exclude the subject")
    return stats
