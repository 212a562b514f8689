"""COVID-MTL Figure 3: test-set ROC curves per task, built from prediction files.

The function takes a list of prediction files (layout in :mod:`covidmtl.classical.metrics`),
so the deep-learning stages add their curves by passing their own files.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from covidmtl.classical.metrics import (  # noqa: E402
    SEVERITY_CLASS_LABELS,
    TASK_LABELS,
    model_label,
    read_predictions,
    task_probabilities,
)

log = logging.getLogger(__name__)
TASK_ORDER = ["ct", "nat", "severity"]
FPR_GRID = np.linspace(0.0, 1.0, 201)


def save_figure(fig: plt.Figure, out: str | Path, dpi: int = 200) -> list[Path]:
    """Write ``<out>.png`` and ``<out>.pdf`` (whatever suffix ``out`` has) and close the figure."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("") if out.suffix.lower() in {".png", ".pdf"} else out
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return paths


def _ovr_curves(y: np.ndarray, prob: np.ndarray, classes: list[int]):
    """One-vs-rest ROC per class present in y: list of (class, fpr, tpr, auc)."""
    from sklearn.metrics import auc as area

    out = []
    for k, c in enumerate(classes):
        yk = (y == c).astype(int)
        if yk.min() == yk.max():
            continue
        fpr, tpr, _ = roc_curve(yk, prob[:, k])
        out.append((c, fpr, tpr, area(fpr, tpr)))
    return out


def roc_figure(prediction_files: Iterable[str | Path], out: str | Path, severity_mode: str = "macro",
               tasks: Iterable[str] | None = None) -> list[Path]:
    """One panel per task, one curve per model (AUC in the legend); PNG + PDF.

    severity_mode: ``macro`` (mean of the one-vs-rest curves on a common FPR grid, legend
    AUC mean ± sd over classes) or ``per_class`` (each class's one-vs-rest curve).
    """
    if severity_mode not in {"macro", "per_class"}:
        raise ValueError("severity_mode must be 'macro' or 'per_class'")
    pred = read_predictions(prediction_files)
    present = list(dict.fromkeys(pred["task"]))
    tasks = [t for t in (tasks or TASK_ORDER + [t for t in present if t not in TASK_ORDER]) if t in present]
    if not tasks:
        raise ValueError("the prediction files hold none of the requested tasks")
    models = list(dict.fromkeys(pred["model"]))
    colors = dict(zip(models, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.6 * len(tasks), 5.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        sub = pred[pred["task"] == task]
        for model in models:
            g = sub[sub["model"] == model]
            if g.empty:
                continue
            prob, classes = task_probabilities(g)
            y = g["y_true"].to_numpy().astype(int)
            curves = _ovr_curves(y, prob, classes)
            if len(classes) == 2:
                curves = [c for c in curves if c[0] == 1]
                if not curves:
                    log.warning("task %s, model %s: one class only, no ROC curve", task, model)
                    continue
                _, fpr, tpr, a = curves[0]
                ax.plot(fpr, tpr, color=colors[model], lw=2, label=f"{model_label(model)} (AUC = {a:.3f})")
            elif severity_mode == "per_class":
                for i, (c, fpr, tpr, a) in enumerate(curves):
                    ax.plot(fpr, tpr, color=colors[model], ls=styles[i % len(styles)], lw=1.8,
                            label=f"{model_label(model)}, {SEVERITY_CLASS_LABELS.get(c, c)} (AUC = {a:.3f})")
            elif curves:
                tpr_mean = np.mean([np.interp(FPR_GRID, fpr, tpr) for _, fpr, tpr, _ in curves], axis=0)
                tpr_mean[0] = 0.0
                aucs = np.array([a for *_, a in curves])
                ax.plot(FPR_GRID, tpr_mean, color=colors[model], lw=2,
                        label=f"{model_label(model)} (AUC = {aucs.mean():.3f} ± {aucs.std():.3f})")
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="chance")
        title = TASK_LABELS.get(task, task)
        if task == "severity":
            title += "\n" + ("macro-average of one-vs-rest curves" if severity_mode == "macro"
                             else "one-vs-rest per class")
        ax.set_title(title, fontsize=12)
        ax.set_xlabel("False positive rate (1 − specificity)", fontsize=11)
        ax.set_ylabel("True positive rate (sensitivity)", fontsize=11)
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=9)
    fig.suptitle("Test-set ROC curves (COVID-MTL Figure 3)", fontsize=14)
    fig.tight_layout()
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> int:
    """``covidmtl roc-figure``: Figure 3 from prediction files (classical and deep models)."""
    ap = argparse.ArgumentParser(prog="covidmtl roc-figure", description=main.__doc__)
    ap.add_argument("--predictions", nargs="+", required=True, help="prediction CSVs")
    ap.add_argument("--out", required=True, help="figure path; .png and .pdf are written")
    ap.add_argument("--params", default=None,
                    help="JSON of the 'classical' config section (uses roc_severity_mode)")
    ap.add_argument("--severity-mode", choices=["macro", "per_class"], default=None,
                    help="severity panel: macro-average or per-class one-vs-rest curves; overrides --params")
    ap.add_argument("--tasks", nargs="*", default=None, help="tasks to draw (default: all present)")
    args = ap.parse_args(argv)
    from covidmtl.classical.models import parse_params

    mode = args.severity_mode or parse_params(args.params)["roc_severity_mode"]
    paths = roc_figure(args.predictions, args.out, mode, args.tasks)
    log.info("Figure 3 -> %s", ", ".join(map(str, paths)))
    return 0
