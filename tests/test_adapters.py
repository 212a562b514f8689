"""Dataset adapters: each on a tiny copy of its dataset's real layout, bad input, combining datasets."""

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from covidmtl.config import validate
from covidmtl.curate import curate_subject, index_row
from covidmtl.datasets import INDEX_COLUMNS
from covidmtl.datasets import cc_ccii, covid19_ct_seg, covid_ct_md, ictcf, medseg, mosmed, ucsd_covid_ct
from covidmtl.datasets.index import ADAPTERS
from covidmtl.datasets.index import main as index_main
from covidmtl.datasets.layout import EXTRA_COLUMNS, combine_indexes, safe_id
from covidmtl.errors import PipelineInputError
from covidmtl.manifest import build_manifest

import fixtures_datasets as fx


@pytest.fixture
def curation_params():
    # coarse grid: these tests check that curation accepts the rows, not its resampling
    return validate({})["curation"] | {"spacing_mm": [3.0, 3.0, 3.0]}


def check_index(index, dataset):
    assert list(index.columns) == INDEX_COLUMNS + EXTRA_COLUMNS
    assert (index.dataset == dataset).all()
    assert index.subject_id.is_unique
    for column in ("image_path", "source_dir"):
        assert all(p and Path(p).exists() for p in index[column]), column
    for column in ("lung_mask_path", "lesion_mask_path"):
        assert all(p == "" or Path(p).is_file() for p in index[column]), column
    return index.set_index("subject_id")


def test_every_adapter_is_registered():
    assert {"covid_ct_md", "mosmed", "covid19_ct_seg", "medseg", "ucsd_covid_ct", "ictcf", "cc_ccii"} <= set(ADAPTERS)


# --------------------------------------------------------------------------- COVID-CT-MD

def test_covid_ct_md_fixture(tmp_path, caplog, curation_params):
    fx.build_covid_ct_md(tmp_path)
    with caplog.at_level(logging.INFO):
        index = covid_ct_md.build_index(tmp_path)
    rows = check_index(index, "covid_ct_md")
    assert list(rows.index) == ["ctmd-P001", "ctmd-cap001", "ctmd-normal001"]
    assert rows.loc["ctmd-P001", ["diagnosis3", "ct", "nat"]].tolist() == ["covid19", 1, 1]
    assert rows.loc["ctmd-cap001", ["diagnosis3", "morbidity", "ct", "severity"]].tolist() == ["cap", "control", 0, 0]
    assert pd.isna(rows.loc["ctmd-cap001", "nat"]) and pd.isna(rows.loc["ctmd-P001", "severity"])
    assert rows.loc["ctmd-normal001", "diagnosis3"] == "normal"
    # label_index: the row in Index.csv and the label arrays; normal patients are not listed
    assert rows.loc["ctmd-P001", "label_index"] == 0 and rows.loc["ctmd-cap001", "label_index"] == 1
    assert pd.isna(rows.loc["ctmd-normal001", "label_index"])
    assert (index.image_format == "dicom").all()
    # Index.csv lists 4 labelled patients, 2 are absent: said in the log, not indexed
    assert "4 labelled patients; 2 of them are present here, 2 are not" in caplog.text
    meta = curate_subject(index.iloc[0].to_dict(), curation_params, tmp_path / "out")
    assert meta["age"] == 50 and meta["diagnosis3"] == "covid19"


def test_covid_ct_md_folder_name_variants(tmp_path):
    # the dataset README says 'CAP subjects', the authors' script 'COVID-19 Cases'
    fx.build_covid_ct_md(tmp_path, studies=[("COVID-19 Cases", "P001"), ("CAP subjects", "cap001")], absent_listed=())
    index = covid_ct_md.build_index(tmp_path)
    assert index.diagnosis3.tolist() == ["covid19", "cap"]


def test_covid_ct_md_missing_index_csv(tmp_path):
    fx.build_covid_ct_md(tmp_path)
    (tmp_path / "Index.csv").unlink()
    with pytest.raises(PipelineInputError, match=r"covid_ct_md: Index.csv is missing") as err:
        covid_ct_md.build_index(tmp_path)
    assert "Index.csv" in err.value.path


