"""Lung feature extraction (PyRadiomics) and the merged feature table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from covidmtl.errors import PipelineInputError
from covidmtl.features import feature_columns
from covidmtl.features.merge import collect_rows, main as merge_main, merge_features
from covidmtl.features.radiomics import (
    extract_subject,
    load_params,
    main as extract_main,
    read_table_file,
    write_table_file,
)

PARAMS_FILE = Path(__file__).resolve().parents[1] / "config" / "radiomics.yaml"
WAVELET_BANDS = ["LLH", "LHL", "LHH", "HLL", "HLH", "HHL", "HHH", "LLL"]


def _write_case(tmp: Path, name: str, image: np.ndarray, mask: np.ndarray,
                mask_spacing=(1.0, 1.0, 1.0)) -> tuple[Path, Path]:
    img = sitk.GetImageFromArray(image)
    img.SetSpacing((1.0, 1.0, 1.0))
    msk = sitk.GetImageFromArray(mask.astype(np.uint8))
    msk.SetSpacing(mask_spacing)
    ip, mp = tmp / f"{name}_lung_volume.nii.gz", tmp / f"{name}_lung_volume_mask.nii.gz"
    sitk.WriteImage(img, str(ip))
    sitk.WriteImage(msk, str(mp))
    return ip, mp


def _blob_case(seed: int = 0, size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A 40^3 'lung': a ball of -850 HU parenchyma with noise and a ground-glass blob."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:size, :size, :size]
    c = size / 2
    r = np.sqrt((z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2)
    mask = (r < 0.35 * size).astype(np.uint8)
    image = rng.normal(-850, 40, size=mask.shape)
    image[np.sqrt((z - c) ** 2 + (y - c - 6) ** 2 + (x - c) ** 2) < 5] = -500  # ground-glass lesion
    image[mask == 0] = -1024  # background value of the lung-segmentation stage
    return image.astype(np.int16), mask


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> pd.DataFrame:
    tmp = tmp_path_factory.mktemp("feat")
    image, mask = _blob_case()
    ip, mp = _write_case(tmp, "S001", image, mask)
    out = tmp / "S001.parquet"
    assert extract_main(["--subject", "S001", "--image", str(ip), "--mask", str(mp),
                         "--params-file", str(PARAMS_FILE), "--out", str(out)]) == 0
    return read_table_file(out)


def test_feature_count_and_names(extracted):
    feats = feature_columns(extracted)
    # original: firstorder 18 + glcm 24 + glrlm 16 + glszm 16; 8 wavelet bands x (glcm 24 + glrlm 16)
    assert len(feats) == 74 + 8 * 40 == 394
    assert int(extracted["qc_n_features"].iloc[0]) == 394
    for name in ["wavelet-HLL_glcm_ClusterProminence", "original_firstorder_Maximum", "wavelet-LLL_glcm_Imc1",
                 "original_glszm_ZoneEntropy", "wavelet-HHH_glrlm_RunEntropy"]:
        assert name in feats
    classes = {tuple(f.split("_")[:2]) for f in feats}
    assert {c for t, c in classes if t == "original"} == {"firstorder", "glcm", "glrlm", "glszm"}
    for band in WAVELET_BANDS:
        assert {c for t, c in classes if t == f"wavelet-{band}"} == {"glcm", "glrlm"}
    assert extracted["subject_id"].iloc[0] == "S001"
    assert extracted["original_firstorder_Maximum"].iloc[0] == pytest.approx(-500.0)
    assert int(extracted["qc_mask_voxels"].iloc[0]) > 1000


def test_params_file_passes():
    params = load_params(PARAMS_FILE)
    passes = params.passes()
    assert [sorted(p["imageType"]) for p in passes] == [["Original"], ["Wavelet"]]
    assert sorted(passes[1]["featureClass"]) == ["glcm", "glrlm"]
    assert params.pyradiomics["setting"]["binWidth"] == 25


def test_bad_params_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("setting:\n  binWidht: 25\nimageType:\n  Original: {}\n")
    with pytest.raises(PipelineInputError, match="PyRadiomics rejects"):
        load_params(bad)


@pytest.mark.parametrize("case, match", [
    ("empty", "lung mask is empty"),
    ("tiny", "lung mask is tiny"),
    ("constant", "constant"),
    ("grid", "not on the lung volume's grid"),
])
def test_bad_inputs_name_the_subject(tmp_path, case, match):
    image, mask = _blob_case(size=24)
    spacing = (1.0, 1.0, 1.0)
    if case == "empty":
        mask[:] = 0
    elif case == "tiny":
        mask[:] = 0
        mask[10:13, 10:13, 10:13] = 1
    elif case == "constant":
        image[:] = -800
    elif case == "grid":
        spacing = (1.0, 1.0, 2.0)
    ip, mp = _write_case(tmp_path, "S9", image, mask, mask_spacing=spacing)
    with pytest.raises(PipelineInputError, match=match) as err:
        extract_subject("S9", ip, mp, PARAMS_FILE)
    assert "subject=S9" in str(err.value) and "stage=features" in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(PipelineInputError, match="does not exist"):
        extract_subject("S7", tmp_path / "nope.nii.gz", tmp_path / "nope_mask.nii.gz", PARAMS_FILE)


# ---------------------------------------------------------------- merge

FEATS = ["original_firstorder_Mean", "original_glcm_Contrast", "wavelet-LLL_glcm_Imc1"]


def _row(sid: str, values, sha="abc") -> pd.DataFrame:
    return pd.DataFrame([{"subject_id": sid, **dict(zip(FEATS, values)), "qc_mask_voxels": 5000,
                          "qc_params_sha256": sha}])


def _manifest(ids) -> pd.DataFrame:
    return pd.DataFrame({"subject_id": ids, "patient_id": [f"P{i}" for i in ids], "ct": 1, "nat": 0,
                         "severity": 1, "sex": "F", "age": 50.0, "path": "x"})


def test_merge_excludes_and_lists(tmp_path):
    files = []
    for sid, vals in [("A", [1.0, 2.0, 3.0]), ("B", [1.5, np.nan, 2.0]), ("C", [np.nan, np.inf, np.nan]),
                      ("D", [2.0, 1.0, 1.0]), ("X", [0.0, 0.0, 0.0])]:
        files.append(write_table_file(_row(sid, vals), tmp_path / f"{sid}.parquet"))
    table, diag, qc = merge_features(collect_rows(files), _manifest(["A", "B", "C", "D", "E"]),
                                     max_nonfinite_fraction=0.5)
    assert list(table["subject_id"]) == ["A", "B", "D"]
    assert feature_columns(table) == ["original_firstorder_Mean", "wavelet-LLL_glcm_Imc1"]
    assert {"ct", "nat", "severity", "sex", "age"} <= set(table.columns) and "path" not in table.columns
    reasons = dict(zip(qc["item"], qc["reason"]))
    assert set(qc["kind"]) == {"subject", "feature"}
    assert "no feature file" in reasons["E"]
    assert "not in the manifest" in reasons["X"]
    assert "3 of 3 features NaN/infinite" in reasons["C"]
    assert "NaN/infinite for 1 subject(s): B" in reasons["original_glcm_Contrast"]
    assert "qc_mask_voxels" in diag.columns


def test_merge_rejects_mixed_inputs(tmp_path):
    a = write_table_file(_row("A", [1, 2, 3]), tmp_path / "A.csv")
    b = write_table_file(_row("B", [1, 2, 3]).drop(columns=FEATS[0]), tmp_path / "B.csv")
    with pytest.raises(PipelineInputError, match="feature set differs"):
        collect_rows([a, b])
    c = write_table_file(_row("A", [1, 2, 3]), tmp_path / "A2.json")
    with pytest.raises(PipelineInputError, match="subject=A"):
        collect_rows([a, c])
    d = write_table_file(_row("D", [1, 2, 3], sha="other"), tmp_path / "D.csv")
    with pytest.raises(PipelineInputError, match="different parameter file"):
        collect_rows([a, d])


def test_merge_cli(tmp_path):
    files = [str(write_table_file(_row(s, [i, i + 1.0, 2 * i]), tmp_path / f"{s}.parquet"))
             for i, s in enumerate(["A", "B"])]
    _manifest(["A", "B"]).to_csv(tmp_path / "manifest.csv", index=False)
    stem = tmp_path / "out" / "features"
    assert merge_main(["--inputs", *files, "--manifest", str(tmp_path / "manifest.csv"), "--out-stem", str(stem),
                       "--qc", str(tmp_path / "out" / "qc.csv")]) == 0
    assert pd.read_parquet(stem.with_suffix(".parquet")).shape == (2, 1 + 6 + 3)  # subject_id, 6 labels, 3 features
    assert stem.with_suffix(".csv").exists() and (stem.parent / "features_diagnostics.csv").exists()
    assert list(pd.read_csv(tmp_path / "out" / "qc.csv").columns) == ["item", "kind", "reason"]
