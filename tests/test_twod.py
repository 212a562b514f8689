"""2D models (Amyar et al., mask-guided attention): networks, losses, metrics, split and bad
inputs, on tiny tensors and images."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from covidmtl.errors import PipelineInputError
from covidmtl.twod.amyar import CNN8, AmyarNet
from covidmtl.twod.classifiers import ResNet2D
from covidmtl.twod.config import TwoDConfig, knob_table
from covidmtl.twod.data import (SliceDataset, SliceRecords, check_classes, check_images, ensure_split,
                                patient_split, read_slice_index)
from covidmtl.twod.losses import MaskedDiceLoss, MGALoss, UncertaintyWeighting, guide_at
from covidmtl.twod.metrics import (classification_summary, dice_score, iou_score, pixel_precision, pixel_recall,
                                   segmentation_summary, slice_scores, specificity)
from covidmtl.twod.segmenters import HMSASegmenter
from covidmtl.twod.variants import VARIANTS, build_criterion, build_model, get_variant

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is faster than several (and the test machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = {"width_multiplier": 1 / 16, "input_size": 32, "amyar": {"large_input_size": 32}}


def tiny_targets(b: int, size: int, n_classes: int = 2) -> dict[str, torch.Tensor]:
    image = torch.rand(b, 1, size, size)
    return {"label": torch.randint(0, n_classes, (b,)), "mask": (torch.rand(b, 1, size, size) > 0.8).float(),
            "has_mask": torch.tensor([1.0] * (b - 1) + [0.0]), "image": image,
            "guide": torch.rand(b, 1, size // 4, size // 4), "guide_valid": torch.ones(b)}


# --------------------------------------------------------------------------- networks


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_network_forward_and_backward(name):
    torch.manual_seed(0)
    cfg = TwoDConfig.from_dict(TINY)
    spec = get_variant(name)
    model, criterion = build_model(spec, cfg), build_criterion(spec, cfg)
    k = {"binary": 2, "3class": 3}.get(spec.resolved_task(cfg), 2)
    targets = tiny_targets(3, 32, k)
    out = model(image=targets["image"])
    if spec.classifies:
        assert out["label"].shape == (3, k)
    if spec.segments:
        assert out["seg"].shape == (3, 1, 32, 32)
    if "rec" in spec.tasks:
        assert out["recon"].shape == (3, 1, 32, 32) and 0 <= float(out["recon"].detach().min())
    if "mga" in spec.tasks:
        assert out["attention"].shape[:2] == (3, 1)
    total, parts = criterion(out, targets)
    assert torch.isfinite(total) and set(parts) <= {"cls", "seg", "rec", "mga"}
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_amyar_task_subsets_and_sizes():
    for tasks in (("cls",), ("seg", "rec"), ("cls", "seg", "rec")):
        net = AmyarNet(tasks, 3, width=1 / 16)
        out = net(torch.rand(2, 1, 48, 48))
        assert set(out) == {{"cls": "label", "seg": "seg", "rec": "recon"}[t] for t in tasks}
    with pytest.raises(ValueError):
        AmyarNet(("cls", "segmentation"))
    # the encoder has 64..1024 filters at width 1 (five levels, stride-2 convolutions)
    net = AmyarNet(("cls",), 2)
    assert [lvl[-1][-1][0].out_channels if i else lvl[-1][0].out_channels
            for i, lvl in enumerate(net.encoder.levels)] == [64, 128, 256, 512, 1024]
    assert CNN8(2, width=1 / 8)(torch.rand(2, 1, 32, 32))["label"].shape == (2, 2)


def test_multiscale_attention_combines_scales_as_equation_1():
    seg = HMSASegmenter(width=1 / 16)
    values = {16: (2.0, 0.25), 32: (-1.0, 0.9), 64: (4.0, 0.5)}  # input side -> (logit, attention)

    def fake_single_scale(x):
        logit, attn = values[x.shape[-1]]
        return torch.full_like(x, logit), torch.full_like(x, attn)

    seg.single_scale = fake_single_scale
    x = torch.rand(1, 1, 32, 32)
    seg.train()  # scales 0.5, 1.0: U(a_0.5 L_0.5) + (1 - U(a_0.5)) L_1.0
    assert torch.allclose(seg(image=x)["seg"], torch.tensor(0.25 * 2.0 + 0.75 * -1.0))
    seg.eval()  # 2.0, then 1.0, then 0.5, hierarchically
    p2 = 4.0
    p1 = 0.9 * -1.0 + 0.1 * p2
    expected = 0.25 * 2.0 + 0.75 * p1
    out = seg(image=x)["seg"]
    assert out.shape == (1, 1, 32, 32) and torch.allclose(out, torch.tensor(expected))


def test_cbam_spatial_map_is_what_the_mga_loss_sees():
    torch.manual_seed(0)
    model = ResNet2D("resnet18", 3, width=1 / 16, cbam_stages=(1, 2, 3), guided_stage=2)
    seen = {}
    model.layer2[-1].cbam.spatial.register_forward_hook(lambda m, i, o: seen.setdefault("map", o))
    targets = tiny_targets(2, 32, 3)
    out = model(image=targets["image"])
    assert out["attention"] is seen["map"]
    assert out["attention"].shape == (2, 1, 4, 4)  # stage 2 of a 32 x 32 input
    _, parts = MGALoss()(out, targets)
    expected = ((seen["map"] - guide_at(seen["map"], targets["guide"])) ** 2).mean()
    assert torch.allclose(parts["mga"], expected)
    parts["mga"].backward()
    assert model.layer2[-1].cbam.spatial.conv.weight.grad.abs().sum() > 0
    # later stages do not shape the supervised map
    assert model.layer3[-1].cbam.spatial.conv.weight.grad is None
    assert model.fc.weight.grad is None
    with pytest.raises(ValueError):
        ResNet2D("resnet18", 2, cbam_stages=(1, 2), guided_stage=3)


def test_kendall_weighting_prefers_the_less_noisy_task():
    torch.manual_seed(0)
    x = torch.randn(512, 4)
    signal = x @ torch.randn(4, 1)
    y = [signal + 0.1 * torch.randn_like(signal), signal + 1.0 * torch.randn_like(signal)]
    trunk, heads = torch.nn.Linear(4, 8), torch.nn.ModuleList([torch.nn.Linear(8, 1) for _ in y])
    weighting = UncertaintyWeighting(["regression", "regression"])
    opt = torch.optim.Adam([*trunk.parameters(), *heads.parameters(), *weighting.parameters()], lr=0.05)
    for _ in range(400):
        h = trunk(x)
        losses = [torch.nn.functional.mse_loss(head(h), t) for head, t in zip(heads, y)]
        opt.zero_grad()
        weighting(losses).backward()
        opt.step()
    w = weighting.weights()
    assert w[0] > 5 * w[1]
    # classification terms are weighted exp(-s), regression terms 0.5 exp(-s) (eq. 6)
    assert torch.allclose(UncertaintyWeighting(["classification", "regression"]).weights(), torch.tensor([1.0, 0.5]))


def test_dice_loss_covers_only_slices_with_a_mask():
    loss = MaskedDiceLoss()
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, 0, 2:4, 2:4] = 1
    perfect = (mask * 40 - 20).requires_grad_()
    assert float(loss(perfect, mask, torch.ones(2)).detach()) < 1e-3
    garbage = perfect.detach().clone()
    garbage[1] = 20.0  # predicts lesion everywhere on the slice without a mask
    assert float(loss(garbage, mask, torch.tensor([1.0, 0.0]))) < 1e-3
    assert float(loss(garbage, mask, torch.ones(2))) > 0.5
    none = loss(perfect, mask, torch.zeros(2))
    assert float(none.detach()) == 0.0 and none.requires_grad


def test_captum_attributions_run_on_a_tiny_model():
    from covidmtl.twod.attribution import attribute, share_in_mask

    torch.manual_seed(0)
    model = ResNet2D("resnet18", 3, width=1 / 16, cbam_stages=(1, 2, 3), guided_stage=1).eval()
    images = torch.rand(2, 1, 32, 32)
    for method in ("integrated_gradients", "deeplift"):
        a = attribute(model, images, method, target=1, ig_steps=4)
        assert a.shape == (2, 32, 32) and np.isfinite(a).all() and np.abs(a).sum() > 0
    mask = np.zeros((32, 32), bool)
    mask[:16] = True
    assert 0 <= share_in_mask(a[0], mask) <= 1
    assert share_in_mask(np.ones((32, 32)), mask) == pytest.approx(0.5)


# --------------------------------------------------------------------------- metrics


def test_dice_iou_precision_recall_hand_computed():
    true = np.zeros((4, 4), bool)
    true[0, :] = True            # 4 pixels
    pred = np.zeros((4, 4), bool)
    pred[0, :2] = True           # 2 of them
    pred[3, 3] = True            # + 1 false positive
    # TP 2, FP 1, FN 2: Dice 4/7, IoU 2/5, precision 2/3, recall 1/2
    assert dice_score(pred, true) == pytest.approx(4 / 7)
    assert iou_score(pred, true) == pytest.approx(2 / 5)
    assert pixel_precision(pred, true) == pytest.approx(2 / 3)
    assert pixel_recall(pred, true) == pytest.approx(1 / 2)
    empty = np.zeros((4, 4), bool)
    assert dice_score(empty, empty) == 1.0 and iou_score(empty, empty) == 1.0
    assert dice_score(empty, true) == 0.0 and pixel_precision(empty, true) == 0.0
    assert dice_score(pred, pred) == 1.0
    s = slice_scores([2, 0, 0], [1, 0, 3], [2, 0, 0])
    assert s["dice"].tolist() == pytest.approx([4 / 7, 1.0, 0.0])
    summary = segmentation_summary([2, 0, 0], [1, 0, 3], [2, 4, 0])
    # lesion slices: 1 and 2 -> Dice 4/7 and 0; pooled TP 2, FP 1, FN 6
    assert summary["dice"] == pytest.approx((4 / 7) / 2)
    assert summary["dice_pooled"] == pytest.approx(4 / 11)
    assert summary["n_lesion_slices"] == 2 and summary["empty_slices_with_prediction"] == 1.0


def test_classification_summary_sensitivity_specificity():
    y = np.array([1, 1, 1, 0, 0])
    prob1 = np.array([0.9, 0.8, 0.3, 0.6, 0.1])
    m = classification_summary(y, np.c_[1 - prob1, prob1])
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(1 / 2)
    assert m["accuracy"] == pytest.approx(3 / 5) and m["auc"] == pytest.approx(5 / 6)
    # 3 classes: macro one-vs-rest specificity
    assert specificity(np.array([0, 1, 2]), np.array([0, 1, 1]), 3) == pytest.approx((1 + 0.5 + 1) / 3)


# --------------------------------------------------------------------------- split and inputs


def cohort_index(n_patients=30, slices=4, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = int(rng.integers(0, 3))
        for s in range(int(rng.integers(1, slices + 1))):
            rows.append({"slice_id": f"P{p}_{s}", "patient_id": f"P{p}", "label_3class": label,
                         "label_binary": int(label == 1), "has_mask": False, "split": ""})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_patient_split_is_patient_disjoint_and_stratified(seed):
    df = cohort_index(seed=seed)
    df["split"] = patient_split(df, (0.6, 0.2, 0.2), seed=seed)
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()
    for split in ("train", "val", "test"):
        assert set(df.loc[df["split"] == split, "label_3class"]) == {0, 1, 2}
    share = df.groupby("split")["patient_id"].nunique() / df["patient_id"].nunique()
    assert share["train"] > share["val"] and share["train"] > share["test"]
    # deterministic
    assert patient_split(df, (0.6, 0.2, 0.2), seed=seed).equals(df["split"])


def test_given_split_sharing_a_patient_is_an_error():
    df = cohort_index()
    df["split"] = patient_split(df, (0.6, 0.2, 0.2), seed=0)
    p = df["patient_id"].iloc[0]
    rows = df.index[df["patient_id"] == p]
    if len(rows) == 1:
        df = pd.concat([df, df.loc[rows]], ignore_index=True)
        df.loc[len(df) - 1, "slice_id"] = "extra"
        rows = df.index[df["patient_id"] == p]
    df.loc[rows[0], "split"] = "test" if df.loc[rows[1], "split"] != "test" else "train"
    with pytest.raises(PipelineInputError, match="more than one split"):
        ensure_split(df, (0.6, 0.2, 0.2), 0)


def test_class_missing_from_a_split_is_a_clear_error():
    df = cohort_index()
    df["split"] = patient_split(df, (0.6, 0.2, 0.2), seed=0)
    df.loc[(df["split"] == "val") & (df["label_3class"] == 2), "split"] = "train"
    with pytest.raises(PipelineInputError, match=r"CAP/other.*validation|val split"):
        check_classes(df, "3class")
    check_classes(df, "3class", splits=("train", "test"))


def write_image(path, array, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).convert(mode).save(path)
    return path.name


def test_mixed_sizes_and_channels_are_converted_and_logged(tmp_path, caplog):
    rng = np.random.default_rng(0)
    specs = [("a.png", (40, 30), "RGB"), ("b.png", (64, 64), "L"), ("c.jpg", (50, 50), "RGB"),
             ("d.png", (20, 20), "RGBA")]
    rows = []
    for i, (name, (h, w), mode) in enumerate(specs):
        write_image(tmp_path / "img" / name, (rng.random((h, w)) * 255).astype(np.uint8), mode)
        mask = ""
        if i == 0:
            m = np.zeros((h, w), np.uint8)
            m[10:20, 5:15] = 255
            write_image(tmp_path / "mask" / name, m)
            mask = f"mask/{name}"
        rows.append({"path": f"img/{name}", "mask_path": mask, "label": ["covid19", "normal", "cap", "non-covid"][i],
                     "patient_id": f"P{i}"})
    pd.DataFrame(rows).to_csv(tmp_path / "index.csv", index=False)
    index = read_slice_index(tmp_path / "index.csv")
    assert index["label_binary"].tolist() == [1, 0, 0, 0]
    assert index["label_3class"].isna().tolist() == [False, False, False, True]
    with caplog.at_level(logging.WARNING):
        check_images(index)
    assert "converted" in caplog.text and "RGB" in caplog.text and "sizes" in caplog.text
    ds = SliceDataset(SliceRecords.from_frame(index, "binary"), 32)
    items = [ds[i] for i in range(len(ds))]
    assert all(it["inputs"]["image"].shape == (1, 32, 32) for it in items)
    assert all(0 <= float(it["inputs"]["image"].min()) and float(it["inputs"]["image"].max()) <= 1 for it in items)
    assert items[0]["targets"]["mask"].sum() > 0 and items[0]["targets"]["has_mask"] == 1
    assert items[1]["targets"]["mask"].sum() == 0 and items[1]["targets"]["has_mask"] == 0
    with pytest.raises(PipelineInputError, match="3-class"):
        check_classes(index.assign(split="train"), "3class", splits=("train",))


def test_mask_of_another_size_names_both_files(tmp_path):
    write_image(tmp_path / "img.png", np.zeros((40, 40), np.uint8))
    write_image(tmp_path / "mask.png", np.zeros((30, 30), np.uint8))
    pd.DataFrame([{"path": "img.png", "mask_path": "mask.png", "label": "covid19", "patient_id": "P1"}]).to_csv(
        tmp_path / "index.csv", index=False)
    with pytest.raises(PipelineInputError) as err:
        check_images(read_slice_index(tmp_path / "index.csv"))
    message = str(err.value)
    assert "mask.png" in message and "img.png" in message and "30x30" in message and "40x40" in message


def test_unknown_label_and_missing_file_are_clear_errors(tmp_path):
    pd.DataFrame([{"path": "nope.png", "label": "flu", "patient_id": "P1"}]).to_csv(tmp_path / "i.csv", index=False)
    with pytest.raises(PipelineInputError, match="unknown label 'flu'"):
        read_slice_index(tmp_path / "i.csv")
    pd.DataFrame([{"path": "nope.png", "label": "normal", "patient_id": "P1"}]).to_csv(tmp_path / "j.csv", index=False)
    with pytest.raises(PipelineInputError, match="does not exist"):
        check_images(read_slice_index(tmp_path / "j.csv"))


# --------------------------------------------------------------------------- config


def test_config_defaults_are_the_papers_and_unknown_keys_fail():
    cfg = TwoDConfig()
    assert (cfg.amyar.lr, cfg.amyar.batch_size, cfg.amyar.patience, cfg.input_size) == (1e-4, 4, 10, 256)
    assert cfg.amyar.filters == (64, 128, 256, 512, 1024) and cfg.amyar.large_input_size == 512
    assert (cfg.mga.lr, cfg.mga.batch_size, cfg.mga.patience, cfg.mga.scheduler) == (1e-4, 32, 10, "cosine")
    assert cfg.segmenter.train_scales == (0.5, 1.0) and cfg.segmenter.infer_scales == (0.5, 1.0, 2.0)
    assert cfg.mga.cbam_stages == (1, 2, 3)
    with pytest.raises(ValueError, match="unknown"):
        TwoDConfig.from_dict({"amyar": {"learning_rate": 1}})
    with pytest.raises(ValueError, match="fractions"):
        TwoDConfig.from_dict({"split": {"fractions": [0.5, 0.5, 0.5]}})
    names = {row["name"] for row in knob_table()}
    assert {"twod.amyar.lr", "twod.mga.attention_stage", "twod.slices.image_size"} <= names
    assert all(row["description"] for row in knob_table())