def test_covid_ct_md_unknown_diagnosis(tmp_path):
    fx.build_covid_ct_md(tmp_path)
    text = (tmp_path / "Index.csv").read_text(encoding="utf-8").replace("CAP,./CAP/,cap001", "Influenza,./CAP/,cap001")
    (tmp_path / "Index.csv").write_text(text)
    with pytest.raises(PipelineInputError, match=r"covid_ct_md: unknown diagnosis 'Influenza' in Index.csv line 3"):
        covid_ct_md.build_index(tmp_path)


def test_covid_ct_md_folder_disagrees_with_index(tmp_path):
    fx.build_covid_ct_md(tmp_path)
    text = (tmp_path / "Index.csv").read_text(encoding="utf-8").replace("CAP,./CAP/,cap001", "COVID-19,./COVID-19/,cap001")
    (tmp_path / "Index.csv").write_text(text)
    with pytest.raises(PipelineInputError, match=r"cap001 is in the folder 'Cap subjects' but Index.csv says"):
        covid_ct_md.build_index(tmp_path)


def test_covid_ct_md_empty_study_folder(tmp_path):
    fx.build_covid_ct_md(tmp_path)
    (tmp_path / "Normal subjects" / "normal002").mkdir()
    with pytest.raises(PipelineInputError, match=r"Normal subjects/normal002 holds no .dcm files"):
        covid_ct_md.build_index(tmp_path)


def test_covid_ct_md_no_class_folders(tmp_path):
    with pytest.raises(PipelineInputError, match=r"covid_ct_md: no class folders"):
        covid_ct_md.build_index(tmp_path)


@pytest.mark.realdata
def test_covid_ct_md_real_sample(real_ct_dir, caplog):
    with caplog.at_level(logging.INFO):
        index = covid_ct_md.build_index(real_ct_dir)
    rows = check_index(index, "covid_ct_md")
    assert list(rows.index) == ["ctmd-P001", "ctmd-cap001", "ctmd-normal001"]
    assert rows.diagnosis3.tolist() == ["covid19", "cap", "normal"]
    assert rows.loc["ctmd-P001", "label_index"] == 0 and rows.loc["ctmd-cap001", "label_index"] == 55
    assert "Index.csv lists 79 labelled patients; 2 of them are present here, 77 are not" in caplog.text
    assert not any("98C14734" in str(v) for v in index.to_numpy().ravel())  # PatientID-named files stay out


# --------------------------------------------------------------------------- MosMedData

def test_mosmed_fixture(tmp_path, curation_params):
    fx.build_mosmed(tmp_path)
    rows = check_index(mosmed.build_index(tmp_path), "mosmed")
    assert list(rows.index) == ["mosmed-study_0001", "mosmed-study_0255", "mosmed-study_0900"]
    assert rows.source_label.tolist() == ["CT-0", "CT-1", "CT-3"]
    assert rows.severity.tolist() == [0, 1, 2] and rows.ct.tolist() == [0, 1, 1]
    assert rows.diagnosis3.tolist() == ["normal", "covid19", "covid19"]
    assert rows.nat.isna().all() and rows.morbidity.isna().all()
    assert rows.lesion_mask_path.str.endswith("study_0255_mask.nii.gz").tolist() == [False, True, False]
    meta = curate_subject(rows.reset_index().iloc[1].to_dict(), curation_params, tmp_path / "out")
    assert meta["has_lesion_mask"]


def test_mosmed_unknown_category(tmp_path):
    base = fx.build_mosmed(tmp_path)
    shutil.copytree(base / "studies" / "CT-0", base / "studies" / "CT-5")
    with pytest.raises(PipelineInputError, match=r"mosmed: unknown category folder 'CT-5'") as err:
        mosmed.build_index(tmp_path)
    assert err.value.path.endswith("CT-5")


def test_mosmed_missing_studies(tmp_path):
    (tmp_path / "COVID19_1110" / "masks").mkdir(parents=True)
    with pytest.raises(PipelineInputError, match=r"mosmed: no 'studies' folder"):
        mosmed.build_index(tmp_path)


