"""Curation: spacing, orientation, mask alignment, manifest, and clear errors on bad input."""

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from covidmtl.config import validate
from covidmtl.curate import curate_subject, orientation_code
from covidmtl.errors import PipelineInputError
from covidmtl.manifest import MANIFEST_COLUMNS, build_manifest
from covidmtl.synthetic.cohort import write_dicom_series

from conftest import make_ct

# RAS-ordered axes (x toward the right, y anterior), as many NIfTI exports store them.
RAS_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture
def curation_params():
    return validate({})["curation"] | {"min_slices": 4}


def index_row(tmp_path, image, mask=None, lesion=None, fmt="nifti", subject="s-001"):
    raw = tmp_path / "raw" / subject
    raw.mkdir(parents=True)
    row = {"subject_id": subject, "patient_id": "p-001", "dataset": "test", "hospital": "H1", "age": 50, "sex": "M",
           "morbidity": "severe", "diagnosis3": "covid19", "ct": 1, "nat": 1, "severity": 2,
           "image_format": fmt, "lung_mask_path": "", "lesion_mask_path": ""}
    if fmt == "nifti":
        row["image_path"] = str(raw / "ct.nii.gz")
        sitk.WriteImage(image, row["image_path"])
    else:
        row["image_path"] = str(raw / "dicom")
        write_dicom_series(image, raw / "dicom", {"patient_id": "p", "sex": "F", "age": 61, "hospital": "H"},
                           "none", np.random.default_rng(1))
    for kind, m in (("lung", mask), ("lesion", lesion)):
        if m is not None:
            row[f"{kind}_mask_path"] = str(raw / f"{kind}.nii.gz")
            sitk.WriteImage(m, row[f"{kind}_mask_path"])
    return row


def test_resampled_to_target_spacing_and_canonical_orientation(tmp_path, curation_params):
    image, mask = make_ct(direction=RAS_DIRECTION)
    assert orientation_code(image) == "RAS"
    meta = curate_subject(index_row(tmp_path, image, mask), curation_params, tmp_path / "out")
    curated = sitk.ReadImage(str(tmp_path / "out" / "ct.nii.gz"))
    assert orientation_code(curated) == "LPS" and meta["orientation"] == "LPS"
    np.testing.assert_allclose(curated.GetSpacing(), (1.0, 1.0, 1.0))
    assert curated.GetPixelID() == sitk.sitkInt16
    # the physical extent is kept (within a voxel)
    extent_in = np.array(image.GetSize()) * image.GetSpacing()
    extent_out = np.array(curated.GetSize()) * curated.GetSpacing()
    np.testing.assert_allclose(extent_out, extent_in, atol=1.0)
    assert meta["original_orientation"] == "RAS" and meta["original_spacing"] == [0.8, 0.8, 2.5]
    # HU kept: air stays air, the lungs stay around -850
    array = sitk.GetArrayFromImage(curated)
    assert array.min() >= -1024 and np.percentile(array, 1) < -950


def test_masks_stay_aligned_with_the_image(tmp_path, curation_params):
    image, mask = make_ct(direction=RAS_DIRECTION)
    curate_subject(index_row(tmp_path, image, mask), curation_params, tmp_path / "out")
    curated = sitk.ReadImage(str(tmp_path / "out" / "ct.nii.gz"))
    lung = sitk.ReadImage(str(tmp_path / "out" / "masks" / "lung.nii.gz"))
    assert lung.GetSize() == curated.GetSize() and lung.GetOrigin() == curated.GetOrigin()
    assert lung.GetDirection() == curated.GetDirection()
    ct, lung_array = sitk.GetArrayFromImage(curated), sitk.GetArrayFromImage(lung).astype(bool)
    # inside the mask it is lung (dark); the mask volume is preserved in mm^3
    assert np.median(ct[lung_array]) < -700
    volume_in = sitk.GetArrayFromImage(mask).sum() * np.prod(mask.GetSpacing())
    volume_out = lung_array.sum() * np.prod(lung.GetSpacing())
    assert abs(volume_out - volume_in) / volume_in < 0.1


def test_dicom_series_curates_with_age_and_sex_from_headers(tmp_path, curation_params):
    image, _ = make_ct()
    meta = curate_subject(index_row(tmp_path, image, fmt="dicom"), curation_params, tmp_path / "out")
    assert meta["source_format"] == "dicom" and meta["age"] == 61 and meta["sex"] == "F"
    text = (tmp_path / "out" / "meta.json").read_text(encoding="utf-8")
    assert "MRN" not in text and "SYNTHETIC" not in text and "PATIENT" not in text


