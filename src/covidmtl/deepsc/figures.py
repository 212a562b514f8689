"""Figures of DeepSC-COVID (matplotlib, Agg; PNG + PDF via :func:`covidmtl.deep.figures.save_figure`).

- Figure 7: one-vs-rest ROC curves per class (COVID-19, CAP, non-pneumonia) of every run
  that classifies.
- Figure 8: segmented lesions of the runs that segment, on the same test slice (the most
  infected test scan), beside the reference.
- Figure 9: test performance against the task-aware weight lambda_ta (0, 1, 10, 100).
- Figure 10: a segmented infected case with the lesion evidence masks V_1..V_3 (eq. 5).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.colors import ListedColormap

from covidmtl.deep.figures import _not_run, plt, save_figure
from covidmtl.deepsc.data import CLASS_LABELS, CLASSES

LUNG_WINDOW = (-1350.0, 150.0)  # display window for CT slices (HU)
RED = ListedColormap(["red"])


def _ct(ax, example: dict) -> None:
    ax.imshow(example["ct_hu"], cmap="gray", vmin=LUNG_WINDOW[0], vmax=LUNG_WINDOW[1], interpolation="nearest",
              aspect=float(example["spacing"][1] / example["spacing"][2]))
    ax.set_xticks([])
    ax.set_yticks([])


def _contour(ax, mask: np.ndarray, color: str, label: str | None = None) -> None:
    if mask is not None and np.asarray(mask).any():
        ax.contour(np.asarray(mask, float), levels=[0.5], colors=[color], linewidths=1.3)
        if label:
            ax.plot([], [], color=color, label=label)


def figure7_roc(curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], aucs: dict[str, dict[str, float]],
                labels: dict[str, str], stem: str | Path) -> list[Path]:
    """``curves[run][class] = (fpr, tpr)``; ``aucs[run][class]``; ``labels[run]`` legend text."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6))
    cmap = plt.get_cmap("tab10")
    for ax, cls in zip(axes, CLASSES):
        drawn = False
        for i, (run, per_class) in enumerate(curves.items()):
            if cls not in per_class:
                continue
            fpr, tpr = per_class[cls]
            auc = aucs.get(run, {}).get(cls, np.nan)
            ax.plot(fpr, tpr, color=cmap(i % 10), linewidth=2 if run == "deepsc" else 1.4,
                    label=f"{labels.get(run, run)} (AUC {auc:.3f})")
            drawn = True
        if not drawn:
            _not_run(ax, f"{CLASS_LABELS[cls]} ROC")
            continue
        ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1)
        ax.set(title=f"{CLASS_LABELS[cls]} vs rest", xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1),
               ylim=(0, 1.01))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("Figure 7: ROC curves of the 3-class diagnosis (test split)")
    fig.tight_layout()
    return save_figure(fig, stem)


def figure8_segmentation(examples: dict[str, dict], labels: dict[str, str], order: Sequence[str],
                         stem: str | Path) -> list[Path]:
    """Reference and each run's segmentation of the same test slice; missing runs: 'not run'."""
    reference = next((e for e in examples.values() if "truth" in e), None)
    panels = ["reference"] + list(order)
    n = len(panels)
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, name in zip(axes.ravel(), panels):
        if name == "reference":
            if reference is None:
                _not_run(ax, "reference")
                continue
            _ct(ax, reference)
            _contour(ax, reference["truth"], "lime", "reference")
            ax.set_title(f"Reference ({reference['subject_id']}, slice {int(reference['slice_index'])})")
            continue
        ex = examples.get(name)
        if ex is None or "lesion_prob" not in ex:
            _not_run(ax, labels.get(name, name))
            continue
        _ct(ax, ex)
        pred = ex["lesion_prob"] >= float(ex.get("threshold", 0.5))
        ax.imshow(np.ma.masked_where(~pred, pred.astype(float)), cmap=RED, alpha=0.5, vmin=0, vmax=1,
                  interpolation="nearest", aspect=float(ex["spacing"][1] / ex["spacing"][2]))
        _contour(ax, ex.get("truth"), "lime")
        ax.set_title(labels.get(name, name))
    fig.suptitle("Figure 8: segmented lesions (red) and reference outline (green), same test slice")
    fig.tight_layout()
    return save_figure(fig, stem)


