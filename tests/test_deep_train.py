"""deep-train end to end on tiny fake NIfTI volumes: outputs, resume, transfer, bad inputs,
deep-report and deep-cam."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from covidmtl.deep.config import DeepConfig
from covidmtl.deep.data import VolumeDataset, VolumeLoader, build_transform, discover_volumes, prepare_inputs
from covidmtl.deep.experiment import main as train_main
from covidmtl.deep.experiment import run
from covidmtl.deep.variants import get_variant
from covidmtl.errors import PipelineInputError

N_SUBJECTS = 8
PARAMS = {"width_multiplier": 0.125, "bn_momentum": 0.1, "input": {"crop_size": [16, 16, 16]},
          "train": {"epochs": 3, "batch_size": 2, "progress": False}}


def write_cohort(root: Path, n: int = N_SUBJECTS, shape=(20, 20, 22)) -> Path:
    rng = np.random.default_rng(0)
    rows, feats = [], []
    for i in range(n):
        sid = f"S{i:03d}"
        ct, nat, severity = i % 2, (i // 2) % 2, i % 3
        a = np.full(shape, -1024, np.float32)
        a[2:-2, 3:-3, 3:-3] = -850 + rng.normal(0, 30, (shape[0] - 4, shape[1] - 6, shape[2] - 6))
        if ct:
            a[6:10, 8:12, 8:12] = -300
        image = sitk.GetImageFromArray(a.astype(np.int16))
        folder = root / "lungseg" / sid
        folder.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(folder / "lung_volume.nii.gz"))
        rows.append({"subject_id": sid, "patient_id": f"P{i}", "ct": ct, "nat": nat, "severity": severity})
        feats.append({"subject_id": sid, "original_firstorder_Mean": float(a.mean()),
                      "original_glcm_Imc1": rng.normal(), "wavelet-LLL_glcm_Imc1": rng.normal(), "ct": ct})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    # Test split holds both classes of every binary task.
    split = ["train"] * (n - 4) + ["test"] * 4
    pd.DataFrame({"subject_id": [r["subject_id"] for r in rows], "split": split}).to_csv(root / "split.csv", index=False)
    pd.DataFrame(feats).to_csv(root / "features.csv", index=False)
    return root


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return write_cohort(tmp_path_factory.mktemp("deep_cohort"))


def train_args(cohort: Path, variant: str, out: Path, params: dict | None = None, *extra: str) -> list[str]:
    return ["--variant", variant, "--volumes-dir", str(cohort / "lungseg"), "--manifest", str(cohort / "manifest.csv"),
            "--split", str(cohort / "split.csv"), "--features", str(cohort / "features.csv"),
            "--params", json.dumps(params or PARAMS), "--out-dir", str(out), *extra]


@pytest.fixture(scope="module")
def runs(cohort, tmp_path_factory) -> dict[str, Path]:
    """Three tiny runs shared by the output, report and CAM tests."""
    out = tmp_path_factory.mktemp("deep_runs")
    one_epoch = {**PARAMS, "train": {**PARAMS["train"], "epochs": 2}, "transfer": {"epochs": 2}}
    dirs = {}
    for variant in ("mtl_shift_features", "mtl2_shift"):
        dirs[variant] = out / variant
        assert train_main(train_args(cohort, variant, dirs[variant], one_epoch)) == 0
    dirs["transfer_severity_shift"] = out / "transfer_severity_shift"
    assert train_main(train_args(cohort, "transfer_severity_shift", dirs["transfer_severity_shift"], one_epoch,
                                 "--init-from", str(dirs["mtl2_shift"] / "model.pt"))) == 0
    return dirs


def test_outputs_have_the_shared_layout(runs):
    d = runs["mtl_shift_features"]
    for name in ("model.pt", "checkpoint.pt", "history.csv", "predictions.csv", "metrics.json"):
        assert (d / name).is_file(), name
    pred = pd.read_csv(d / "predictions.csv", dtype={"subject_id": str})
    assert list(pred.columns) == ["subject_id", "task", "model", "y_true", "y_pred", "prob_0", "prob_1", "prob_2"]
    assert set(pred.task) == {"ct", "nat", "severity"} and len(pred) == 3 * 4
    assert pred.loc[pred.task == "ct", "prob_2"].isna().all()
    probs = pred[["prob_0", "prob_1", "prob_2"]].fillna(0).sum(axis=1)
    assert np.allclose(probs, 1, atol=1e-5)
    hist = pd.read_csv(d / "history.csv")
    assert list(hist.epoch) == [1, 2]
    for col in ("train_loss_total", "test_loss_total", "test_loss_mean", "test_loss_ct", "test_loss_severity",
                "test_auc_ct", "train_acc_nat", "lr"):
        assert col in hist.columns
    metrics = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["variant"] == "mtl_shift_features" and metrics["n_features"] == 3
    assert {"precision", "recall", "f1", "accuracy", "auc"} <= set(metrics["metrics"]["ct"])
    assert "auc_sd" in metrics["metrics"]["severity"]
    ckpt = torch.load(d / "checkpoint.pt", weights_only=True)  # RNG states stored as plain types
    assert ckpt["epoch"] == 2 and "rng" in ckpt
    assert torch.load(d / "model.pt", weights_only=True)["variant"] == "mtl_shift_features"


def test_transfer_keeps_the_frozen_trunk(runs):
    source = torch.load(runs["mtl2_shift"] / "model.pt", weights_only=True)["state_dict"]
    target = torch.load(runs["transfer_severity_shift"] / "model.pt", weights_only=True)["state_dict"]
    trunk = [k for k in source if k.startswith("trunk.")]
    assert trunk and all(torch.equal(source[k], target[k]) for k in trunk)
    assert not any(k.startswith("heads.ct") for k in target) and any(k.startswith("heads.severity") for k in target)
    pred = pd.read_csv(runs["transfer_severity_shift"] / "predictions.csv")
    assert set(pred.task) == {"severity"}


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(cohort, tmp_path):
    spec = get_variant("mtl_shift_uncertainty")  # Shift3D, random draws, learnable loss weights
    cfg = DeepConfig.from_dict(PARAMS)
    vols = discover_volumes(cohort / "lungseg")
    args = (cohort / "manifest.csv", cohort / "split.csv", None)
    run(spec, cfg, vols, *args, tmp_path / "straight")
    assert run(spec, cfg, vols, *args, tmp_path / "resumed", stop_after_epoch=1) is None
    assert not (tmp_path / "resumed" / "model.pt").exists()
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    torch.manual_seed(12345)  # a new process would start from another RNG state
    run(spec, cfg, vols, *args, tmp_path / "resumed")
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha = pd.read_csv(tmp_path / "straight" / "history.csv").drop(columns="seconds")
    hb = pd.read_csv(tmp_path / "resumed" / "history.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(ha, hb)


def test_stale_checkpoint_of_another_config_is_not_resumed(cohort, tmp_path):
    out = tmp_path / "run"
    params = {**PARAMS, "train": {**PARAMS["train"], "epochs": 1}}
    assert train_main(train_args(cohort, "squeezenet3d_ct", out, params)) == 0
    params["train"]["lr_max"] = 0.001
    assert train_main(train_args(cohort, "squeezenet3d_ct", out, params)) == 0
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["config"]["train"]["lr_max"] == 0.001


# ----------------------------------------------------------------------------- bad input


def _copy_cohort(cohort: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "cohort"
    shutil.copytree(cohort, dst)
    return dst


def test_feature_table_missing_subjects_fails_before_training(cohort, tmp_path):
    c = _copy_cohort(cohort, tmp_path)
    feats = pd.read_csv(c / "features.csv", dtype={"subject_id": str})
    feats[feats.subject_id != "S006"].to_csv(c / "features.csv", index=False)
    out = tmp_path / "out"
    with pytest.raises(PipelineInputError, match="lacks 1 subject") as err:
        train_main(train_args(c, "mtl_shift_features", out))
    assert err.value.subject == "S006" and "features.csv" in str(err.value)
    assert not (out / "checkpoint.pt").exists()


def test_volume_smaller_than_crop_fails_unless_padding(cohort, tmp_path):
    c = _copy_cohort(cohort, tmp_path)
    small = sitk.GetImageFromArray(np.full((10, 20, 22), -900, np.int16))
    sitk.WriteImage(small, str(c / "lungseg" / "S002" / "lung_volume.nii.gz"))
    out = tmp_path / "out"
    no_padding = {**PARAMS, "input": {**PARAMS["input"], "pad_to_crop": False}}
    with pytest.raises(PipelineInputError, match="smaller than the crop") as err:
        train_main(train_args(c, "squeezenet3d_ct", out, no_padding))
    assert err.value.subject == "S002" and "pad_to_crop" in str(err.value)
    assert not (out / "checkpoint.pt").exists()

    cfg = DeepConfig.from_dict({**PARAMS, "input": {"crop_size": [16, 16, 16], "pad_to_crop": True}})
    data = prepare_inputs({"ct": 2}, cfg, discover_volumes(c / "lungseg"), c / "manifest.csv", c / "split.csv")
    ds = VolumeDataset(data.train, VolumeLoader(), build_transform(cfg, True, -900.0, 100.0))
    item = ds[data.train.subject_ids.index("S002")]
    assert item["inputs"]["image"].shape == (1, 16, 16, 16)


def test_missing_label_fails_before_training(cohort, tmp_path):
    c = _copy_cohort(cohort, tmp_path)
    manifest = pd.read_csv(c / "manifest.csv", dtype={"subject_id": str})
    manifest.loc[manifest.subject_id == "S005", "severity"] = np.nan
    manifest.to_csv(c / "manifest.csv", index=False)
    with pytest.raises(PipelineInputError, match="label 'severity' is missing") as err:
        train_main(train_args(c, "mtl_shift", tmp_path / "out"))
    assert err.value.subject == "S005"
    # A variant that does not train severity does not need it.
    cfg = DeepConfig.from_dict(PARAMS)
    prepare_inputs({"ct": 2, "nat": 2}, cfg, discover_volumes(c / "lungseg"), c / "manifest.csv", c / "split.csv")


def test_transfer_needs_a_two_task_model(cohort, runs, tmp_path):
    with pytest.raises(PipelineInputError, match="--init-from"):
        train_main(train_args(cohort, "transfer_severity_shift", tmp_path / "a"))
    with pytest.raises(PipelineInputError, match="two-task model"):
        train_main(train_args(cohort, "transfer_severity_shift", tmp_path / "b", None,
                              "--init-from", str(runs["mtl_shift_features"] / "model.pt")))


def test_volumes_list_file(cohort, tmp_path):
    lines = ["subject_id,path"] + [f"{p.parent.name},{p}" for p in sorted((cohort / "lungseg").rglob("*.nii.gz"))]
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    assert discover_volumes(volumes_list=tmp_path / "list.csv") == discover_volumes(cohort / "lungseg")


# ----------------------------------------------------------------------------- report and CAM


def test_deep_report_tables_and_figures(runs, tmp_path):
    from covidmtl.deep.report import main as report_main

    out = tmp_path / "report"
    assert report_main(["--run-dirs", *map(str, runs.values()), str(tmp_path / "missing"), "--out-dir", str(out)]) == 0
    for name in ("table3_deep.csv", "table3_deep.md", "table4_deep.csv", "table4_deep.md", "metrics_deep.csv",
                 "figure4_shift3d.png", "figure4_shift3d.pdf", "figure9_losses.png", "figure10_transfer.png",
                 "figure10_transfer.pdf"):
        assert (out / name).is_file(), name
    t3 = pd.read_csv(out / "table3_deep.csv")
    assert set(t3.Variant) == {"mtl_shift_features", "mtl2_shift"}
    full_ct = t3[(t3.Variant == "mtl_shift_features") & t3.Task.str.contains("CT")]
    assert full_ct["AUC (paper)"].iloc[0] == 0.939
    assert t3.loc[t3.Variant == "mtl2_shift", "AUC (paper)"].isna().all()
    t4 = pd.read_csv(out / "table4_deep.csv")
    assert set(t4.Variant) == {"mtl_shift_features", "transfer_severity_shift"}
    assert t4.loc[t4.Variant == "transfer_severity_shift", "AUC mean (paper)"].iloc[0] == 0.813


def test_deep_cam_figure(cohort, runs, tmp_path):
    from covidmtl.deep.cam import main as cam_main

    d = runs["mtl_shift_features"]
    out = tmp_path / "cam"
    assert cam_main(["--model", str(d / "model.pt"), "--volumes-dir", str(cohort / "lungseg"),
                     "--manifest", str(cohort / "manifest.csv"), "--split", str(cohort / "split.csv"),
                     "--features", str(cohort / "features.csv"), "--predictions", str(d / "predictions.csv"),
                     "--out-dir", str(out)]) == 0
    assert (out / "figure7_cam.png").is_file() and (out / "figure7_cam.pdf").is_file()
    cases = pd.read_csv(out / "figure7_cases.csv")
    assert list(cases.role) == ["infected", "normal"] and list(cases.y_true) == [1, 0]


def test_header_shape_matches_loaded_volume_for_any_orientation(tmp_path):
    from covidmtl.deep.data import volume_shape_zyx

    a = np.zeros((5, 7, 9), np.int16)  # file axes (k, j, i)
    image = sitk.GetImageFromArray(a)
    image.SetDirection((0, 0, 1, -1, 0, 0, 0, 1, 0))  # index axes point along S, R, P
    path = tmp_path / "oblique.nii.gz"
    sitk.WriteImage(image, str(path))
    loaded = VolumeLoader(clip_hu=None)(path)
    assert volume_shape_zyx(path) == loaded.shape


class _ToyTaskModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, image):
        return {"ct": self.linear(image)}


class _SumCrossEntropy(torch.nn.Module):
    def forward(self, logits, targets):
        loss = torch.nn.functional.cross_entropy(logits["ct"], targets["ct"])
        return loss, {"ct": loss}


class _ToyDataset(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(8, 4, generator=g) * 100.0  # large inputs: large gradients
        self.y = torch.arange(8) % 2

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i):
        return {"inputs": {"image": self.x[i]}, "targets": {"ct": self.y[i]}, "subject_id": f"T{i}"}


@pytest.mark.parametrize("clip", [None, 1e-3])
def test_gradient_clipping_bounds_each_update(clip):
    from covidmtl.deep.train import FitSettings, Trainer

    torch.manual_seed(0)
    model = _ToyTaskModel()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    settings = FitSettings(epochs=1, batch_size=8, lr_max=1.0, lr_min=1.0, momentum=0.0, nesterov=False,
                           weight_decay=0.0, grad_clip_norm=clip, progress=False, device="cpu")
    Trainer(model, _SumCrossEntropy(), settings, {"ct": 2}).train_epoch(_ToyDataset(), 0)
    step = torch.linalg.vector_norm(torch.cat([p.detach().flatten() for p in model.parameters()]) - before)
    # one SGD step with lr 1 moves the weights by exactly the (clipped) gradient norm
    if clip is None:
        assert step > 1.0
    else:
        assert step == pytest.approx(clip, rel=1e-3)
