"""Shift3D, the multitask losses, the config and every 3D model at tiny sizes."""

from __future__ import annotations

import pytest
import torch

from covidmtl.deep.config import DeepConfig, knob_table
from covidmtl.deep.losses import MultiTaskLoss, dirichlet_weights
from covidmtl.deep.mtl import CovidMTL
from covidmtl.deep.shift3d import Shift3D, max_shifts
from covidmtl.deep.variants import VARIANTS, build_model, prepare_transfer

TINY = {"width_multiplier": 0.125, "input": {"crop_size": [16, 16, 16]}}


# ----------------------------------------------------------------------------- Shift3D


def test_shift3d_keeps_shape_and_rolls_each_map_as_planned():
    torch.manual_seed(0)
    layer = Shift3D(max_shift_fraction=0.4, probability=1.0).train()
    x = torch.randn(3, 4, 5, 6, 7)
    plan = layer.sample_plan(x.shape)
    out = layer.apply_plan(x, plan)
    assert out.shape == x.shape
    assert bool(plan.selected.all())
    for n in range(3):
        for c in range(4):
            expected = torch.roll(x[n, c], shifts=int(plan.shifts[n, c]), dims=int(plan.dims[n, c]))
            assert torch.equal(out[n, c], expected)
    assert (plan.shifts != 0).any()


def test_shift3d_forward_draws_from_torch_generator():
    layer = Shift3D(max_shift_fraction=0.3, probability=1.0).train()
    x = torch.randn(2, 3, 6, 6, 6)
    torch.manual_seed(5)
    out = layer(x)
    torch.manual_seed(5)
    assert torch.equal(out, layer.apply_plan(x, layer.sample_plan(x.shape)))
    torch.manual_seed(5)
    assert torch.equal(layer(x), out)


def test_shift3d_padding_overwrites_wrapped_elements():
    layer = Shift3D(max_shift_fraction=0.5, probability=1.0, pad=True, pad_value=-7.0).train()
    x = torch.arange(1 * 2 * 8 * 8 * 8, dtype=torch.float32).reshape(1, 2, 8, 8, 8)
    torch.manual_seed(1)
    plan = layer.sample_plan(x.shape)
    plan.dims[:] = torch.tensor([[0, 2]])
    plan.shifts[:] = torch.tensor([[3, -2]])
    out = layer.apply_plan(x, plan)
    # channel 0: rolled forward by 3 along D, the 3 wrapped slices padded
    assert torch.all(out[0, 0, :3] == -7.0)
    assert torch.equal(out[0, 0, 3:], x[0, 0, :5])
    # channel 1: rolled backward by 2 along W, the last 2 columns padded
    assert torch.all(out[0, 1, :, :, -2:] == -7.0)
    assert torch.equal(out[0, 1, :, :, :-2], x[0, 1, :, :, 2:])


def test_shift3d_is_identity_in_eval_and_at_zero_probability():
    x = torch.randn(2, 3, 4, 5, 6)
    assert Shift3D(probability=1.0).eval()(x) is x
    assert Shift3D(probability=0.0).train()(x) is x


def test_shift3d_respects_shift_bound_and_probability():
    torch.manual_seed(3)
    layer = Shift3D(max_shift_fraction=0.2, probability=0.25)
    shape = (400, 8, 10, 20, 30)
    plan = layer.sample_plan(shape)
    bounds = max_shifts(shape[2:], 0.2)  # floor(0.2 * size) = 2, 4, 6
    assert bounds.tolist() == [2, 4, 6]
    assert torch.all(plan.shifts.abs() <= bounds[plan.dims])
    for d in range(3):  # every amount up to the bound occurs, in both directions
        assert set(plan.shifts[plan.dims == d].tolist()) == set(range(-int(bounds[d]), int(bounds[d]) + 1))
    assert 0.15 < plan.selected.float().mean().item() < 0.35