def figure9_lambda(points: dict[float, dict[str, float]], stem: str | Path,
                   lambdas: Sequence[float] = (0, 1, 10, 100)) -> list[Path]:
    """``points[lambda] = {"dsc", "nsd", "accuracy", "auc"}``; lambdas without a run are marked."""
    fig, (ax_seg, ax_cls) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = np.arange(len(lambdas))
    missing = [lam for lam in lambdas if lam not in points]
    for ax, metrics, title in ((ax_seg, (("dsc", "DSC"), ("nsd", "NSD")), "(a) lesion segmentation"),
                               (ax_cls, (("accuracy", "accuracy"), ("auc", "macro AUC")), "(b) diagnosis")):
        if len(missing) == len(lambdas):
            _not_run(ax, "lambda_ta ablation")
            continue
        for key, label in metrics:
            ys = np.array([points.get(lam, {}).get(key, np.nan) for lam in lambdas], dtype=float)
            ok = np.isfinite(ys)
            ax.plot(xs[ok], ys[ok], marker="o", linewidth=2, label=label)
        ax.set_xticks(xs, [f"{lam:g}" + (" (not run)" if lam in missing else "") for lam in lambdas])
        ax.set(title=title, xlabel="task-aware weight lambda_ta", ylabel="test value", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Figure 9: effect of the task-aware loss weight lambda_ta")
    fig.tight_layout()
    return save_figure(fig, stem)


def figure10_evidence(example: dict | None, label: str, stem: str | Path) -> list[Path]:
    """CT with reference and predicted lesions, then the evidence masks V_1..V_3 overlaid."""
    fig, axes = plt.subplots(1, 4, figsize=(15, 4.3))
    if example is None or "evidence_1" not in example:
        for ax in axes:
            _not_run(ax, "evidence masks (DeepSC-COVID)")
        fig.suptitle("Figure 10: lesion evidence masks")
        return save_figure(fig, stem)
    _ct(axes[0], example)
    if "lesion_prob" in example:
        pred = example["lesion_prob"] >= float(example.get("threshold", 0.5))
        axes[0].imshow(np.ma.masked_where(~pred, pred.astype(float)), cmap=RED, alpha=0.5, vmin=0, vmax=1,
                       interpolation="nearest", aspect=float(example["spacing"][1] / example["spacing"][2]))
    _contour(axes[0], example.get("truth"), "lime", "reference")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(loc="lower right", fontsize=8)
    true = CLASS_LABELS[CLASSES[int(example["label"])]]
    prob = example.get("class_prob")
    pred_cls = CLASS_LABELS[CLASSES[int(np.argmax(prob))]] if prob is not None else "-"
    axes[0].set_title(f"Segmented lesions (red)\ntrue {true}, predicted {pred_cls}")
    mappable = None
    for k, ax in enumerate(axes[1:], start=1):
        _ct(ax, example)
        mappable = ax.imshow(example[f"evidence_{k}"], cmap="jet", alpha=0.45, vmin=0, vmax=1,
                             interpolation="bilinear", aspect=float(example["spacing"][1] / example["spacing"][2]))
        _contour(ax, example.get("truth"), "white")
        ax.set_title(f"Evidence mask V_{k} (unit {k})")
    if mappable is not None:
        fig.colorbar(mappable, ax=list(axes[1:]), shrink=0.8, label="evidence (normalised)")
    fig.suptitle(f"Figure 10: {label} on {example['subject_id']} (slice {int(example['slice_index'])}): lesions "
                 f"and lesion evidence masks of the predicted class")
    return save_figure(fig, stem)
