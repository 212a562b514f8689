"""Segmentation metrics of COVID-MTL section 4.1 against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from covidmtl.lungseg.metrics import confusion_counts, metrics_from_counts, segmentation_metrics


def test_hand_computed_case():
    # 10 voxels; prediction 4 voxels, ground truth 5 voxels, 3 shared.
    pred = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    gt = np.array([0, 1, 1, 1, 1, 1, 0, 0, 0, 0], bool)
    m = segmentation_metrics(pred, gt)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 1, 2, 4)
    assert m["dice"] == pytest.approx(6 / 9)  # 2TP / (2TP + FP + FN)
    assert m["jaccard"] == pytest.approx(3 / 6)  # TP / (TP + FP + FN)
    assert m["precision"] == pytest.approx(3 / 4)  # TP / (TP + FP)
    assert m["mcc"] == pytest.approx((3 * 4 - 1 * 2) / math.sqrt(4 * 5 * 5 * 6))


def test_perfect_and_disjoint():
    a = np.zeros((4, 4, 4), bool)
    a[1:3, 1:3, 1:3] = True
    perfect = segmentation_metrics(a, a)
    assert perfect["dice"] == perfect["jaccard"] == perfect["precision"] == 1.0
    assert perfect["mcc"] == pytest.approx(1.0)
    disjoint = segmentation_metrics(a, ~a)
    assert disjoint["dice"] == disjoint["jaccard"] == disjoint["precision"] == 0.0
    assert disjoint["mcc"] == pytest.approx(-1.0)


def test_undefined_values():
    empty = np.zeros((3, 3), bool)
    both_empty = segmentation_metrics(empty, empty)
    assert both_empty["dice"] == 1.0 and both_empty["jaccard"] == 1.0
    assert math.isnan(both_empty["precision"]) and math.isnan(both_empty["mcc"])
    gt = empty.copy()
    gt[1, 1] = True
    missed = segmentation_metrics(empty, gt)
    assert missed["dice"] == 0.0 and math.isnan(missed["precision"])


def test_large_counts_do_not_overflow():
    # Counts of a 512^3 volume: the MCC product exceeds int64.
    m = metrics_from_counts(tp=40_000_000, fp=1_000_000, fn=2_000_000, tn=90_000_000)
    expected = (40e6 * 90e6 - 1e6 * 2e6) / math.sqrt(41e6 * 42e6 * 91e6 * 92e6)
    assert m["mcc"] == pytest.approx(expected)


def test_labels_count_as_foreground_and_images_must_share_the_grid():
    pred = sitk.Image(4, 4, 2, sitk.sitkUInt8)
    pred[1, 1, 0] = 2  # a lung label: foreground like 1
    gt = sitk.Image(4, 4, 2, sitk.sitkUInt8)
    gt[1, 1, 0] = 1
    assert confusion_counts(pred, gt) == {"tp": 1, "fp": 0, "fn": 0, "tn": 31}
    moved = sitk.Image(gt)
    moved.SetSpacing((1.0, 1.0, 2.0))
    with pytest.raises(ValueError, match="same grid"):
        segmentation_metrics(pred, moved)
    with pytest.raises(ValueError, match="shape"):
        segmentation_metrics(np.zeros((2, 2)), np.zeros((3, 3)))