def test_shift3d_passes_gradients():
    layer = Shift3D(probability=1.0, pad=True).train()
    x = torch.randn(2, 3, 5, 5, 5, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


# ----------------------------------------------------------------------------- losses


def test_dirichlet_weights_sum_to_one_and_concentrate_with_more_draws():
    torch.manual_seed(0)
    spreads = []
    for n in (1, 2, 8):
        w = torch.stack([dirichlet_weights(3, n_draws=n) for _ in range(2000)])
        assert torch.allclose(w.sum(dim=1), torch.ones(2000), atol=1e-6)
        assert torch.all(w >= 0)
        assert torch.allclose(w.mean(dim=0), torch.full((3,), 1 / 3), atol=0.03)
        spreads.append(w.std(dim=0).mean().item())
    assert spreads[0] > spreads[1] > spreads[2]
    assert torch.equal(dirichlet_weights(1), torch.ones(1))


def _logits_targets():
    torch.manual_seed(0)
    logits = {"ct": torch.randn(4, 2, requires_grad=True), "severity": torch.randn(4, 3, requires_grad=True)}
    targets = {"ct": torch.tensor([0, 1, 1, 0]), "severity": torch.tensor([0, 1, 2, 2])}
    return logits, targets


def test_multitask_loss_kinds():
    logits, targets = _logits_targets()
    mean = MultiTaskLoss(["ct", "severity"], "mean")
    total, per = mean(logits, targets)
    assert torch.isclose(total, (per["ct"] + per["severity"]) / 2)

    rw = MultiTaskLoss(["ct", "severity"], "random_weighted", n_draws=2).train()
    total, per = rw(logits, targets)
    w = rw.last_weights
    assert torch.isclose(w.sum(), torch.tensor(1.0)) and torch.isclose(total, w[0] * per["ct"] + w[1] * per["severity"])
    rw.eval()
    total, per = rw(logits, targets)  # evaluation: expected weights
    assert torch.isclose(total, (per["ct"] + per["severity"]) / 2)

    unc = MultiTaskLoss(["ct", "severity"], "uncertainty")
    assert [n for n, _ in unc.named_parameters()] == ["log_vars"]
    total, per = unc(logits, targets)
    assert torch.isclose(total, (per["ct"] + per["severity"]) / 2)  # log_vars start at 0
    total.backward()
    assert unc.log_vars.grad is not None


# ----------------------------------------------------------------------------- config


def test_config_defaults_are_paper_values_and_typos_fail():
    cfg = DeepConfig()
    assert cfg.train.epochs == 80 and cfg.train.batch_size == 10 and cfg.train.lr_max == 0.005
    assert cfg.train.lr_min == 5e-5 and cfg.train.momentum == 0.9 and cfg.train.nesterov
    assert cfg.train.weight_decay == 5e-5 and cfg.input.crop_size == (200, 250, 250)
    assert cfg.shift3d.max_shift_fraction == 0.2 and cfg.loss.n_draws == 2 and cfg.loss.dirichlet_alpha == 1.0
    assert cfg.mtl.fnn_hidden == (256, 128, 64, 32) and cfg.transfer.epochs == 50
    with pytest.raises(ValueError, match="unknown deep.train config keys"):
        DeepConfig.from_dict({"train": {"epoch": 3}})
    with pytest.raises(ValueError, match="crop_size"):
        DeepConfig.from_dict({"input": {"input_size": [8, 8, 8], "crop_size": [16, 16, 16]}})
    cfg = DeepConfig.from_dict(TINY)
    assert DeepConfig.from_dict(cfg.to_dict()) == cfg
    rows = knob_table()
    assert {r["name"] for r in rows} >= {"deep.train.epochs", "deep.shift3d.max_shift_fraction", "deep.loss.type"}
    assert all(r["description"] for r in rows)


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize("variant", ["resnet3d_ct", "squeezenet3d_severity", "shiftnet3d_nat", "mtl_noshift",
                                     "mtl_shift", "mtl_shift_features", "mtl2_shift", "transfer_severity_noshift"])
def test_forward_backward_every_model(variant):
    torch.manual_seed(0)
    cfg = DeepConfig.from_dict(TINY)
    spec = VARIANTS[variant]
    model = build_model(spec, cfg, n_features=7)
    if spec.is_transfer:
        prepare_transfer(model, spec, cfg)
    model.train()
    image, feats = torch.randn(2, 1, 16, 16, 16), torch.randn(2, 7)
    out = model(image, feats)
    assert set(out) == set(spec.tasks)
    for task, logits in out.items():
        assert logits.shape == (2, spec.task_classes[task])
    sum(v.sum() for v in out.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert hasattr(model, "cam_layer")


def test_mtl_feature_branch_and_transfer_freezing():
    torch.manual_seed(0)
    cfg = DeepConfig.from_dict(TINY)
    model = build_model(VARIANTS["mtl_shift_features"], cfg, n_features=5)
    assert isinstance(model, CovidMTL) and model.fnn is not None
    assert [m.out_features for m in model.fnn.net if isinstance(m, torch.nn.Linear)] == [256, 128, 64, 32]
    with pytest.raises(ValueError, match="radiomics features"):
        model(torch.randn(2, 1, 16, 16, 16))

    spec = VARIANTS["transfer_severity_shift"]
    source = build_model(spec, cfg)
    assert set(source.tasks) == {"ct", "nat"}
    prepare_transfer(source, spec, cfg)
    assert set(source.tasks) == {"severity"}
    assert not any(p.requires_grad for p in source.trunk.parameters())
    assert all(p.requires_grad for p in source.heads.parameters())
    source.train()
    bns = [m for m in source.trunk.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert bns and not any(m.training for m in bns)
    assert source.trunk.shift3d.training  # Shift3D keeps working on the frozen trunk