# --------------------------------------------------------------------------- COVID-19-CT-Seg

def test_covid19_ct_seg_fixture(tmp_path, caplog, curation_params):
    fx.build_covid19_ct_seg(tmp_path)
    with caplog.at_level(logging.INFO):
        rows = check_index(covid19_ct_seg.build_index(tmp_path), "covid19_ct_seg")
    assert list(rows.index) == ["ctseg-coronacases_001", "ctseg-radiopaedia_4_85506_1"]
    assert rows.lung_mask_path.str.endswith(("coronacases_001.nii.gz", "radiopaedia_4_85506_1.nii.gz")).all()
    assert rows.hospital.tolist() == ["coronacases.org", "radiopaedia.org"]
    assert (rows.diagnosis3 == "covid19").all() and (rows.ct == 1).all()
    assert "Radiopaedia scans are stored as 0-255 grey levels" in caplog.text
    meta = curate_subject(rows.reset_index().iloc[0].to_dict(), curation_params, tmp_path / "out")
    assert meta["has_lung_mask"] and meta["has_lesion_mask"]
    lung = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "masks" / "lung.nii.gz")))
    assert set(np.unique(lung)) == {0, 1}  # left/right labels become one lung mask


def test_covid19_ct_seg_archive_with_top_folder(tmp_path):
    # a zip that wraps its content in a folder of its own name extracts one level deeper
    fx.build_covid19_ct_seg(tmp_path / "tmp")
    for name in ("COVID-19-CT-Seg_20cases", "Lung_Mask", "Infection_Mask"):
        shutil.move(tmp_path / "tmp" / name, tmp_path / name / name)
    assert len(covid19_ct_seg.build_index(tmp_path)) == 2


def test_covid19_ct_seg_missing_mask(tmp_path):
    fx.build_covid19_ct_seg(tmp_path)
    (tmp_path / "Infection_Mask" / "coronacases_001.nii.gz").unlink()
    with pytest.raises(PipelineInputError, match=r"covid19_ct_seg: no lesion mask coronacases_001.nii.gz"):
        covid19_ct_seg.build_index(tmp_path)


# --------------------------------------------------------------------------- MedSeg

def test_medseg_fixture(tmp_path, curation_params):
    fx.build_medseg(tmp_path)
    rows = check_index(medseg.build_index(tmp_path), "medseg")
    slices = rows[rows.image_format == "image2d"]
    assert len(slices) == 6 and (rows.loc["medseg-rp_1", "image_format"] == "nifti")
    assert slices.official_split.value_counts().to_dict() == {"train": 4, "test": 2}
    assert (slices[slices.official_split == "test"].lesion_mask_path == "").all()
    # the slices are 2D NIfTI in the stack's intensities, the lesion labels merged to one
    first = sitk.ReadImage(rows.loc["medseg-tr_001", "image_path"])
    assert first.GetDimension() == 2 and first.GetSize() == (16, 16)
    stack = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "tr_im.nii.gz")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(first), stack[1])
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(rows.loc["medseg-tr_001", "lesion_mask_path"]))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "tr_mask.nii.gz")))[1]
    np.testing.assert_array_equal(lesion, np.isin(labels, (1, 2, 3)).astype(np.uint8))
    merged = sitk.GetArrayFromImage(sitk.ReadImage(rows.loc["medseg-rp_1", "lesion_mask_path"]))
    assert set(np.unique(merged)) == {0, 1} and "derived" in rows.loc["medseg-rp_1", "lesion_mask_path"]
    meta = curate_subject(rows.reset_index().set_index("subject_id").loc["medseg-rp_1"].to_dict()
                          | {"subject_id": "medseg-rp_1"}, curation_params, tmp_path / "out")
    assert meta["has_lesion_mask"] and meta["has_lung_mask"]


def test_medseg_rerun_keeps_derived_files(tmp_path):
    fx.build_medseg(tmp_path)
    first = medseg.build_index(tmp_path)
    stamp = {p: os.stat(p).st_mtime_ns for p in first.lesion_mask_path if p}
    second = medseg.build_index(tmp_path)
    assert first.equals(second)
    assert all(os.stat(p).st_mtime_ns == t for p, t in stamp.items())


