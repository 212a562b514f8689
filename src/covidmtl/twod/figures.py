"""Figures of the 2D models (matplotlib, Agg; PNG + PDF through the shared
:func:`covidmtl.deep.figures.save_figure`).

- :func:`learning_curves`: training (solid) and validation (dashed) loss per epoch and loss
  component (Amyar Figure 6).
- :func:`segmentation_examples`: test slices, ground truth and each model's predicted lesion
  (Amyar Figure 7; also the MGA segmenters).
- :func:`roc_binary`, :func:`roc_multiclass`: ROC curves (Amyar Figures 8-9).
- :func:`confusion_matrices`: counts and row percentages (Amyar Figure 10).
- :func:`size_sweep`: single-task vs MGA against the training-set size (MGA section 6.3).
- :func:`attribution_grid`: Integrated Gradients / DeepLIFT maps over the lesion mask (MGA Figure 10).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve  # noqa: E402

from covidmtl.deep.figures import save_figure  # noqa: E402

COMPONENT_LABELS = {"total": "total loss", "cls": "classification (cross-entropy)", "seg": "segmentation (Dice loss)",
                    "rec": "reconstruction (MSE)", "mga": "attention guidance (MSE)"}


def not_run(ax: plt.Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}\nnot run", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def learning_curves(histories: dict[str, pd.DataFrame], stem: str | Path, title: str) -> list[Path]:
    """Rows = runs, columns = loss components present in any run."""
    components = [c for c in COMPONENT_LABELS
                  if any(h is not None and f"train_loss_{c}" in h.columns for h in histories.values())]
    rows = max(1, len(histories))
    cols = max(1, len(components))
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.0 * rows), squeeze=False)
    if not histories:
        not_run(axes[0, 0], title)
    for r, (label, h) in enumerate(histories.items()):
        for c, comp in enumerate(components):
            ax = axes[r, c]
            if h is None or f"train_loss_{comp}" not in h.columns:
                not_run(ax, f"{label}: {comp}")
                continue
            ax.plot(h["epoch"], h[f"train_loss_{comp}"], "-", color="tab:blue", lw=2, label="training")
            if f"val_loss_{comp}" in h.columns:
                ax.plot(h["epoch"], h[f"val_loss_{comp}"], "--", color="tab:orange", lw=2, label="validation")
            if "best_epoch" in h.columns and len(h):
                ax.axvline(h["best_epoch"].iloc[-1], color="0.5", lw=1, ls=":", label="best epoch")
            ax.set_title(f"{label}\n{COMPONENT_LABELS[comp]}", fontsize=10)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("loss")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, stem)


def segmentation_examples(examples: dict[str, dict], stem: str | Path, title: str, n_rows: int = 4) -> list[Path]:
    """``examples``: model label -> {slice_id, image, mask, prob} (seg_examples.npz)."""
    models = {k: v for k, v in examples.items() if v is not None and len(v.get("slice_id", [])) > 0}
    if not models:
        fig, ax = plt.subplots(figsize=(5, 3))
        not_run(ax, "segmentation models")
        fig.suptitle(title)
        return save_figure(fig, stem)
    first = next(iter(models.values()))
    ids = [str(s) for s in first["slice_id"][:n_rows]]
    cols = 2 + len(models)
    fig, axes = plt.subplots(len(ids), cols, figsize=(2.4 * cols, 2.5 * len(ids)), squeeze=False)
    for r, sid in enumerate(ids):
        k = list(map(str, first["slice_id"])).index(sid)
        axes[r, 0].imshow(first["image"][k], cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title(f"{sid}\nimage" if r == 0 else sid, fontsize=8)
        axes[r, 1].imshow(first["image"][k], cmap="gray", vmin=0, vmax=1)
        axes[r, 1].contour(first["mask"][k], levels=[0.5], colors="lime", linewidths=1)
        axes[r, 1].set_title("ground truth" if r == 0 else "", fontsize=9)
        for c, (label, ex) in enumerate(models.items(), start=2):
            ax = axes[r, c]
            ids_m = list(map(str, ex["slice_id"]))
            if sid not in ids_m:
                not_run(ax, label)
                continue
            j = ids_m.index(sid)
            ax.imshow(ex["image"][j], cmap="gray", vmin=0, vmax=1)
            ax.imshow(np.ma.masked_less(ex["prob"][j], 0.5), cmap="autumn", alpha=0.6, vmin=0, vmax=1)
            ax.contour(ex["mask"][j], levels=[0.5], colors="lime", linewidths=0.8)
            if r == 0:
                ax.set_title(label, fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title}\n(green: ground-truth contour; orange: predicted lesion, p >= 0.5)")
    fig.tight_layout()
    return save_figure(fig, stem)


def roc_binary(predictions: dict[str, pd.DataFrame], stem: str | Path, title: str) -> list[Path]:
    """``predictions``: label -> slice predictions (y_true, prob_1)."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    drawn = False
    for label, pred in predictions.items():
        y = pred["y_true"].to_numpy().astype(int)
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, pred["prob_1"].to_numpy())
        ax.plot(fpr, tpr, lw=2, label=f"{label} (AUC {roc_auc_score(y, pred['prob_1']):.3f})")
        drawn = True
    if not drawn:
        not_run(ax, "binary classifiers")
    else:
        ax.plot([0, 1], [0, 1], ":", color="0.5", label="chance")
        ax.set(xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity (true-positive rate)",
               xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, stem)


