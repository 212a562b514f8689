"""Test-set predictions and metrics of the deep models.

Predictions use the layout shared with the RF/LightGBM stage
(:mod:`covidmtl.classical.metrics`): ``subject_id, task, model, y_true, y_pred, prob_0,
prob_1[, prob_2]`` (prob_2 empty for the binary tasks), so that the deep rows join the
same Tables 3 and 4; metrics are computed by the same functions (COVID-MTL Tables 3, 4:
binary tasks positive class 1; severity macro precision/recall/F1, one-vs-rest AUC per
class, mean ± sd over the classes).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from covidmtl.classical.metrics import metrics_from_predictions


def predictions_frame(subject_ids: list[str], y_true: dict[str, np.ndarray], probs: dict[str, np.ndarray],
                      model: str, n_prob_columns: int = 3) -> pd.DataFrame:
    """Long table: one row per (subject, task)."""
    frames = []
    for task, prob in probs.items():
        prob = np.asarray(prob, dtype=float)
        df = pd.DataFrame({"subject_id": subject_ids, "task": task, "model": model,
                           "y_true": np.asarray(y_true[task]).astype(int),
                           "y_pred": prob.argmax(axis=1).astype(int)})
        for k in range(max(n_prob_columns, prob.shape[1])):
            df[f"prob_{k}"] = prob[:, k] if k < prob.shape[1] else np.nan
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def metrics_from_frame(pred: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """``{task: {metric: value}}`` from a predictions frame (one model)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = metrics_from_predictions(pred)
    out: dict[str, dict[str, Any]] = {}
    for _, row in table.iterrows():
        out[row["task"]] = {k: _plain(v) for k, v in row.items() if k not in {"task", "model"} and not _isnan(v)}
    return out


def quick_metrics(y_true: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """Accuracy and AUC for the per-epoch log (binary AUC of class 1; multiclass: mean one-vs-rest)."""
    y = np.asarray(y_true).astype(int)
    prob = np.asarray(prob, dtype=float)
    acc = float((prob.argmax(axis=1) == y).mean()) if len(y) else float("nan")
    auc = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if prob.shape[1] == 2 and len(np.unique(y)) == 2:
                auc = float(roc_auc_score(y, prob[:, 1]))
            elif prob.shape[1] > 2:
                aucs = [roc_auc_score((y == k).astype(int), prob[:, k]) for k in range(prob.shape[1])
                        if 0 < (y == k).sum() < len(y)]
                auc = float(np.mean(aucs)) if aucs else float("nan")
        except ValueError:
            pass
    return {"acc": acc, "auc": auc}


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _plain(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return v