def test_medseg_missing_masks(tmp_path):
    fx.build_medseg(tmp_path)
    (tmp_path / "tr_mask.nii.gz").unlink()
    with pytest.raises(PipelineInputError, match=r"medseg: tr_im.nii.gz is present but tr_mask.nii.gz is missing"):
        medseg.build_index(tmp_path)


def test_medseg_nothing_there(tmp_path):
    with pytest.raises(PipelineInputError, match=r"medseg: neither Dataset 1"):
        medseg.build_index(tmp_path)


# --------------------------------------------------------------------------- UCSD COVID-CT

def test_ucsd_fixture(tmp_path):
    fx.build_ucsd(tmp_path)
    rows = check_index(ucsd_covid_ct.build_index(tmp_path), "ucsd_covid_ct")
    assert len(rows) == 10 and (rows.image_format == "image2d").all()
    covid = rows[rows.source_label == "CT_COVID"]
    assert (covid.diagnosis3 == "covid19").all() and (covid.ct == 1).all()
    noncovid = rows[rows.source_label == "CT_NonCOVID"]
    assert noncovid.diagnosis3.isna().all() and (noncovid.ct == 0).all()
    split_of = dict(zip(rows.image_path.map(lambda p: p.rsplit("/", 1)[1]), rows.official_split))
    for (_, split), names in fx.UCSD_SPLITS.items():
        assert all(split_of[n] == split for n in names)
    assert pd.isna(split_of["extra.png"])
    # panels of one figure ('%0', '%1') share a patient; odd characters never reach the ids
    panels = rows[rows.image_path.str.contains("bmj.m606")]
    assert panels.patient_id.nunique() == 1 and panels.index.nunique() == 2
    assert not rows.index.str.contains("%").any()


def test_ucsd_image_in_two_splits(tmp_path):
    base = fx.build_ucsd(tmp_path)
    with open(base / "Data-split" / "COVID" / "testCT_COVID.txt", "a") as stream:
        stream.write("kjr-21-e24-p2-8.png\n")
    with pytest.raises(PipelineInputError, match=r"kjr-21-e24-p2-8.png is listed in both the val and the test split"):
        ucsd_covid_ct.build_index(tmp_path)


def test_ucsd_missing_split_file(tmp_path):
    base = fx.build_ucsd(tmp_path)
    (base / "Data-split" / "NonCOVID" / "valCT_NonCOVID.txt").unlink()
    with pytest.raises(PipelineInputError, match=r"ucsd_covid_ct: official split list .*valCT_NonCOVID.txt is missing"):
        ucsd_covid_ct.build_index(tmp_path)


# --------------------------------------------------------------------------- iCTCF

def test_ictcf_fixture(tmp_path, caplog):
    fx.build_ictcf(tmp_path)
    with caplog.at_level(logging.INFO):
        rows = check_index(ictcf.build_index(tmp_path), "ictcf")
    assert list(rows.index) == ["ictcf-p0001", "ictcf-p0002", "ictcf-p0003"]
    assert (rows.image_format == "slices2d").all()
    assert rows.morbidity.tolist() == ["severe", "suspected", "control"]
    assert rows.severity.tolist() == [2, 0, 0]
    assert rows.nat.tolist() == [1, 0, 0] and rows.ct.tolist() == [1, 1, 0]
    assert rows.diagnosis3.tolist() == ["covid19", "covid19", "cap"]
    assert rows.sex.tolist() == ["M", "F", "F"] and rows.age.tolist() == [61, 45, 38]
    assert rows.hospital.tolist() == ["Union", "Liyuan", "Union"]
    assert "1 patients of clinical.csv have no CT folder here" in caplog.text


def test_ictcf_unknown_label(tmp_path):
    fx.build_ictcf(tmp_path, fx.ICTCF_CLINICAL.replace("Severe", "Very bad"))
    with pytest.raises(PipelineInputError, match=r"ictcf: unknown morbidity value 'Very bad' in clinical.csv line 2"):
        ictcf.build_index(tmp_path)


