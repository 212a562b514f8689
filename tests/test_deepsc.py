"""DeepSC-COVID: subnets, cross-stitch, evidence masks, surface metrics, patches, losses,
staged training with resume, bad inputs, findings and report (tiny toy cohort)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from covidmtl.classical.metrics import read_predictions
from covidmtl.deepsc.config import DeepSCConfig, knob_table
from covidmtl.deepsc.data import (classification_input, equidistant_slices, extract_patches, patch_starts,
                                  prepare_subjects, stitch_patches)
from covidmtl.deepsc.experiment import main as train_main
from covidmtl.deepsc.losses import DeepSCLoss, evidence_on_patch, roi_grid
from covidmtl.deepsc.metrics import (classification_metrics, normalised_surface_dice, rms_surface_distance,
                                     segmentation_metrics)
from covidmtl.deepsc.networks import (ClassificationSubnet, CrossStitch, DeepSC, Inception3D, LesionSubnet,
                                      PlainBlock, ResNet50Classifier, UNet3DSegmenter, normalise_evidence)
from covidmtl.deepsc.toydata import write_toy_cohort
from covidmtl.deepsc.variants import VARIANTS, build_model, get_variant, phases
from covidmtl.errors import PipelineInputError

torch.set_num_threads(1)  # tiny convolutions: one thread is fastest, and the test machine is shared

TINY = {"width_multiplier": 0.125, "segmentation": {"patch_size": [8, 16, 16], "train_patches_per_subject": 1},
        "classification": {"n_slices": 8, "slice_size": [16, 16]},
        "preprocess": {"crop_to_lung": True, "cache_in_memory": True},
        "train": {"pretrain_seg_epochs": 1, "pretrain_cls_epochs": 1, "finetune_epochs": 1, "batch_size": 2,
                  "progress": False}}


def tiny_cfg(**override) -> DeepSCConfig:
    data = json.loads(json.dumps(TINY))
    for k, v in override.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    return DeepSCConfig.from_dict(data)


def train_args(cohort: Path, variant: str, out: Path, params: dict | None = None, *extra: str) -> list[str]:
    return ["--variant", variant, "--manifest", str(cohort / "manifest.csv"), "--split", str(cohort / "split.csv"),
            "--lungseg-dir", str(cohort / "lungseg"), "--params", json.dumps(params or TINY), "--out-dir", str(out),
            "--threads", "1", *extra]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return write_toy_cohort(tmp_path_factory.mktemp("deepsc_cohort"), n_train=2, n_test=1)


@pytest.fixture(scope="module")
def runs(cohort, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("deepsc_runs")
    dirs = {}
    for variant in ("deepsc", "seg_only", "cls_only"):
        dirs[variant] = out / variant
        assert train_main(train_args(cohort, variant, dirs[variant])) == 0
    return dirs


# ------------------------------------------------------------------ config


def test_config_defaults_validation_and_knobs():
    cfg = DeepSCConfig()
    assert cfg.preprocess.hu_window == (-1400.0, 200.0)
    assert cfg.segmentation.patch_size == (24, 256, 256)
    assert cfg.classification.n_slices == 48
    assert cfg.model.cls_channels == (64, 128, 256)
    assert (cfg.train.pretrain_lr, cfg.train.finetune_lr) == (1e-3, 1e-4)
    with pytest.raises(ValueError, match="unknown"):
        DeepSCConfig.from_dict({"segmentation": {"patch": [8, 8, 8]}})
    with pytest.raises(ValueError, match="multiple of 8"):
        DeepSCConfig.from_dict({"segmentation": {"patch_size": [8, 20, 16]}})
    names = {row["name"] for row in knob_table()}
    assert {"deepsc.loss.lambda_ta", "deepsc.classification.n_slices", "deepsc.findings.peripheral_fraction"} <= names
    assert all(row["description"] for row in knob_table())


# ------------------------------------------------------------------ networks


def test_shapes_through_every_subnet():
    x = torch.rand(2, 1, 8, 16, 16)
    assert Inception3D(1, 8, 4)(x).shape == (2, 8, 8, 16, 16)
    assert PlainBlock(1, 8, 4)(x).shape == (2, 8, 8, 16, 16)
    f = torch.rand(2, 8, 8, 16, 16)
    out, inter = LesionSubnet(8, (4, 8, 8, 16), 4)(f)
    assert out.shape == (2, 1, 8, 16, 16)
    assert [tuple(s.shape[2:]) for s in inter] == [(1, 2, 2), (2, 4, 4), (4, 8, 8), (8, 16, 16)]
    logits, maps = ClassificationSubnet(8, (8, 16, 32), 4)(f)
    assert logits.shape == (2, 3)
    assert [tuple(m.shape[1:]) for m in maps] == [(8, 4, 8, 8), (16, 2, 4, 4), (32, 1, 2, 2)]
    cfg = tiny_cfg()
    model = DeepSC(cfg)
    out = model(seg_image=x, cls_image=torch.rand(2, 1, 8, 16, 16), mode="joint")
    assert out["seg_logits"].shape == (2, 1, 8, 16, 16) and out["cls_logits"].shape == (2, 3)
    assert DeepSC(cfg, ("seg",))(seg_image=x, mode="seg").keys() == {"seg_logits", "seg_intermediate"}
    assert DeepSC(cfg, ("cls",))(cls_image=x, mode="cls").keys() == {"cls_logits", "cls_features"}
    assert ResNet50Classifier(cfg)(cls_image=x)["cls_logits"].shape == (2, 3)
    assert UNet3DSegmenter(cfg)(seg_image=x)["seg_logits"].shape == (2, 1, 8, 16, 16)


def test_cross_stitch_identity_leaves_features_unchanged():
    unit = CrossStitch(6, 6)
    unit.set_alpha(torch.eye(2))
    f_seg, f_cls = torch.rand(2, 6, 3, 4, 5), torch.rand(2, 6, 3, 4, 5)
    assert torch.equal(unit.mix_for_seg(f_seg, f_cls), f_seg)
    assert torch.equal(unit.mix_for_cls(f_seg, f_cls), f_cls)
    # In the whole model: identity mixing makes the joint pass equal the single-task passes.
    model = DeepSC(tiny_cfg()).eval()
    model.cross_stitch.set_alpha(torch.eye(2))
    x_seg, x_cls = torch.rand(1, 1, 8, 16, 16), torch.rand(1, 1, 8, 16, 16)
    with torch.no_grad():
        joint = model(seg_image=x_seg, cls_image=x_cls, mode="joint")
        alone = model(seg_image=x_seg, cls_image=x_cls, mode="seg") | model(cls_image=x_cls, mode="cls")
    assert torch.equal(joint["seg_logits"], alone["seg_logits"])
    assert torch.equal(joint["cls_logits"], alone["cls_logits"])
    # Without the unit (ablation) the matrix is the fixed identity, not a parameter.
    ablated = build_model(get_variant("no_cross_stitch"), tiny_cfg())
    assert torch.equal(ablated.cross_stitch.alpha, torch.eye(2))
    assert "cross_stitch.alpha" not in dict(ablated.named_parameters())


def test_evidence_masks_equal_hand_computation():
    torch.manual_seed(0)
    net = ClassificationSubnet(2, (2, 3, 4), 1)
    with torch.no_grad():
        net.fc.weight.copy_(torch.arange(27, dtype=torch.float32).reshape(3, 9) / 10 - 1)
    maps = [torch.rand(2, c, 2, 2, 2) for c in (2, 3, 4)]
    classes = torch.tensor([1, 2])
    got = net.evidence_masks(maps, classes)
    w = net.fc.weight.detach()
    offsets = [0, 2, 5]
    for layer, (fmap, off) in enumerate(zip(maps, offsets)):
        for b, c in enumerate(classes.tolist()):
            hand = torch.zeros(2, 2, 2)
            for k in range(fmap.shape[1]):
                hand += w[c, off + k] * fmap[b, k]
            assert torch.allclose(got[layer][b, 0], hand, atol=1e-6)
    v = torch.tensor([[[[[-1.0, 2.0], [4.0, 0.0]]]]])
    assert torch.allclose(normalise_evidence(v), torch.tensor([[[[[0.0, 0.5], [1.0, 0.0]]]]]))


# ------------------------------------------------------------------ preprocessing, patches, task-aware alignment


@pytest.mark.parametrize("shape", [(13, 37, 50), (16, 32, 32), (5, 10, 12)])
def test_patch_stitching_reproduces_the_volume(shape):
    volume = np.random.default_rng(1).random(shape).astype(np.float32)
    patches, starts = extract_patches(volume, (8, 16, 16))
    assert patches.shape[1:] == (8, 16, 16)
    assert len(starts) == len(patch_starts(shape, (8, 16, 16))) == len(patches)
    assert np.array_equal(stitch_patches(patches, starts, shape), volume)


def test_equidistant_slices_and_classification_input():
    assert equidistant_slices(10, 5).tolist() == [1, 3, 5, 7, 9]
    assert equidistant_slices(4, 8).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]  # fewer slices than N: repeated
    image = np.random.default_rng(0).random((30, 40, 50)).astype(np.float32)
    x = classification_input(image, 8, (16, 20))
    assert x.shape == (8, 16, 20) and x.dtype == np.float32


def test_task_aware_sampling_is_aligned_with_the_volume():
    evidence = torch.rand(1, 1, 4, 6, 8)
    whole = torch.tensor([[-1.0, 1.0, -1.0, 1.0, -1.0, 1.0]])
    assert torch.allclose(evidence_on_patch(evidence, whole, (4, 6, 8)), normalise_evidence(evidence), atol=1e-5)
    # The first half along z of a 4-deep map: its first two slices.
    half = torch.tensor([[-1.0, 0.0, -1.0, 1.0, -1.0, 1.0]])
    assert torch.allclose(evidence_on_patch(evidence, half, (2, 6, 8)), normalise_evidence(evidence)[:, :, :2],
                          atol=1e-5)
    assert roi_grid(half, (2, 3, 4)).shape == (1, 2, 3, 4, 3)


def test_segmentation_loss_skips_samples_without_mask():
    cfg = tiny_cfg()
    loss = DeepSCLoss(cfg)
    torch.manual_seed(0)
    logits, target = torch.randn(2, 1, 4, 4, 4), (torch.rand(2, 1, 4, 4, 4) > 0.7).float()
    both = loss.segmentation(logits, target, torch.tensor([True, False]))
    first = loss.segmentation(logits[:1], target[:1], torch.tensor([True]))
    assert torch.allclose(both, first)


# ------------------------------------------------------------------ metrics


def _sphere(shape, spacing, radius_mm):
    grids = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum(g ** 2 for g in grids) <= radius_mm ** 2


def test_surface_metrics_on_concentric_spheres():
    spacing, shape = (1.0, 0.5, 0.5), (26, 48, 48)
    inner, outer = _sphere(shape, spacing, 5.0), _sphere(shape, spacing, 8.0)
    assert rms_surface_distance(inner, outer, spacing) == pytest.approx(3.0, abs=0.5)
    assert normalised_surface_dice(inner, outer, spacing, 1.5) < 0.05
    assert normalised_surface_dice(inner, outer, spacing, 4.5) > 0.99
    m = segmentation_metrics(inner, outer, spacing, 1.0)
    assert m["dsc"] == pytest.approx(2 * 5 ** 3 / (5 ** 3 + 8 ** 3), abs=0.03)
    assert m["sensitivity"] == pytest.approx(5 ** 3 / 8 ** 3, abs=0.03) and m["specificity"] == 1.0
    same = segmentation_metrics(outer, outer, spacing, 1.0)
    assert (same["dsc"], same["nsd"], same["rms_ssd_mm"]) == (1.0, 1.0, 0.0)
    empty = np.zeros(shape, bool)
    assert segmentation_metrics(empty, empty, spacing, 1.0)["dsc"] == 1.0
    assert np.isnan(segmentation_metrics(empty, outer, spacing, 1.0)["rms_ssd_mm"])


def test_classification_metrics_macro_sensitivity_specificity():
    y = np.array([0, 0, 1, 1, 2, 2])
    prob = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.8 + 0.2 / 3
    m = classification_metrics(y, prob)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["sensitivity"] == pytest.approx(np.mean([0.5, 1.0, 0.5]))
    assert m["specificity"] == pytest.approx(np.mean([3 / 4, 3 / 4, 1.0]))


# ------------------------------------------------------------------ variants


def test_variants_and_stages():
    cfg = tiny_cfg()
    assert [p.name for p in phases(get_variant("deepsc"), cfg)] == ["pretrain_seg", "pretrain_cls", "finetune"]
    assert [p.mode for p in phases(get_variant("seg_only"), cfg)] == ["seg", "seg"]
    assert [p.name for p in phases(get_variant("deepsc"), cfg, frozenset({"seg", "cls"}))] == ["finetune"]
    assert [p.name for p in phases(get_variant("pretrain"), cfg)] == ["pretrain_seg", "pretrain_cls"]
    assert {f"lambda_ta_{x}" for x in (0, 1, 10, 100)} <= set(VARIANTS)
    for name in VARIANTS:
        build_model(get_variant(name), cfg)


# ------------------------------------------------------------------ training end to end


@pytest.mark.parametrize("loss, skipped", [
    ({}, {"lambda_ta_10", "multi_scale_ta"}),  # the defaults: lambda_ta 10, multi-scale
    ({"lambda_ta": 1.0, "task_aware_scales": "single"}, {"lambda_ta_1", "single_scale_ta"}),
    ({"lambda_ta": 5.0}, {"multi_scale_ta"}),  # no lambda_ta variant equals 5
    ({"lambda_ta": 0.0}, {"lambda_ta_0", "multi_scale_ta"}),
])
def test_variants_equal_to_the_full_model_follow_the_loss_config(loss, skipped):
    from covidmtl.deepsc.variants import same_as_full_model

    assert set(same_as_full_model({"loss": loss})) == skipped
    assert set(same_as_full_model(DeepSCConfig.from_dict({"loss": loss}))) == skipped


def test_table3_full_model_stands_in_for_the_variant_it_equals():
    from covidmtl.deepsc.report import table3_rows

    single = {"deepsc": {"metrics": {"lambda_ta": 1.0, "task_aware_scales": "single"}},
              "multi_scale_ta": {"metrics": {}}}
    assert [v for v, _ in table3_rows(single)] == ["lambda_ta_0", "deepsc", "multi_scale_ta"]
    multi = {"deepsc": {"metrics": {"lambda_ta": 10.0, "task_aware_scales": "multi"}}}
    assert [v for v, _ in table3_rows(multi)] == ["lambda_ta_0", "single_scale_ta", "deepsc"]


# ------------------------------------------------------------------ training loop and inference


class _Recorder(torch.nn.Module):
    """Segments with a per-sample function and records the batch shapes it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, seg_image=None, cls_image=None, mode="seg"):
        self.shapes.append(tuple(seg_image.shape))
        return {"seg_logits": seg_image * 4 - 2}


