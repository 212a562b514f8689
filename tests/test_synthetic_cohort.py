"""The synthetic cohort's clinical labels, raw layout and DICOM export."""

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from covidmtl.config import validate
from covidmtl.imageio import read_dicom_series
from covidmtl.synthetic.cohort import GROUPS, group_counts, sample_clinical, write_dicom_series

from conftest import make_ct


def synthetic_params(**overrides):
    params = validate({})["synthetic"]
    params.update(overrides)
    return params


def test_group_counts_follow_proportions_exactly():
    proportions = synthetic_params()["morbidity_proportions"]
    counts = group_counts(100, proportions)
    assert sum(counts.values()) == 100
    total = sum(proportions.values())
    for group in GROUPS:
        assert abs(counts[group] - 100 * proportions[group] / total) < 1


def test_labels_have_the_covid_mtl_structure():
    clinical = sample_clinical(synthetic_params(n_subjects=200))
    assert len(clinical) == 200 and clinical.subject_id.is_unique
    # CT-positive but NAT-negative is exactly the 'suspected' group
    discordant = clinical[(clinical.ct == 1) & (clinical.nat == 0)]
    assert set(discordant.morbidity) == {"suspected"}
    assert not ((clinical.ct == 0) & (clinical.nat == 1)).any()
    assert set(clinical[clinical.severity == 0].morbidity) <= {"control", "suspected"}
    assert set(clinical[clinical.severity == 1].morbidity) == {"mild", "regular"}
    assert set(clinical[clinical.severity == 2].morbidity) == {"severe", "critically_ill"}
    assert set(clinical.diagnosis3) == {"covid19", "cap", "normal"}
    assert set(clinical[clinical.diagnosis3 != "covid19"].morbidity) == {"control"}
    # class proportions close to the configured ones
    assert 0.7 < clinical.ct.mean() < 0.85
    assert 0.55 < clinical.nat.mean() < 0.7
    assert clinical.age.between(18, 92).all() and set(clinical.sex) == {"M", "F"}
    assert clinical[clinical.severity == 2].age.mean() > clinical[clinical.severity == 0].age.mean()


def test_follow_up_scans_share_patient_and_labels():
    clinical = sample_clinical(synthetic_params(n_subjects=60))
    repeated = clinical[clinical.patient_id.duplicated(keep=False)]
    assert len(repeated) >= 2
    for _, scans in repeated.groupby("patient_id"):
        assert scans[["morbidity", "diagnosis3", "ct", "nat", "severity", "sex"]].nunique().max() == 1
        assert scans.seed.nunique() == len(scans)  # different acquisitions


def test_clinical_is_deterministic_from_seed():
    a = sample_clinical(synthetic_params(n_subjects=40, seed=3))
    b = sample_clinical(synthetic_params(n_subjects=40, seed=3))
    c = sample_clinical(synthetic_params(n_subjects=40, seed=4))
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_both_image_formats_are_used():
    clinical = sample_clinical(synthetic_params(n_subjects=40, dicom_fraction=0.25))
    assert (clinical.image_format == "dicom").sum() == 10
    assert set(clinical[clinical.image_format == "dicom"].dicom_compression) == {"jpeg_lossless", "none"}


@pytest.mark.parametrize("compression", ["none", "jpeg_lossless"])
def test_dicom_export_round_trips_geometry_and_hu(tmp_path, compression):
    image, _ = make_ct()
    row = {"patient_id": "synP0001", "sex": "F", "age": 47, "hospital": "Union Hospital"}
    write_dicom_series(image, tmp_path / "dicom", row, compression, np.random.default_rng(0))
    scan = read_dicom_series(tmp_path / "dicom", "syn-0001", min_slices=4)
    expected = np.clip(sitk.GetArrayFromImage(image), -1024, 3071)  # the CT range a scanner stores
    np.testing.assert_array_equal(sitk.GetArrayFromImage(scan.image), expected)
    np.testing.assert_allclose(scan.image.GetSpacing(), image.GetSpacing(), atol=1e-3)
    np.testing.assert_allclose(scan.image.GetOrigin(), image.GetOrigin(), atol=1e-3)
    assert scan.facts["age"] == 47 and scan.facts["sex"] == "F"
    assert "MRN" not in str(scan.facts) and "SYNTHETIC" not in str(scan.facts)