def test_ictcf_missing_clinical_table(tmp_path):
    fx.build_ictcf(tmp_path)
    (tmp_path / "clinical.csv").unlink()
    with pytest.raises(PipelineInputError, match=r"ictcf: clinical table clinical.csv is missing"):
        ictcf.build_index(tmp_path)


# --------------------------------------------------------------------------- CC-CCII

def test_cc_ccii_fixture(tmp_path):
    fx.build_cc_ccii(tmp_path)
    rows = check_index(cc_ccii.build_index(tmp_path), "cc_ccii")
    assert list(rows.index) == ["ccccii-CP-1001-3101", "ccccii-NCP-1001-3001", "ccccii-NCP-1001-3002",
                                "ccccii-Normal-2001-3201"]
    assert rows.patient_id.nunique() == 3  # two NCP scans of one patient; CP patient 1001 is someone else
    assert rows.diagnosis3.tolist() == ["cap", "covid19", "covid19", "normal"]
    assert (rows.image_format == "slices2d").all()


def test_cc_ccii_unknown_label(tmp_path):
    fx.build_cc_ccii(tmp_path, metadata_label="COVID")
    with pytest.raises(PipelineInputError, match=r"cc_ccii: unknown label 'COVID' in unzip_filenames.csv line 2"):
        cc_ccii.build_index(tmp_path)


def test_cc_ccii_empty_scan_folder(tmp_path):
    fx.build_cc_ccii(tmp_path)
    (tmp_path / "NCP" / "1001" / "3003").mkdir()
    with pytest.raises(PipelineInputError, match=r"scan folder NCP/1001/3003 holds no slice images"):
        cc_ccii.build_index(tmp_path)


# --------------------------------------------------------------------------- combined, CLI, ids

def test_two_datasets_combined_keep_ids_distinct(tmp_path, curation_params):
    fx.build_mosmed(tmp_path / "mosmed")
    fx.build_covid19_ct_seg(tmp_path / "ctseg")
    indexes = [mosmed.build_index(tmp_path / "mosmed"), covid19_ct_seg.build_index(tmp_path / "ctseg")]
    combined = combine_indexes(indexes)
    assert combined.subject_id.is_unique and len(combined) == 5
    assert set(combined.dataset) == {"mosmed", "covid19_ct_seg"}
    # one subject of each curated and collected into one manifest
    metas = []
    for index in indexes:
        row = index.iloc[0].to_dict()
        curate_subject(row, curation_params, tmp_path / "curated" / row["subject_id"])
        metas.append(tmp_path / "curated" / row["subject_id"] / "meta.json")
    manifest = build_manifest(metas)
    assert manifest.subject_id.is_unique and set(manifest.dataset) == {"mosmed", "covid19_ct_seg"}


def test_combining_rejects_colliding_ids(tmp_path):
    fx.build_mosmed(tmp_path)
    index = mosmed.build_index(tmp_path)
    with pytest.raises(ValueError, match="subject ids collide"):
        combine_indexes([index, index])
    other = index.assign(dataset="other", subject_id=index.subject_id + "-x")
    with pytest.raises(ValueError, match="patient ids shared"):
        combine_indexes([index, other])


def test_index_cli_round_trip(tmp_path):
    fx.build_mosmed(tmp_path / "raw")
    out = tmp_path / "index.csv"
    assert index_main(["--dataset", "mosmed", "--raw-dir", str(tmp_path / "raw"), "--out", str(out)]) == 0
    row = index_row(out, "mosmed-study_0255")
    assert row["severity"] == 1 and row["lesion_mask_path"].endswith("study_0255_mask.nii.gz")
    assert row["image_format"] == "nifti"


@pytest.mark.parametrize("name, expected", [("P001", "P001"), ("bmj.m606%0", None), ("a b", None)])
def test_safe_id(name, expected):
    result = safe_id(name)
    assert result == expected if expected else (result != name and "%" not in result and " " not in result)
    assert safe_id("a%0") != safe_id("a-0")
