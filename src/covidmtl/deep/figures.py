"""Figures of the deep models (matplotlib, Agg; PNG + PDF).

- Figure 4: test loss per epoch with and without Shift3D (SqueezeNet3D vs ShiftNet3D per
  task; COVID-MTL without vs with Shift3D).
- Figure 9: the three multitask losses (random-weighted, uncertainty, mean), each with and
  without Shift3D: mean test cross-entropy over the tasks and mean test AUC per epoch.
- Figure 10: transfer learning to severity with and without Shift3D.
- Figure 7 (class activation maps) is drawn by :mod:`covidmtl.deep.cam`.

Test losses of different loss functions are compared as the plain mean of the per-task
cross-entropies (``test_loss_mean`` in history.csv), which does not depend on the loss
weighting and so is comparable between them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

WITH_STYLE = {"linestyle": "-", "linewidth": 2.0}
WITHOUT_STYLE = {"linestyle": "--", "linewidth": 2.0}
LOSS_COLORS = {"random_weighted": "tab:red", "uncertainty": "tab:blue", "mean": "tab:green"}
LOSS_LABELS = {"random_weighted": "random-weighted", "uncertainty": "uncertainty (Kendall)", "mean": "mean"}

plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9})


def save_figure(fig: plt.Figure, stem: str | Path) -> list[Path]:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def _not_run(ax: plt.Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}\nnot run", ha="center", va="center", transform=ax.transAxes, fontsize=11,
            color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _curve(ax: plt.Axes, history: pd.DataFrame, column: str, label: str, **style) -> bool:
    if history is None or column not in history.columns:
        return False
    h = history[["epoch", column]].dropna()
    if h.empty:
        return False
    ax.plot(h["epoch"], h[column], label=label, **style)
    return True


def mean_auc(history: pd.DataFrame) -> pd.Series:
    cols = [c for c in history.columns if c.startswith("test_auc_")]
    return history[cols].mean(axis=1, skipna=True) if cols else pd.Series(np.nan, index=history.index)


def figure4_shift3d(histories: dict[str, pd.DataFrame], stem: str | Path) -> list[Path]:
    """Test loss per epoch with and without Shift3D."""
    pairs = [("CT (single task)", "squeezenet3d_ct", "shiftnet3d_ct", "test_loss_ct", "SqueezeNet3D", "ShiftNet3D"),
             ("NAT (single task)", "squeezenet3d_nat", "shiftnet3d_nat", "test_loss_nat", "SqueezeNet3D", "ShiftNet3D"),
             ("Severity (single task)", "squeezenet3d_severity", "shiftnet3d_severity", "test_loss_severity",
              "SqueezeNet3D", "ShiftNet3D"),
             ("COVID-MTL (3 tasks)", "mtl_noshift", "mtl_shift", "test_loss_mean", "w/o Shift3D", "with Shift3D")]
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 3.8), squeeze=False)
    for ax, (title, without, with_, column, lab_without, lab_with) in zip(axes[0], pairs):
        drawn = _curve(ax, histories.get(without), column, lab_without, color="tab:gray", **WITHOUT_STYLE)
        drawn |= _curve(ax, histories.get(with_), column, lab_with, color="tab:red", **WITH_STYLE)
        if not drawn:
            _not_run(ax, title)
            continue
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test loss (cross-entropy)" if column != "test_loss_mean" else "test loss (mean CE over tasks)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Figure 4: test loss with and without Shift3D")
    fig.tight_layout()
    return save_figure(fig, stem)


def figure9_losses(histories: dict[str, pd.DataFrame], losses: dict[str, str], stem: str | Path) -> list[Path]:
    """Three loss functions x Shift3D on/off: mean test CE and mean test AUC per epoch.

    ``losses`` maps variant -> loss type (from metrics.json)."""
    runs = {"random_weighted": ("mtl_noshift", "mtl_shift"),
            "uncertainty": ("mtl_noshift_uncertainty", "mtl_shift_uncertainty"),
            "mean": ("mtl_noshift_mean", "mtl_shift_mean")}
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(11, 4.2))
    drawn = False
    for kind, (without, with_) in runs.items():
        for variant, style, tag in ((without, WITHOUT_STYLE, "w/o Shift3D"), (with_, WITH_STYLE, "with Shift3D")):
            h = histories.get(variant)
            if h is None or losses.get(variant, kind) != kind:
                continue
            label = f"{LOSS_LABELS[kind]}, {tag}"
            drawn |= _curve(ax_loss, h, "test_loss_mean", label, color=LOSS_COLORS[kind], **style)
            auc = pd.DataFrame({"epoch": h["epoch"], "auc": mean_auc(h)})
            _curve(ax_auc, auc, "auc", label, color=LOSS_COLORS[kind], **style)
    if not drawn:
        _not_run(ax_loss, "loss ablation")
        _not_run(ax_auc, "loss ablation")
    else:
        ax_loss.set(title="(a) test loss", xlabel="epoch", ylabel="test loss (mean CE over tasks)")
        ax_auc.set(title="(b) test AUC", xlabel="epoch", ylabel="mean test AUC over tasks")
        for ax in (ax_loss, ax_auc):
            ax.grid(alpha=0.3)
            ax.legend()
    fig.suptitle("Figure 9: random-weighted, uncertainty and mean loss, with and without Shift3D")
    fig.tight_layout()
    return save_figure(fig, stem)


def figure10_transfer(histories: dict[str, pd.DataFrame], stem: str | Path) -> list[Path]:
    """Transfer learning to severity with and without Shift3D: test loss and AUC per epoch."""
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(11, 4.2))
    drawn = False
    for variant, style, color, label in (("transfer_severity_noshift", WITHOUT_STYLE, "tab:gray", "w/o Shift3D"),
                                         ("transfer_severity_shift", WITH_STYLE, "tab:red", "with Shift3D")):
        h = histories.get(variant)
        drawn |= _curve(ax_loss, h, "test_loss_severity", label, color=color, **style)
        _curve(ax_auc, h, "test_auc_severity", label, color=color, **style)
    if not drawn:
        _not_run(ax_loss, "transfer learning")
        _not_run(ax_auc, "transfer learning")
    else:
        ax_loss.set(title="(a) severity test loss", xlabel="epoch (after transfer)", ylabel="test cross-entropy")
        ax_auc.set(title="(b) severity test AUC", xlabel="epoch (after transfer)",
                   ylabel="mean one-vs-rest AUC")
        for ax in (ax_loss, ax_auc):
            ax.grid(alpha=0.3)
            ax.legend()
    fig.suptitle("Figure 10: transfer learning to severity, with and without Shift3D")
    fig.tight_layout()
    return save_figure(fig, stem)


def figure7_cam(panels: Sequence[dict], stem: str | Path, title: str) -> list[Path]:
    """Rows = cases, columns = axial/coronal/sagittal slices with the CAM overlaid.

    Each panel dict: ``name`` (row title), ``image`` (z, y, x), ``cam`` (z, y, x in [0, 1]),
    ``center`` (z, y, x) of the slices."""
    views = [("axial", 0), ("coronal", 1), ("sagittal", 2)]
    fig, axes = plt.subplots(len(panels), 3, figsize=(10.5, 3.6 * len(panels)), squeeze=False)
    mappable = None
    for row, panel in zip(axes, panels):
        img, cam, center = panel["image"], panel["cam"], panel["center"]
        for ax, (view, axis) in zip(row, views):
            sl = [slice(None)] * 3
            sl[axis] = int(center[axis])
            im2, cam2 = img[tuple(sl)], cam[tuple(sl)]
            if axis != 0:  # coronal/sagittal: superior at the top
                im2, cam2 = np.flipud(im2), np.flipud(cam2)
            ax.imshow(im2, cmap="gray", interpolation="nearest")
            mappable = ax.imshow(np.ma.masked_less(cam2, 0.05), cmap="jet", alpha=0.45, vmin=0, vmax=1,
                                 interpolation="bilinear")
            ax.set_title(f"{panel['name']}\n{view}" if axis == 1 else view)
            ax.axis("off")
    if mappable is not None:
        cbar = fig.colorbar(mappable, ax=axes.ravel().tolist(), shrink=0.6)
        cbar.set_label("Grad-CAM (normalised)")
    fig.suptitle(title)
    return save_figure(fig, stem)
