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

from covidmtl.datasets import cc_ccii, medseg, ucsd_covid_ct
from covidmtl.errors import PipelineInputError
from covidmtl.twod import attribution, index2d, report, slices
from covidmtl.twod.data import read_slice_index
from covidmtl.twod.experiment import OUTPUT_FILES, load_model_file, rebuild_model
from covidmtl.twod.experiment import main as train_main
from covidmtl.twod.variants import VARIANTS

import fixtures_datasets as fx

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
    # MGA Table 5: the stage of twod.mga.attention_stage (2) comes from the mga run
    t5 = pd.read_csv(tmp_path / "mga" / "table5_mga_stage.csv")
    assert t5["Model"].tolist() == ["MGA at stage 2"] and t5["Variant"].tolist() == ["mga"]

    # paper values in config/paper_values.csv's format: only the right (task, model, metric) cell
    paper = tmp_path / "paper_values.csv"
    paper.write_text("task,model,metric,value,source\n"
                     "ct,mtl_shift_features,auc,0.939,other stage\n"
                     "amyar_binary,amyar_mtl_binary,auc,0.5,test\n"
                     "amyar_binary,amyar_mtl_binary,accuracy,,value not yet checked\n"
                     "amyar_3class,amyar_mtl_binary,sensitivity,0.7,the 3-class table\n"
                     "mga_stage,mga_stage2,f1,0.25,test\n", encoding="utf-8")
    out = tmp_path / "amyar_paper"
    assert report.main_amyar(["--run-dirs", *map(str, dirs), "--out-dir", str(out), "--paper-values", str(paper)]) == 0
    table3 = pd.read_csv(out / "table3_classification.csv")
    assert table3["AUC (paper)"].tolist() == [0.5] and table3["Accuracy (paper)"].isna().all()
    assert table3["Sensitivity (paper)"].isna().all()
    assert "nan" not in (out / "table3_classification.md").read_text(encoding="utf-8").lower()
    assert report.main_mga(["--run-dirs", *map(str, dirs), "--out-dir", str(tmp_path / "mga_paper"),
                            "--paper-values", str(paper)]) == 0
    assert pd.read_csv(tmp_path / "mga_paper" / "table5_mga_stage.csv")["F1 (paper)"].tolist() == [0.25]
    assert pd.read_csv(tmp_path / "mga_paper" / "table4_classifiers.csv")["F1 (paper)"].isna().all()
    (tmp_path / "old_layout.csv").write_text("table,model,metric,value\namyar_table3,cnn8_binary,auc,0.9\n")
    with pytest.raises(ValueError, match=r"lacks columns \['task'\]"):
        report.load_paper_values(tmp_path / "old_layout.csv")

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


def test_segmenter_without_validation_masks_stops_before_training(slices_index, tmp_path):
    index = read_slice_index(slices_index)
    index.loc[index["split"] == "val", "mask_path"] = ""
    bad = tmp_path / "index.csv"
    index.drop(columns=["has_mask"]).to_csv(bad, index=False)
    for variant in ("unet_seg", "unet_seg_amyar"):
        message = rf"no slice of the val split has a lesion mask; variant {variant}"
        with pytest.raises(PipelineInputError, match=message):
            train(bad, variant, tmp_path / variant)
        assert not (tmp_path / variant / "checkpoint.pt").exists()


def test_unet_baselines_train_with_their_papers_recipes():
    from covidmtl.twod.config import TwoDConfig
    from covidmtl.twod.experiment import fit_settings

    cfg = TwoDConfig()
    amyar, mga = fit_settings(VARIANTS["unet_seg_amyar"], cfg, 0), fit_settings(VARIANTS["unet_seg"], cfg, 0)
    assert (amyar.batch_size, amyar.lr_max, amyar.scheduler, amyar.patience) == (4, 1e-4, "constant", 10)
    assert (mga.batch_size, mga.scheduler) == (cfg.segmenter.batch_size, cfg.segmenter.scheduler)
    assert VARIANTS["unet_seg_amyar"].architecture == VARIANTS["unet_seg"].architecture == "unet"
    assert report.amyar_seg_order()[0] == "unet_seg_amyar" and "unet_seg" in report.MGA_SEG


@pytest.fixture(scope="module")
def datasets_2d(tmp_path_factory) -> dict[str, Path]:
    """Tiny UCSD COVID-CT, MedSeg and CC-CCII copies indexed by their adapters (tests/fixtures_datasets.py)."""
    root = tmp_path_factory.mktemp("twod_datasets")
    paths = {}
    for name, build, adapter in (("ucsd_covid_ct", fx.build_ucsd, ucsd_covid_ct), ("medseg", fx.build_medseg, medseg),
                                 ("cc_ccii", fx.build_cc_ccii, cc_ccii)):
        build(root / name)
        paths[name] = root / name / "index.csv"
        adapter.build_index(root / name).to_csv(paths[name], index=False)
    return paths


