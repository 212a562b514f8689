"""twod-slices, twod-train, the reports and twod-attrib end to end on a tiny curated cohort
(12 subjects, 32 x 32 slices, width 1/16): outputs, resume, early stopping, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from covidmtl.errors import PipelineInputError
from covidmtl.twod import attribution, report, slices
from covidmtl.twod.experiment import OUTPUT_FILES, load_model_file, rebuild_model
from covidmtl.twod.experiment import main as train_main
from covidmtl.twod.variants import VARIANTS

PARAMS = {"width_multiplier": 1 / 16, "input_size": 32, "amyar": {"large_input_size": 48},
          "slices": {"image_size": 48, "per_subject": 3}, "split": {"fractions": [0.5, 0.25, 0.25]},
          "mga": {"batch_size": 8}, "train": {"max_epochs": 2, "progress": False},
          "attribution": {"n_slices": 2, "ig_steps": 4}}
DIAGNOSES = ("covid19", "cap", "normal")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_curated_cohort(root: Path, n: int = 12, shape=(10, 36, 40), seed: int = 0) -> Path:
    """Curated-stage layout: <root>/curated/<id>/ct.nii.gz + masks/{lung,lesion}.nii.gz and a manifest.
    COVID-19: several peripheral GGO-like lesions; CAP: fewer, denser, central; normal: none."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    rows = []
    for i in range(n):
        sid, diag = f"S{i:03d}", DIAGNOSES[i % 3]
        ct = np.full(shape, -1024.0)
        body = ((y - shape[1] / 2) / (0.45 * shape[1])) ** 2 + ((x - shape[2] / 2) / (0.47 * shape[2])) ** 2 < 1
        ct[body] = 40
        lung = np.zeros(shape, bool)
        for side in (-1, 1):
            lung |= (((x - shape[2] / 2 - side * 0.22 * shape[2]) / (0.15 * shape[2])) ** 2
                     + ((y - shape[1] / 2) / (0.3 * shape[1])) ** 2 < 1)
        lung &= (z > 0) & (z < shape[0] - 1)
        ct[lung] = -850
        lesion = np.zeros(shape, bool)
        for _ in range({"covid19": 4, "cap": 2, "normal": 0}[diag]):
            cz, cy, cx = rng.integers(2, shape[0] - 2), rng.integers(8, shape[1] - 8), rng.integers(6, shape[2] - 6)
            r = rng.uniform(2.5, 4)
            lesion |= ((z - cz) / 1.5) ** 2 + ((y - cy) / r) ** 2 + ((x - cx) / r) ** 2 < 1
        lesion &= lung
        ct[lesion] = -300 if diag == "covid19" else 20
        ct += rng.normal(0, 15, shape)
        d = root / "curated" / sid
        (d / "masks").mkdir(parents=True, exist_ok=True)
        for array, name in ((np.round(ct).astype(np.int16), "ct.nii.gz"), (lung.astype(np.uint8), "masks/lung.nii.gz"),
                            (lesion.astype(np.uint8), "masks/lesion.nii.gz")):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing((2.0, 2.0, 3.0))
            sitk.WriteImage(image, str(d / name))
        rows.append({"subject_id": sid, "patient_id": f"P{i:03d}", "dataset": "synthetic", "diagnosis3": diag,
                     "ct_path": str(d / "ct.nii.gz"), "lung_mask_path": str(d / "masks/lung.nii.gz"),
                     "lesion_mask_path": str(d / "masks/lesion.nii.gz")})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def slices_index(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("twod_cohort")
    manifest = write_curated_cohort(root)
    assert slices.main(["--manifest", str(manifest), "--params", json.dumps(PARAMS), "--out-dir",
                        str(root / "slices")]) == 0
    return root / "slices" / "index.csv"


def train(index: Path, variant: str, out: Path, params: dict | None = None, *extra: str) -> int:
    return train_main(["--variant", variant, "--slices-index", str(index), "--params", json.dumps(params or PARAMS),
                       "--threads", "1", "--out-dir", str(out), *extra])


@pytest.fixture(scope="module")
def runs(slices_index, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("twod_runs")
    dirs = {v: out / v for v in ("amyar_mtl_binary", "mga_seg_hmsa", "resnet18_cbam", "mga")}
    for v in ("amyar_mtl_binary", "mga_seg_hmsa", "resnet18_cbam"):
        assert train(slices_index, v, dirs[v]) == 0
    assert train(slices_index, "mga", dirs["mga"], None, "--segmenter", str(dirs["mga_seg_hmsa"] / "model.pt")) == 0
    dirs["mga_f50"] = out / "mga_f50"
    assert train(slices_index, "mga", dirs["mga_f50"], None, "--segmenter", str(dirs["mga_seg_hmsa"] / "model.pt"),
                 "--train-fraction", "0.5") == 0
    return dirs


def test_slices_index_layout_and_split(slices_index):
    index = pd.read_csv(slices_index)
    assert list(index.columns[:10]) == ["slice_id", "subject_id", "patient_id", "dataset", "label_binary",
                                        "label_3class", "has_mask", "split", "path", "mask_path"]
    assert (index.groupby("subject_id").size() <= 3).all() and index["subject_id"].nunique() == 12
    assert (index.groupby("patient_id")["split"].nunique() == 1).all()
    for split in ("train", "val", "test"):
        assert set(index.loc[index["split"] == split, "label_3class"]) == {0, 1, 2}
    # COVID-19/CAP slices show lesion; the PNGs have the stored size
    positive = index[index["label_3class"] != 0]
    assert (positive["lesion_fraction"] > 0).all()
    from PIL import Image
    assert Image.open(slices_index.parent / index["path"].iloc[0]).size == (48, 48)


def test_slices_mask_on_another_grid_names_both_files(tmp_path):
    manifest = write_curated_cohort(tmp_path, n=3)
    m = pd.read_csv(manifest)
    bad = sitk.GetImageFromArray(np.zeros((10, 20, 20), np.uint8))
    sitk.WriteImage(bad, m.loc[0, "lesion_mask_path"])
    with pytest.raises(PipelineInputError) as err:
        slices.main(["--manifest", str(manifest), "--params", json.dumps(PARAMS), "--out-dir", str(tmp_path / "s")])
    assert "lesion.nii.gz" in str(err.value) and "ct.nii.gz" in str(err.value) and "S000" in str(err.value)


def test_training_outputs_have_the_project_layout(runs):
    for name, d in runs.items():
        for f in OUTPUT_FILES:
            assert (d / f).is_file(), f"{name}: {f}"
        assert (d / "checkpoint.pt").is_file()
    pred = pd.read_csv(runs["amyar_mtl_binary"] / "predictions.csv")
    assert list(pred.columns) == ["slice_id", "subject_id", "task", "model", "y_true", "y_pred", "prob_0", "prob_1"]
    assert np.allclose(pred[["prob_0", "prob_1"]].sum(axis=1), 1, atol=1e-5)
    patient = pd.read_csv(runs["amyar_mtl_binary"] / "predictions_patient.csv")
    assert list(patient.columns[:5]) == ["subject_id", "task", "model", "y_true", "y_pred"]
    assert patient["subject_id"].is_unique and set(patient["subject_id"]) == set(pred["subject_id"])
    mga_pred = pd.read_csv(runs["mga"] / "predictions.csv")
    assert {"prob_2"} <= set(mga_pred.columns) and (mga_pred["task"] == "diagnosis3").all()
    seg = pd.read_csv(runs["mga_seg_hmsa"] / "seg_metrics.csv")
    assert {"dice", "iou", "precision", "recall"} <= set(seg.columns) and len(seg)
    assert pd.read_csv(runs["mga_seg_hmsa"] / "predictions.csv").empty
    m = json.loads((runs["mga"] / "metrics.json").read_text(encoding="utf-8"))
    assert m["guide_source"] == "predicted" and m["segmenter_variant"] == "mga_seg_hmsa"
    assert {"accuracy", "auc", "sensitivity", "specificity", "f1"} <= set(m["classification"])
    assert m["sec_per_batch"] > 0 and m["mga_stage"] == 2
    hist = pd.read_csv(runs["mga"] / "history.csv")
    assert {"train_loss_cls", "train_loss_mga", "val_loss_mga", "log_var_cls", "log_var_mga"} <= set(hist.columns)
    hist = pd.read_csv(runs["amyar_mtl_binary"] / "history.csv")
    assert {"train_loss_rec", "train_loss_seg", "train_loss_cls", "val_dice", "val_auc"} <= set(hist.columns)
    small = json.loads((runs["mga_f50"] / "metrics.json").read_text(encoding="utf-8"))
    assert small["n_patients"]["train"] < m["n_patients"]["train"] and small["n_slices"]["test"] == m["n_slices"]["test"]
    model, spec, _ = rebuild_model(load_model_file(runs["mga"] / "model.pt"))
    assert spec.name == "mga" and model(image=torch.rand(1, 1, 32, 32))["label"].shape == (1, 3)


def test_reports_and_attribution(runs, slices_index, tmp_path):
    dirs = list(runs.values()) + [tmp_path / "never_ran"]
    assert report.main_amyar(["--run-dirs", *map(str, dirs), "--out-dir", str(tmp_path / "amyar")]) == 0
    assert report.main_mga(["--run-dirs", *map(str, dirs), "--out-dir", str(tmp_path / "mga")]) == 0
    for stem in ("table2_segmentation", "table3_classification"):
        assert (tmp_path / "amyar" / f"{stem}.csv").is_file() and (tmp_path / "amyar" / f"{stem}.md").is_file()
    for stem in ("figure6_learning_curves", "figure7_segmentation", "figure8_roc_binary", "figure9_roc_3class",
                 "figure10_confusion"):
        assert (tmp_path / "amyar" / f"{stem}.png").is_file() and (tmp_path / "amyar" / f"{stem}.pdf").is_file()
    t3 = pd.read_csv(tmp_path / "amyar" / "table3_classification.csv")
    assert t3["Variant"].tolist() == ["amyar_mtl_binary"] and t3["AUC (paper)"].isna().all()
    t4 = pd.read_csv(tmp_path / "mga" / "table4_classifiers.csv")
    assert t4["Variant"].tolist() == ["resnet18_cbam", "mga"]
    sweep = pd.read_csv(tmp_path / "mga" / "size_sweep.csv")
    assert sorted(sweep["train_fraction"]) == [0.5, 1.0]
    assert (tmp_path / "mga" / "figure_size_sweep.png").is_file()
    seg = pd.read_csv(tmp_path / "mga" / "table3_segmentation.csv")
    assert seg["Variant"].tolist() == ["mga_seg_hmsa"] and {"IoU", "Dice", "Precision", "Recall"} <= set(seg.columns)
    paper = tmp_path / "paper.csv"
    pd.DataFrame([{"table": "amyar_table3", "model": "amyar_mtl_binary", "metric": "auc", "value": 0.5}]).to_csv(
        paper, index=False)
    table3 = report.amyar_classification_table(report.full_runs(report.load_runs([runs["amyar_mtl_binary"]])),
                                               report.load_paper_values(paper))
    assert table3["AUC (paper)"].tolist() == [0.5] and table3["Accuracy (paper)"].isna().all()

    assert attribution.main(["--run-dirs", str(runs["resnet18_cbam"]), str(runs["mga"]), "--slices-index",
                             str(slices_index), "--params", json.dumps(PARAMS), "--out-dir", str(tmp_path / "attr")]) == 0
    table = pd.read_csv(tmp_path / "attr" / "attribution_in_mask.csv")
    assert set(table["method"]) == {"Integrated Gradients", "DeepLIFT"} and table["share_in_mask"].between(0, 1).all()
    assert (tmp_path / "attr" / "figure10_attribution.png").is_file()


def test_resume_gives_the_weights_of_an_uninterrupted_run(slices_index, tmp_path):
    params = {**PARAMS, "train": {**PARAMS["train"], "max_epochs": 3}}
    assert train(slices_index, "cnn8_binary", tmp_path / "full", params) == 0
    assert train(slices_index, "cnn8_binary", tmp_path / "cut", params, "--stop-after-epoch", "1") == 0
    assert not (tmp_path / "cut" / "model.pt").exists() and (tmp_path / "cut" / "checkpoint.pt").exists()
    assert train(slices_index, "cnn8_binary", tmp_path / "cut", params) == 0
    a = load_model_file(tmp_path / "full" / "model.pt")["state_dict"]
    b = load_model_file(tmp_path / "cut" / "model.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    full, cut = (pd.read_csv(tmp_path / d / "history.csv") for d in ("full", "cut"))
    losses = [c for c in full.columns if "loss" in c or c in {"epoch", "lr", "val_auc", "best_epoch"}]
    pd.testing.assert_frame_equal(full[losses], cut[losses])


def test_early_stopping_stops_and_keeps_the_best_epoch(slices_index, tmp_path):
    # an improvement must exceed 1000: only the first epoch counts, so patience 2 stops after epoch 3
    params = {**PARAMS, "train": {**PARAMS["train"], "max_epochs": 10, "min_delta": 1000.0},
              "amyar": {**PARAMS["amyar"], "patience": 2}}
    assert train(slices_index, "cnn8_binary", tmp_path / "es", params) == 0
    m = json.loads((tmp_path / "es" / "metrics.json").read_text(encoding="utf-8"))
    assert m["stopped_early"] and m["epochs"] == 3 and m["best_epoch"] == 1


def test_missing_class_stops_before_training(slices_index, tmp_path):
    index = pd.read_csv(slices_index)
    index["path"] = [str(slices_index.parent / p) for p in index["path"]]
    index["mask_path"] = [str(slices_index.parent / p) if isinstance(p, str) else "" for p in index["mask_path"]]
    index.loc[(index["split"] == "test") & (index["label_3class"] == 2), "split"] = "train"
    bad = tmp_path / "index.csv"
    index.to_csv(bad, index=False)
    with pytest.raises(PipelineInputError, match=r"CAP/other.*test split"):
        train(bad, "amyar_mtl_3class", tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    train(bad, "amyar_mtl_binary", tmp_path / "binary_ok", {**PARAMS, "train": {**PARAMS["train"], "max_epochs": 1}})


def test_mga_without_segmenter_is_a_clear_error(slices_index, tmp_path):
    with pytest.raises(PipelineInputError, match="--segmenter"):
        train(slices_index, "mga_stage1", tmp_path / "run")
    params = {**PARAMS, "mga": {**PARAMS["mga"], "guide_source": "ground_truth"}, "train": {**PARAMS["train"],
                                                                                          "max_epochs": 1}}
    assert train(slices_index, "mga_stage1", tmp_path / "gt", params) == 0


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_trains(slices_index, tmp_path, variant):
    params = {**PARAMS, "train": {**PARAMS["train"], "max_epochs": 1},
              "mga": {**PARAMS["mga"], "guide_source": "ground_truth"}}
    assert train(slices_index, variant, tmp_path / variant, params) == 0
    assert (tmp_path / variant / "metrics.json").is_file()