def test_inference_pads_the_last_patch_batch_to_one_shape():
    from covidmtl.deepsc.data import Case
    from covidmtl.deepsc.inference import predict_case

    image = np.random.default_rng(0).random((13, 20, 20)).astype(np.float32)  # 2 x 2 x 2 = 8 patches
    case = Case("s", 0, image, None, np.ones(image.shape, np.uint8), (1.0, 1.0, 1.0), image.shape,
                tuple(slice(0, n) for n in image.shape))
    model = _Recorder()
    pred = predict_case(model, case, mode="seg", tasks=("seg",), patch_size=(8, 16, 16), batch_size=3,
                        device=torch.device("cpu"))
    assert model.shapes == [(3, 1, 8, 16, 16)] * 3  # 8 patches: 3 + 3 + 2 and one zero patch
    expected = 1 / (1 + np.exp(-(image * 4 - 2)))
    np.testing.assert_allclose(pred.lesion_prob, expected, rtol=1e-5, atol=1e-6)


def test_amp_settings_fall_back_to_float16_without_bfloat16(monkeypatch):
    from covidmtl.deepsc.train import amp_settings

    cfg = tiny_cfg()
    assert amp_settings(cfg, torch.device("cpu")) == (False, torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp_settings(cfg, torch.device("cuda")) == (True, torch.float16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_settings(cfg, torch.device("cuda")) == (True, torch.bfloat16)


class _LossOf(torch.nn.Module):
    """Stand-in loss: mean squared logit, made non-finite for the listed batches."""

    def __init__(self, bad_batches: set[int], value: float = float("inf")) -> None:
        super().__init__()
        self.bad, self.value, self.calls = bad_batches, value, 0

    def forward(self, out, targets, mode, model):
        total = out["seg_logits"].float().pow(2).mean()
        if self.calls in self.bad:
            total = total * self.value
        self.calls += 1
        return total, {"seg": total.detach()}


def _stage_trainer(criterion, scaler: bool):
    from covidmtl.deepsc.train import StageTrainer, fit_settings
    from covidmtl.deepsc.variants import Phase

    cfg = tiny_cfg(train={"device": "cpu"})
    phase = Phase("pretrain_seg", "seg", 1, 1e-3, "seg")
    trainer = StageTrainer(UNet3DSegmenter(cfg), criterion, fit_settings(cfg, phase, 0), phase)
    if scaler:  # what float16 on CUDA sets up, on the CPU
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    return trainer


class _Patches(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"inputs": {"seg_image": torch.rand(1, 8, 16, 16)},
                "targets": {"lesion": torch.zeros(1, 8, 16, 16), "has_mask": torch.tensor(True),
                            "label": torch.tensor(0)},
                "subject_id": f"s{i}"}


def test_non_finite_loss_is_skipped_by_the_gradient_scaler_and_fatal_without_it():
    from covidmtl.deep.train import MAX_CONSECUTIVE_SKIPPED_STEPS

    # float32 / bfloat16 (no scaler): a non-finite loss stops the training at once
    with pytest.raises(FloatingPointError, match="training loss is inf"):
        _stage_trainer(_LossOf({1}), scaler=False).run_epoch(_Patches(), 0, 1)
    # float16 with a scaler: the step is skipped (weights unchanged, scale halved), training goes on
    trainer = _stage_trainer(_LossOf({0}), scaler=True)
    one_batch = torch.utils.data.Subset(_Patches(), [0, 1])
    before = [p.detach().clone() for p in trainer.model.parameters()]
    assert trainer.run_epoch(one_batch, 0, 1) == {}  # its only batch was skipped
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert trainer.scaler.get_scale() == 2.0 ** 7
    row = trainer.run_epoch(_Patches(), 1, 1)
    assert np.isfinite(row["train_loss_total"])
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    # ... but a loss that stays non-finite is divergence, with a clear error
    trainer = _stage_trainer(_LossOf(set(range(100)), float("nan")), scaler=True)
    data = torch.utils.data.ConcatDataset([_Patches()] * MAX_CONSECUTIVE_SKIPPED_STEPS)
    with pytest.raises(FloatingPointError, match="in a row.*bfloat16"):
        trainer.run_epoch(data, 0, 1)


@pytest.mark.slow
def test_outputs_have_the_shared_layout(runs, cohort):
    d = runs["deepsc"]
    for name in ("model.pt", "history.csv", "predictions.csv", "segmentation.csv", "metrics.json", "example.npz"):
        assert (d / name).is_file(), name
    pred = read_predictions([d / "predictions.csv"])
    assert list(pred.columns[:8]) == ["subject_id", "task", "model", "y_true", "y_pred", "prob_0", "prob_1", "prob_2"]
    assert set(pred["task"]) == {"diagnosis3"} and len(pred) == 3
    assert np.allclose(pred[["prob_0", "prob_1", "prob_2"]].sum(1), 1, atol=1e-5)
    seg = pd.read_csv(d / "segmentation.csv")
    assert len(seg) == 3 and seg["dsc"].between(0, 1).all()
    metrics = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
    assert [s["name"] for s in metrics["stages"]] == ["pretrain_seg", "pretrain_cls", "finetune"]
    assert metrics["inference_seconds_per_scan"] > 0
    history = pd.read_csv(d / "history.csv")
    assert history["stage"].tolist() == ["pretrain_seg", "pretrain_cls", "finetune"]
    assert history["train_loss_ta"].notna().iloc[-1] and "alpha_sc" in history
    with np.load(d / "example.npz") as z:
        assert {"ct_hu", "truth", "lesion_prob", "evidence_1", "evidence_3"} <= set(z.files)
    # A single-task run still writes every file (empty tables with their header).
    assert pd.read_csv(runs["seg_only"] / "predictions.csv").empty
    assert pd.read_csv(runs["cls_only"] / "segmentation.csv").empty


@pytest.mark.slow
def test_resume_gives_the_same_weights(cohort, tmp_path):
    params = json.loads(json.dumps(TINY))
    params["train"].update({"finetune_epochs": 2})
    straight = tmp_path / "straight"
    assert train_main(train_args(cohort, "deepsc", straight, params)) == 0
    resumed = tmp_path / "resumed"
    # Interrupted at a stage boundary (after epoch 1) and inside the fine-tuning stage (after epoch 3).
    assert train_main(train_args(cohort, "deepsc", resumed, params, "--stop-after-epoch", "1")) == 0
    assert not (resumed / "model.pt").exists() and (resumed / "checkpoint.pt").exists()
    assert train_main(train_args(cohort, "deepsc", resumed, params, "--stop-after-epoch", "3")) == 0
    assert train_main(train_args(cohort, "deepsc", resumed, params)) == 0
    a = torch.load(straight / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(resumed / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ha, hb = pd.read_csv(straight / "history.csv"), pd.read_csv(resumed / "history.csv")
    pd.testing.assert_frame_equal(ha.drop(columns="seconds"), hb.drop(columns="seconds"))


@pytest.mark.slow
def test_init_from_skips_pretraining(runs, cohort, tmp_path):
    out = tmp_path / "finetune_only"
    assert train_main(train_args(cohort, "lambda_ta_1", out, None, "--init-from", str(runs["seg_only"] / "model.pt"),
                                 str(runs["cls_only"] / "model.pt"))) == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert [s["name"] for s in metrics["stages"]] == ["finetune"] and metrics["lambda_ta"] == 1.0


def test_init_from_another_architecture_is_refused(tmp_path):
    from covidmtl.deepsc.experiment import MODEL_FORMAT, load_init

    cfg = tiny_cfg()
    other = build_model(get_variant("no_inception"), cfg)
    path = tmp_path / "model.pt"
    torch.save({"format": MODEL_FORMAT, "kind": "deepsc", "variant": "no_inception", "config": cfg.to_dict(),
                "state_dict": other.state_dict()}, path)
    with pytest.raises(PipelineInputError, match="only part of the seg/cls branch"):
        load_init([path], build_model(get_variant("deepsc"), cfg))
    same = build_model(get_variant("pretrain"), cfg)
    torch.save({"format": MODEL_FORMAT, "kind": "deepsc", "variant": "pretrain", "config": cfg.to_dict(),
                "state_dict": same.state_dict()}, path)
    target = build_model(get_variant("lambda_ta_100"), cfg)
    assert load_init([path], target) == {"seg", "cls"}
    assert torch.equal(target.state_dict()["classifier.fc.weight"], same.state_dict()["classifier.fc.weight"])


def test_no_cross_stitch_keeps_identity_mixing_when_initialised_from_pretrain(tmp_path):
    from covidmtl.deepsc.experiment import MODEL_FORMAT, load_init

    cfg = tiny_cfg()
    pretrained = build_model(get_variant("pretrain"), cfg)
    pretrained.cross_stitch.set_alpha([[0.8, 0.2], [0.3, 0.7]])  # as learned in a pre-training
    path = tmp_path / "model.pt"
    torch.save({"format": MODEL_FORMAT, "kind": "deepsc", "variant": "pretrain", "config": cfg.to_dict(),
                "state_dict": pretrained.state_dict()}, path)
    ablated = build_model(get_variant("no_cross_stitch"), cfg)
    assert load_init([path], ablated) == {"seg", "cls"}
    assert torch.equal(ablated.cross_stitch.alpha, torch.eye(2))
    assert torch.equal(ablated.state_dict()["classifier.fc.weight"], pretrained.state_dict()["classifier.fc.weight"])
    # the fixed matrix is no state: the ablation's own model.pt does not carry (or restore) it
    assert "cross_stitch.alpha" not in ablated.state_dict()
    ablated.eval()
    x_seg, x_cls = torch.rand(1, 1, 8, 16, 16), torch.rand(1, 1, 8, 16, 16)
    with torch.no_grad():
        joint = ablated(seg_image=x_seg, cls_image=x_cls, mode="joint")
        alone = ablated(seg_image=x_seg, mode="seg") | ablated(cls_image=x_cls, mode="cls")
    assert torch.equal(joint["seg_logits"], alone["seg_logits"])
    assert torch.equal(joint["cls_logits"], alone["cls_logits"])


# ------------------------------------------------------------------ bad inputs


@pytest.mark.slow
def test_subject_without_lesion_mask_is_trained_without_segmentation_loss(tmp_path, caplog):
    cohort = write_toy_cohort(tmp_path / "c", n_train=2, n_test=1, without_mask=("toy-001", "toy-009"))
    with caplog.at_level(logging.WARNING):
        assert train_main(train_args(cohort, "deepsc", tmp_path / "run")) == 0
    assert "segmentation loss is skipped" in caplog.text and "toy-001" in caplog.text
    seg = pd.read_csv(tmp_path / "run" / "segmentation.csv")
    assert "toy-009" not in set(seg["subject_id"]) and len(seg) == 2
    assert "toy-009" in set(pd.read_csv(tmp_path / "run" / "predictions.csv")["subject_id"])


@pytest.mark.slow
def test_volume_smaller_than_the_patch_is_padded(cohort, tmp_path, caplog):
    params = json.loads(json.dumps(TINY))
    params["segmentation"]["patch_size"] = [24, 48, 48]  # larger than the 20 x 36 x 44 toy volumes
    params["train"].update({"pretrain_cls_epochs": 0, "finetune_epochs": 0})
    with caplog.at_level(logging.WARNING):
        assert train_main(train_args(cohort, "seg_only", tmp_path / "run", params)) == 0
    assert "smaller than the patch" in caplog.text and "zero-padded" in caplog.text
    seg = pd.read_csv(tmp_path / "run" / "segmentation.csv")
    assert len(seg) == 3 and seg["specificity"].notna().all()


def test_class_without_test_subjects_fails_before_training(cohort, tmp_path):
    split = pd.read_csv(cohort / "split.csv")
    manifest = pd.read_csv(cohort / "manifest.csv")
    cap_test = set(manifest.loc[manifest["diagnosis3"] == "cap", "subject_id"]) & set(
        split.loc[split["split"] == "test", "subject_id"])
    split.loc[split["subject_id"].isin(cap_test), "split"] = "train"
    split.to_csv(tmp_path / "split.csv", index=False)
    args = train_args(cohort, "deepsc", tmp_path / "run")
    args[args.index("--split") + 1] = str(tmp_path / "split.csv")
    with pytest.raises(PipelineInputError, match=r"\['cap'\] have no test subjects") as err:
        train_main(args)
    assert "stratified" in str(err.value)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    # Segmentation-only variants do not need every class.
    assert prepare_subjects(cohort / "manifest.csv", tmp_path / "split.csv", cohort / "lungseg", ("seg",),
                            check_files=False).test


def test_missing_lung_mask_names_subject_and_file(cohort, tmp_path):
    with pytest.raises(PipelineInputError, match="lung mask file does not exist") as err:
        prepare_subjects(cohort / "manifest.csv", cohort / "split.csv", tmp_path / "nowhere", ("seg", "cls"))
    assert err.value.subject == "toy-001" and "lung_refined.nii.gz" in err.value.path


# ------------------------------------------------------------------ findings and report


def test_findings_recover_planted_lesions(cohort, tmp_path):
    from covidmtl.deepsc.findings import main as findings_main

    assert findings_main(["--manifest", str(cohort / "manifest.csv"), "--lungseg-dir", str(cohort / "lungseg"),
                          "--out-dir", str(tmp_path)]) == 0
    scans = pd.read_csv(tmp_path / "findings_subjects.csv")
    lesions = pd.read_csv(tmp_path / "findings_lesions.csv")
    by = scans.groupby("diagnosis3")["n_lesions"].mean()
    assert by["covid19"] > by["cap"] > by["normal"] == 0
    depth = lesions.groupby("diagnosis3")["relative_depth"].mean()
    assert depth["covid19"] < 1 / 3 < depth["cap"]
    hu = scans.groupby("diagnosis3")["mean_lesion_hu"].mean()
    assert hu["covid19"] < -400 < hu["cap"]
    for name in ("findings_table.csv", "findings_table.md", "findings_hu_histogram.csv", "figure1_findings.png",
                 "figure1_findings.pdf"):
        assert (tmp_path / name).is_file(), name


@pytest.mark.slow
def test_report_builds_tables_and_figures(runs, tmp_path):
    from covidmtl.deepsc.report import main as report_main

    out = tmp_path / "report"
    assert report_main(["--run-dirs", *[str(d) for d in runs.values()], str(tmp_path / "not_run"),
                        "--out-dir", str(out)]) == 0
    t2 = pd.read_csv(out / "table2_deepsc.csv")
    assert t2["Variant"].tolist() == ["deepsc", "seg_only", "cls_only"]
    assert t2.loc[0, "Inference (s/scan) (paper)"] == 2.2 and pd.isna(t2.loc[0, "Accuracy (paper)"])
    assert "nan" not in (out / "table2_deepsc.md").read_text(encoding="utf-8")
    assert pd.isna(t2.loc[1, "Accuracy"]) and pd.notna(t2.loc[1, "DSC"])
    t3 = pd.read_csv(out / "table3_deepsc.csv")
    assert t3["Variant"].tolist() == ["deepsc"]  # the full model stands for the multi-scale row
    for stem in ("figure7_roc", "figure8_segmentation", "figure9_lambda_ta", "figure10_evidence"):
        assert (out / f"{stem}.png").is_file() and (out / f"{stem}.pdf").is_file()
    # the workflow passes config/paper_values.csv: its DeepSC rows land in their cells
    paper = tmp_path / "paper_values.csv"
    paper.write_text("task,model,metric,value,source\n"
                     "ct,mtl_shift_features,auc,0.939,another paper\n"
                     "deepsc_table2,seg_only,dsc,0.77,Table II\n"
                     "deepsc_table3,multi_scale_ta,nsd,0.66,Table III\n", encoding="utf-8")
    out = tmp_path / "with_paper"
    assert report_main(["--run-dirs", *[str(d) for d in runs.values()], "--paper-values", str(paper),
                        "--out-dir", str(out)]) == 0
    t2 = pd.read_csv(out / "table2_deepsc.csv").set_index("Variant")
    assert t2.loc["seg_only", "DSC (paper)"] == 0.77 and pd.isna(t2.loc["deepsc", "DSC (paper)"])
    assert t2.loc["deepsc", "Inference (s/scan) (paper)"] == 2.2
    t3 = pd.read_csv(out / "table3_deepsc.csv")
    assert t3.loc[0, "NSD (paper)"] == 0.66  # the full model's row stands for the multi-scale one


def _summary(*variants: str) -> pd.DataFrame:
    return pd.DataFrame([{"variant": v, "accuracy": 0.5, "dsc": 0.6, "n_test": 3, "device": "cpu"} for v in variants])


def test_paper_values_fill_their_cells_and_missing_ones_stay_empty(tmp_path):
    from covidmtl.deepsc.report import build_table, read_paper_values, table3_rows
    from covidmtl.tables import write_table

    path = tmp_path / "paper_values.csv"
    path.write_text("task,model,metric,value,source\n"
                    "severity,mtl_shift_features,auc,0.8,COVID-MTL\n"
                    "deepsc_table2,no_inception,accuracy,0.912,Table II\n"
                    "deepsc_table2,deepsc,inference_seconds,2.5,Table II\n"
                    "deepsc_table2,deepsc,auc,,not printed\n"
                    "deepsc_table3,single_scale_ta,dsc,0.701,Table III\n", encoding="utf-8")
    paper = read_paper_values(path)
    assert set(paper["task"]) == {"deepsc_table2", "deepsc_table3"}
    t2 = build_table(_summary("deepsc", "no_inception"), [("deepsc", "DeepSC-COVID"), ("no_inception", "w/o")],
                     paper[paper["task"] == "deepsc_table2"]).set_index("Variant")
    assert t2.loc["no_inception", "Accuracy (paper)"] == 0.912
    assert t2.loc["deepsc", "Accuracy (paper)"] is None and t2.loc["deepsc", "AUC (paper)"] is None
    assert t2.loc["deepsc", "Inference (s/scan) (paper)"] == 2.5  # the file wins over the built-in 2.2
    # Table III numbers belong to Table III only, under the paper's row name
    assert t2.loc["no_inception", "DSC (paper)"] is None
    runs = {"deepsc": {"metrics": {"lambda_ta": 10.0, "task_aware_scales": "single"}}}
    rows = table3_rows(runs)
    t3 = build_table(_summary("deepsc"), rows, paper[paper["task"] == "deepsc_table3"],
                     paper_rows=["lambda_ta_0", "single_scale_ta", "multi_scale_ta"])
    assert t3["Variant"].tolist() == ["deepsc"] and t3.loc[0, "DSC (paper)"] == 0.701
    csv, md = write_table(t2.reset_index(), tmp_path / "t2")
    assert "nan" not in csv.read_text(encoding="utf-8") + md.read_text(encoding="utf-8")
    assert read_paper_values(None)["value"].tolist() == [2.2]


@pytest.mark.parametrize("row, message", [
    ("deepsc_table4,deepsc,accuracy,0.9,x", "task 'deepsc_table4'"),
    ("deepsc_table2,lambda_ta_0,accuracy,0.9,x", "has no row 'lambda_ta_0'"),
    ("deepsc_table2,deepsc,acc,0.9,x", "metric 'acc'"),
    ("deepsc_table2,deepsc,accuracy,90 %,x", "not a number"),
])
def test_bad_paper_values_are_named(tmp_path, row, message):
    from covidmtl.deepsc.report import read_paper_values

    path = tmp_path / "paper_values.csv"
    path.write_text(f"task,model,metric,value,source\n{row}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_paper_values(path)
    path.write_text(f"task,model,metric,value,source\n{row}\n{row}\n".replace("deepsc_table4", "deepsc_table2")
                    .replace("lambda_ta_0", "deepsc").replace(",acc,", ",accuracy,").replace("90 %", "0.9"),
                    encoding="utf-8")
    with pytest.raises(ValueError, match="given twice"):
        read_paper_values(path)


@pytest.mark.slow
def test_findings_recover_the_phantom_lesions(tmp_path):
    """On phantom scans (src/covidmtl/synthetic) the findings recover the planted effects:
    COVID-19 more lesions, peripheral; CAP fewer, central and denser (more consolidation).
    Not asserted: the bimodal CAP HU histogram, too weak on a few small phantoms."""
    import SimpleITK as sitk

    from covidmtl.deepsc.data import CLASSES, Subject
    from covidmtl.deepsc.findings import analyse, findings_table
    from covidmtl.synthetic.phantom import PhantomParams, generate_subject

    small = PhantomParams(size_scale=0.3, inplane_spacing_mm=(0.8, 1.0), slice_spacing_mm=(2.0, 3.0))
    plan = [("covid19", "mild"), ("covid19", "regular"), ("covid19", "severe"),
            ("cap", "regular"), ("cap", "regular"), ("cap", "regular")]
    subjects, planted = [], {}
    for seed, (diagnosis, morbidity) in enumerate(plan):
        s = generate_subject({"diagnosis3": diagnosis, "morbidity": morbidity, "age": 55, "sex": "M"}, small, seed)
        d = tmp_path / f"s{seed}"
        d.mkdir()
        for name, image in (("ct", s.ct), ("lung", s.lung_mask), ("lesion", s.lesion_mask)):
            sitk.WriteImage(image, str(d / f"{name}.nii.gz"))
        subjects.append(Subject(f"s{seed}", "synthetic", CLASSES.index(diagnosis), d / "ct.nii.gz",
                                d / "lung.nii.gz", d / "lesion.nii.gz"))
        planted[f"s{seed}"] = s.lesions
    params = DeepSCConfig().findings
    lesions, scans, hist = analyse(subjects, params)
    for _, scan in scans.iterrows():  # touching lesions merge, specks are dropped: never more
        assert 1 <= scan["n_lesions"] <= len(planted[scan["subject_id"]]), scan["subject_id"]
    count = scans.groupby("diagnosis3")["n_lesions"].mean()
    assert count["covid19"] > 2 * count["cap"], count
    depth = lesions.groupby("diagnosis3")["relative_depth"].mean()
    assert depth["cap"] > 1.5 * depth["covid19"] and depth["cap"] > params.peripheral_fraction, depth
    peripheral = lesions.groupby("diagnosis3")["peripheral"].mean()
    assert peripheral["covid19"] > peripheral["cap"], peripheral
    dense = hist[hist["hu_from"] >= -300].groupby("diagnosis3")["density"].sum()  # consolidation range
    assert dense["cap"] > dense["covid19"] + 0.15, dense
    hu = scans.groupby("diagnosis3")["mean_lesion_hu"].mean()
    assert hu["cap"] > hu["covid19"], hu
    table = findings_table(lesions, scans, params).set_index("Statistic")
    assert table.loc["Scans with a lesion mask", "non-pneumonia"] == "0"