def test_2d_datasets_reach_the_slice_index_with_their_labels_and_patients(datasets_2d, slices_index, tmp_path):
    out = tmp_path / "slices"
    assert index2d.main(["--index", *map(str, datasets_2d.values()), "--volume-slices", str(slices_index),
                         "--params", json.dumps(PARAMS), "--out-dir", str(out)]) == 0
    index = read_slice_index(out / "index.csv")  # the reader of twod-train: every path resolves
    assert all(Path(p).is_file() for p in index["path"]) and all(Path(p).is_file() for p in index["mask_path"] if p)
    by = index.set_index("slice_id")
    # UCSD: COVID images are COVID-19; non-COVID ones binary only; panels of one figure share a patient
    assert by.loc["ucsd-covid-kjr-21-e24-p2-8", ["label_binary", "label_3class"]].tolist() == [1, 1]
    assert by.loc["ucsd-noncovid-996", "label_binary"] == 0 and pd.isna(by.loc["ucsd-noncovid-996", "label_3class"])
    panels = index[index["slice_id"].str.startswith("ucsd-covid-bmj")]
    assert len(panels) == 2 and panels["patient_id"].nunique() == 1
    # MedSeg Dataset 1: 2D NIfTI slices with their merged lesion masks (the rp_ volume is not a 2D row)
    medseg_rows = index[index["dataset"] == "medseg"]
    assert len(medseg_rows) == 6 and not medseg_rows["slice_id"].str.contains("rp_").any()
    assert medseg_rows["has_mask"].sum() == 4 and (medseg_rows["label_3class"] == 1).all()
    # CC-CCII: each scan folder expanded into its slices; labels from the class folders
    cc = index[index["dataset"] == "cc_ccii"]
    assert len(cc) == 8 and cc.groupby("subject_id").size().eq(2).all()
    assert dict(cc.groupby("patient_id")["label_3class"].first()) == {
        "ccccii-CP-1001": 2, "ccccii-NCP-1001": 1, "ccccii-Normal-2001": 0}
    assert cc[cc["patient_id"] == "ccccii-NCP-1001"]["subject_id"].nunique() == 2
    # the volume slices are still there, with their masks
    assert (index["dataset"] == "synthetic").sum() == len(pd.read_csv(slices_index))
    # converted to the stored slice format
    from PIL import Image
    with Image.open(by.loc["medseg-tr_001", "path"]) as im:
        assert im.size == (48, 48) and im.mode == "L"
    # patient-aware split over all datasets, every class in every split
    assert (index.groupby("patient_id")["split"].nunique() == 1).all()
    for split in ("train", "val", "test"):
        assert set(index.loc[index["split"] == split, "label_3class"].dropna()) == {0, 1, 2}
    qc = pd.read_csv(out / "qc.csv")
    assert set(qc["status"]) == {"ok"} and qc["n_slices"].sum() == len(index) - (index["dataset"] == "synthetic").sum()
    # the 3-class variants leave the binary-only slices out and train
    params = {**PARAMS, "train": {**PARAMS["train"], "max_epochs": 1}}
    assert train(out / "index.csv", "cnn8_3class", tmp_path / "run", params) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    assert sum(m["n_slices"].values()) == int(index["label_3class"].notna().sum())


def test_volume_slices_alone_keep_their_split(slices_index, tmp_path):
    assert index2d.main(["--volume-slices", str(slices_index), "--params", json.dumps(PARAMS),
                         "--out-dir", str(tmp_path / "s")]) == 0
    merged = pd.read_csv(tmp_path / "s" / "index.csv").set_index("slice_id")
    original = pd.read_csv(slices_index).set_index("slice_id")
    assert merged.loc[original.index, "split"].tolist() == original["split"].tolist()


def test_a_bad_2d_image_is_recorded_and_the_rest_kept(datasets_2d, tmp_path, caplog):
    rows = pd.read_csv(datasets_2d["ucsd_covid_ct"], dtype=str, keep_default_na=False)
    broken = Path(rows.loc[rows["subject_id"] == "ucsd-noncovid-14", "image_path"].iloc[0])
    medseg_rows = pd.read_csv(datasets_2d["medseg"], dtype=str, keep_default_na=False)
    work = tmp_path / "data"
    work.mkdir()
    # copies, so that the module's fixture stays intact
    bad_png = work / "broken.png"
    bad_png.write_bytes(b"not a png")
    rows.loc[rows["subject_id"] == "ucsd-noncovid-14", "image_path"] = str(bad_png)
    small = work / "small_mask.nii.gz"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkUInt8), str(small))
    medseg_rows.loc[medseg_rows["subject_id"] == "medseg-tr_002", "lesion_mask_path"] = str(small)
    rows.to_csv(work / "ucsd.csv", index=False)
    medseg_rows.to_csv(work / "medseg.csv", index=False)
    with caplog.at_level("ERROR"):
        assert index2d.main(["--index", str(work / "ucsd.csv"), str(work / "medseg.csv"), "--params",
                             json.dumps(PARAMS), "--out-dir", str(tmp_path / "s")]) == 0
    assert broken.is_file()
    errors = pd.read_csv(tmp_path / "s" / "qc.csv").query("status == 'error'").set_index("subject_id")
    assert set(errors.index) == {"ucsd-noncovid-14", "medseg-tr_002"}
    assert "cannot read the image" in errors.loc["ucsd-noncovid-14", "reason"]
    assert "8x8 pixels but its image" in errors.loc["medseg-tr_002", "reason"]
    assert errors.loc["medseg-tr_002", "file"] == str(small)
    log = caplog.text
    assert "stage=twod-index subject=ucsd-noncovid-14" in log and str(bad_png) in log and "16x16" in log
    index = pd.read_csv(tmp_path / "s" / "index.csv")
    assert len(index) == 10 - 1 + 6 - 1 and "ucsd-noncovid-14" not in set(index["subject_id"])


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_trains(slices_index, tmp_path, variant):
    params = {**PARAMS, "train": {**PARAMS["train"], "max_epochs": 1},
              "mga": {**PARAMS["mga"], "guide_source": "ground_truth"}}
    assert train(slices_index, variant, tmp_path / variant, params) == 0
    assert (tmp_path / variant / "metrics.json").is_file()