def test_manifest_collects_subjects(tmp_path, curation_params):
    image, mask = make_ct()
    metas = []
    for subject in ("s-001", "s-002"):
        out = tmp_path / "cur" / subject
        curate_subject(index_row(tmp_path, image, mask, subject=subject), curation_params, out)
        metas.append(out / "meta.json")
    manifest = build_manifest(metas)
    assert list(manifest.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    assert manifest.subject_id.tolist() == ["s-001", "s-002"]
    assert manifest.lung_mask_path.str.endswith("lung.nii.gz").all()
    assert (manifest.lesion_mask_path == "").all()
    with pytest.raises(ValueError, match="not unique"):
        build_manifest(metas + metas[:1])


# --- bad input -----------------------------------------------------------------------


def test_truncated_nifti_names_subject_file_and_stage(tmp_path, curation_params):
    image, _ = make_ct()
    row = index_row(tmp_path, image)
    data = open(row["image_path"], "rb").read()
    open(row["image_path"], "wb").write(data[: len(data) // 2])
    with pytest.raises(PipelineInputError) as err:
        curate_subject(row, curation_params, tmp_path / "out")
    message = str(err.value)
    assert "stage=curate" in message and "subject=s-001" in message and "ct.nii.gz" in message
    assert "What to do" in message


def test_non_ct_intensities_are_rejected(tmp_path, curation_params):
    image, _ = make_ct()
    mr_like = sitk.Cast(sitk.Abs(image + 1000), sitk.sitkInt16)  # all positive, like MR
    with pytest.raises(PipelineInputError, match="do not look like chest CT"):
        curate_subject(index_row(tmp_path, mr_like), curation_params, tmp_path / "out")
    blank = sitk.Image(image.GetSize(), sitk.sitkInt16)
    blank.CopyInformation(image)
    with pytest.raises(PipelineInputError, match="constant"):
        curate_subject(index_row(tmp_path, blank, subject="s-002"), curation_params, tmp_path / "out2")


def test_dicom_with_missing_slices_is_rejected(tmp_path, curation_params):
    image, _ = make_ct()
    row = index_row(tmp_path, image, fmt="dicom")
    files = sorted((tmp_path / "raw" / "s-001" / "dicom").iterdir())
    # remove a slice from the middle of the stack (by position, not by file name)
    positions = {f: sitk.ReadImage(str(f)).GetOrigin()[2] for f in files}
    middle = sorted(files, key=positions.get)[len(files) // 2]
    middle.unlink()
    with pytest.raises(PipelineInputError, match="missing slices") as err:
        curate_subject(row, curation_params, tmp_path / "out")
    assert "subject=s-001" in str(err.value)


def test_dicom_with_mixed_series_is_rejected(tmp_path, curation_params):
    image, _ = make_ct()
    row = index_row(tmp_path, image, fmt="dicom")
    other = tmp_path / "other"
    write_dicom_series(image, other, {"patient_id": "q", "sex": "M", "age": 30, "hospital": "H"}, "none",
                       np.random.default_rng(99))
    for path in other.iterdir():
        path.rename(tmp_path / "raw" / "s-001" / "dicom" / f"other_{path.name}")
    with pytest.raises(PipelineInputError, match="mixes 2 DICOM series"):
        curate_subject(row, curation_params, tmp_path / "out")


def test_non_ct_modality_is_rejected(tmp_path, curation_params):
    image, _ = make_ct()
    row = index_row(tmp_path, image, fmt="dicom")
    for path in (tmp_path / "raw" / "s-001" / "dicom").iterdir():
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        slice_img = reader.Execute()
        for key in reader.GetMetaDataKeys():
            slice_img.SetMetaData(key, reader.GetMetaData(key))
        slice_img.SetMetaData("0008|0060", "MR")
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(path))
        writer.Execute(slice_img)
    with pytest.raises(PipelineInputError, match="not CT"):
        curate_subject(row, curation_params, tmp_path / "out")


def test_misaligned_mask_is_rejected(tmp_path, curation_params):
    image, mask = make_ct()
    shifted = sitk.Image(mask)
    shifted.SetOrigin(tuple(o + 30 for o in mask.GetOrigin()))
    with pytest.raises(PipelineInputError, match="does not share the image's grid"):
        curate_subject(index_row(tmp_path, image, shifted), curation_params, tmp_path / "out")
