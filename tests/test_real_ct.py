"""The three real COVID-CT-MD studies curate correctly (skipped when ../shared/real-ct is absent)."""

import numpy as np
import pytest
import SimpleITK as sitk

from covidmtl.config import validate
from covidmtl.curate import curate_subject
from covidmtl.imageio import read_dicom_series

from conftest import REAL_STUDIES

pytestmark = pytest.mark.realdata

EXPECTED = {  # from the dataset's README and the DICOM headers
    "P001": {"slices": 148, "inplane": 0.748, "age": 39, "sex": "M"},
    "cap001": {"slices": 168, "inplane": 0.59, "age": 62, "sex": "M"},
    "normal001": {"slices": 154, "inplane": 0.635, "age": 70, "sex": "F"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_series_read_in_slice_order(real_ct_dir, name):
    scan = read_dicom_series(REAL_STUDIES[name], name)
    expected = EXPECTED[name]
    image = scan.image
    assert image.GetSize() == (512, 512, expected["slices"])
    np.testing.assert_allclose(image.GetSpacing(), (expected["inplane"], expected["inplane"], 2.0), atol=0.01)
    assert scan.facts["age"] == expected["age"] and scan.facts["sex"] == expected["sex"]
    # slices ordered by position: the array's z axis runs from the lowest position upward,
    # so the lungs (dark) appear in the upper part and the abdomen (bright) at the bottom
    array = sitk.GetArrayViewFromImage(image)
    z_means = array[:, 128:384, 128:384].mean(axis=(1, 2))
    assert z_means[: len(z_means) // 6].mean() > z_means[len(z_means) // 2 :].mean()
    # successive slices are continuous (a shuffled order would jump)
    jumps = np.abs(np.diff(z_means))
    assert jumps.max() < 150


@pytest.mark.slow
def test_real_study_curates_to_1mm_lps(real_ct_dir, tmp_path):
    params = validate({})["curation"]
    row = {"subject_id": "ctmd-P001", "patient_id": "ctmd-P001", "dataset": "covid_ct_md", "hospital": None,
           "age": None, "sex": None, "morbidity": None, "diagnosis3": "covid19", "ct": None, "nat": 1, "severity": None,
           "image_format": "dicom", "image_path": str(REAL_STUDIES["P001"]), "lung_mask_path": None,
           "lesion_mask_path": None}
    meta = curate_subject(row, params, tmp_path)
    curated = sitk.ReadImage(str(tmp_path / "ct.nii.gz"))
    assert meta["orientation"] == "LPS" and curated.GetSpacing() == (1.0, 1.0, 1.0)
    assert meta["age"] == 39 and meta["sex"] == "M"
    np.testing.assert_allclose(np.array(curated.GetSize()) * 1.0,
                               np.array([512 * 0.748, 512 * 0.748, 148 * 2.0]), atol=2.5)
    array = sitk.GetArrayViewFromImage(curated)
    assert array.min() >= -1024 and array.max() <= 3071
    lung_like = (array < -400).mean()
    assert 0.2 < lung_like < 0.9
    text = (tmp_path / "meta.json").read_text(encoding="utf-8")
    assert "98C14734" not in text  # the PatientID in the headers and file names