def roc_multiclass(predictions: dict[str, pd.DataFrame], class_names: Sequence[str], stem: str | Path,
                   title: str) -> list[Path]:
    """One panel per class (one-vs-rest), one line per model."""
    fig, axes = plt.subplots(1, len(class_names), figsize=(4.6 * len(class_names), 4.4), squeeze=False)
    for k, (ax, name) in enumerate(zip(axes[0], class_names)):
        drawn = False
        for label, pred in predictions.items():
            y = (pred["y_true"].to_numpy().astype(int) == k).astype(int)
            if f"prob_{k}" not in pred or len(np.unique(y)) < 2:
                continue
            fpr, tpr, _ = roc_curve(y, pred[f"prob_{k}"].to_numpy())
            ax.plot(fpr, tpr, lw=2, label=f"{label} (AUC {roc_auc_score(y, pred[f'prob_{k}']):.3f})")
            drawn = True
        if not drawn:
            not_run(ax, f"{name} vs rest")
            continue
        ax.plot([0, 1], [0, 1], ":", color="0.5")
        ax.set(title=f"{name} vs rest", xlabel="false-positive rate", ylabel="true-positive rate", xlim=(0, 1),
               ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, stem)


def confusion_matrices(panels: dict[str, tuple[pd.DataFrame, Sequence[str]]], stem: str | Path, title: str
                       ) -> list[Path]:
    """``panels``: label -> (predictions, class names); counts with row percentages."""
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(4.4 * n, 4.2), squeeze=False)
    if not panels:
        not_run(axes[0, 0], "classifiers")
    for ax, (label, (pred, names)) in zip(axes[0], panels.items()):
        labels = list(range(len(names)))
        cm = confusion_matrix(pred["y_true"].astype(int), pred["y_pred"].astype(int), labels=labels)
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in labels:
            for j in labels:
                ax.text(j, i, f"{cm[i, j]}\n({100 * share[i, j]:.0f}%)", ha="center", va="center",
                        color="white" if share[i, j] > 0.6 else "black", fontsize=9)
        ax.set_xticks(labels, names, rotation=20)
        ax.set_yticks(labels, names)
        ax.set(xlabel="predicted class", ylabel="true class", title=label)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, stem)


def size_sweep(table: pd.DataFrame, stem: str | Path, title: str,
               metrics: Sequence[str] = ("accuracy", "f1", "auc")) -> list[Path]:
    """``table``: columns model, train_fraction, n_train_patients and the metrics."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        if table.empty or metric not in table:
            not_run(ax, "size sweep")
            continue
        for model, g in table.groupby("model", sort=False):
            g = g.sort_values("train_fraction")
            ax.plot(100 * g["train_fraction"], g[metric], "o-", lw=2, label=model)
        ax.set(xlabel="training set used (% of training patients)", ylabel=metric.upper() if metric == "auc"
               else metric.capitalize(), title=metric.upper() if metric in {"auc", "f1"} else metric.capitalize())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, stem)


def attribution_grid(rows: list[dict], columns: Sequence[str], stem: str | Path, title: str) -> list[Path]:
    """``rows``: {name, image, mask, maps: {column: attribution (H, W)}}; attributions shown as
    |attribution| normalised per map, with the lesion contour."""
    n_cols = 1 + len(columns)
    fig, axes = plt.subplots(max(1, len(rows)), n_cols, figsize=(2.6 * n_cols, 2.7 * max(1, len(rows))),
                             squeeze=False)
    if not rows:
        not_run(axes[0, 0], "attribution (no COVID-19 test slice with lesion)")
    for r, row in enumerate(rows):
        axes[r, 0].imshow(row["image"], cmap="gray", vmin=0, vmax=1)
        axes[r, 0].contour(row["mask"], levels=[0.5], colors="lime", linewidths=1)
        axes[r, 0].set_title(f"{row['name']}\nimage + lesion", fontsize=8)
        for c, col in enumerate(columns, start=1):
            ax = axes[r, c]
            a = row["maps"].get(col)
            if a is None:
                not_run(ax, col)
                continue
            a = np.abs(a)
            a = a / a.max() if a.max() > 0 else a
            ax.imshow(row["image"], cmap="gray", vmin=0, vmax=1)
            ax.imshow(a, cmap="hot", alpha=0.6, vmin=0, vmax=1)
            ax.contour(row["mask"], levels=[0.5], colors="lime", linewidths=0.8)
            share = row.get("share_in_mask", {}).get(col)
            ax.set_title(col + (f"\n{100 * share:.0f}% in lesion" if share is not None else ""), fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, stem)
