"""Test-set metrics and COVID-MTL Tables 3 and 4 from prediction files.

Prediction files (CSV, one per model; the deep-learning stages write the same layout so
that their rows and curves join the same tables and Figure 3):

    subject_id, task, model, y_true, y_pred, prob_0, prob_1[, prob_2]

``prob_<k>`` is the predicted probability of class ``k``; binary tasks (``ct``, ``nat``)
use prob_0/prob_1 (prob_2 empty), severity uses prob_0..prob_2
(0 control/suspected, 1 mild/regular, 2 severe/critically ill).

Metrics (COVID-MTL section 5.2): precision, recall, F1 and accuracy of the predicted
class; AUC of the probabilities. Binary tasks: the positive class is 1 (COVID-19) and
the class is predicted when prob_1 >= threshold (0.5). Severity: the class with the
highest probability; precision/recall/F1 are macro averages over the three classes; the
AUC is one-vs-rest per class and reported as their mean ± sd (sd over the 3 classes,
ddof=0), the way COVID-MTL reports "0.800 ± 0.020".
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from covidmtl.tables import paper_value, read_paper_values

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["subject_id", "task", "model", "y_true", "y_pred"]
PROB_RE = re.compile(r"^prob_(\d+)$")

TASK_LABELS = {
    "ct": "COVID-19 by radiology (CT)",
    "nat": "COVID-19 by nucleic acid test (NAT)",
    "severity": "Severity (3 classes)",
}
SEVERITY_CLASS_LABELS = {0: "control/suspected", 1: "mild/regular", 2: "severe/critically ill"}
MODEL_LABELS = {"rf": "RF", "lgbm": "LGBM"}

BINARY_METRICS = ["precision", "recall", "f1", "accuracy", "auc"]
METRIC_LABELS = {"precision": "Precision", "recall": "Recall", "f1": "F1", "accuracy": "Accuracy", "auc": "AUC"}


def model_label(model: str) -> str:
    return MODEL_LABELS.get(model, model)


def _auc(y_true: np.ndarray, score: np.ndarray) -> float:
    if len(np.unique(y_true)) < 2:
        log.warning("AUC undefined: the test set holds only class %s", np.unique(y_true))
        return float("nan")
    return float(roc_auc_score(y_true, score))


def binary_metrics(y_true: Iterable, prob_positive: Iterable, threshold: float = 0.5) -> dict[str, float]:
    """Precision, recall, F1, accuracy (class 1 when prob >= threshold) and AUC."""
    y = np.asarray(y_true).astype(int)
    p = np.asarray(prob_positive, dtype=float)
    pred = (p >= threshold).astype(int)
    return {
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "accuracy": float(accuracy_score(y, pred)),
        "auc": _auc(y, p),
        "n": int(len(y)),
    }


def multiclass_metrics(y_true: Iterable, prob: np.ndarray, classes: Iterable[int] | None = None,
                       sd_ddof: int = 0) -> dict[str, float]:
    """Macro precision/recall/F1, accuracy (argmax) and one-vs-rest AUC per class, mean ± sd."""
    y = np.asarray(y_true).astype(int)
    prob = np.asarray(prob, dtype=float)
    classes = list(range(prob.shape[1])) if classes is None else list(classes)
    pred = np.asarray(classes)[np.argmax(prob, axis=1)]
    out = {
        "precision": float(precision_score(y, pred, labels=classes, average="macro", zero_division=0)),
        "recall": float(recall_score(y, pred, labels=classes, average="macro", zero_division=0)),
        "f1": float(f1_score(y, pred, labels=classes, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(y, pred)),
    }
    aucs = []
    for k, c in enumerate(classes):
        a = _auc((y == c).astype(int), prob[:, k])
        out[f"auc_class_{c}"] = a
        aucs.append(a)
    aucs = np.asarray(aucs)
    finite = aucs[np.isfinite(aucs)]
    out["auc"] = float(finite.mean()) if finite.size else float("nan")
    out["auc_sd"] = float(finite.std(ddof=sd_ddof)) if finite.size > sd_ddof else float("nan")
    out["n"] = int(len(y))
    return out


def prob_columns(df: pd.DataFrame) -> list[str]:
    """prob_<k> columns in class order."""
    cols = [c for c in df.columns if PROB_RE.match(c)]
    return sorted(cols, key=lambda c: int(PROB_RE.match(c).group(1)))


def read_predictions(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Concatenate prediction files; checks the layout and duplicate (subject, task, model)."""
    frames = []
    for path in paths:
        df = pd.read_csv(path, dtype={"subject_id": str, "task": str, "model": str})
        missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
        if missing or not prob_columns(df):
            raise ValueError(f"{path}: not a prediction file (missing {missing or 'prob_<k> columns'})")
        frames.append(df)
    if not frames:
        raise ValueError("no prediction files given")
    pred = pd.concat(frames, ignore_index=True)
    dup = pred.duplicated(["subject_id", "task", "model"])
    if dup.any():
        first = pred.loc[dup].iloc[0]
        raise ValueError(f"subject {first.subject_id} has two predictions for task {first.task}, "
                         f"model {first.model}; pass each prediction file once")
    return pred


def task_probabilities(group: pd.DataFrame) -> tuple[np.ndarray, list[int]]:
    """Probability matrix of one (task, model) group: the prob columns that are filled."""
    cols = [c for c in prob_columns(group) if group[c].notna().any()]
    classes = [int(PROB_RE.match(c).group(1)) for c in cols]
    return group[cols].to_numpy(dtype=float), classes


def metrics_from_predictions(pred: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """One row per (task, model) with the metrics (binary or multiclass by number of classes)."""
    rows = []
    for (task, model), g in pred.groupby(["task", "model"], sort=False):
        prob, classes = task_probabilities(g)
        y = g["y_true"].to_numpy()
        if len(classes) == 2:
            m = binary_metrics(y, prob[:, classes.index(1)], threshold)
        else:
            m = multiclass_metrics(y, prob, classes)
        rows.append({"task": task, "model": model, **m})
    return pd.DataFrame(rows)


def table3(metrics: pd.DataFrame, paper: pd.DataFrame | None = None, tasks: Iterable[str] = ("ct", "nat"),
           digits: int = 3) -> pd.DataFrame:
    """COVID-MTL Table 3: diagnosis tasks, one row per (task, model), paper values beside."""
    paper = read_paper_values(None) if paper is None else paper
    rows = []
    for task in tasks:
        for _, m in metrics[metrics["task"] == task].iterrows():
            row = {"Task": TASK_LABELS.get(task, task), "Model": model_label(m["model"])}
            for metric in BINARY_METRICS:
                row[METRIC_LABELS[metric]] = round(m[metric], digits)
                row[f"{METRIC_LABELS[metric]} (paper)"] = paper_value(paper, task, m["model"], metric)
            row["n test"] = int(m["n"])
            rows.append(row)
    return pd.DataFrame(rows)


def table4(metrics: pd.DataFrame, paper: pd.DataFrame | None = None, task: str = "severity",
           digits: int = 3) -> pd.DataFrame:
    """COVID-MTL Table 4: severity, macro precision/recall/F1, accuracy, AUC per class and mean ± sd."""
    paper = read_paper_values(None) if paper is None else paper
    rows = []
    for _, m in metrics[metrics["task"] == task].iterrows():
        model = m["model"]
        row = {"Model": model_label(model)}
        for metric in ["precision", "recall", "f1", "accuracy"]:
            label = METRIC_LABELS[metric] + (" (macro)" if metric != "accuracy" else "")
            row[label] = round(m[metric], digits)
            row[f"{label} (paper)"] = paper_value(paper, task, model, metric)
        for c, name in SEVERITY_CLASS_LABELS.items():
            col = f"auc_class_{c}"
            if col in m and pd.notna(m[col]):
                row[f"AUC {name}"] = round(m[col], digits)
        row["AUC mean ± sd"] = f"{m['auc']:.{digits}f} ± {m['auc_sd']:.{digits}f}"
        row["AUC mean"] = round(m["auc"], digits)
        row["AUC sd"] = round(m["auc_sd"], digits)
        row["AUC mean (paper)"] = paper_value(paper, task, model, "auc")
        row["AUC sd (paper)"] = paper_value(paper, task, model, "auc_sd")
        row["n test"] = int(m["n"])
        rows.append(row)
    return pd.DataFrame(rows)


def write_tables(pred: pd.DataFrame, out_dir: str | Path, paper: pd.DataFrame | None = None,
                 threshold: float = 0.5) -> dict[str, Path]:
    """metrics.csv (long), table3.{csv,md}, table4.{csv,md} from predictions."""
    from covidmtl.tables import write_table

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = metrics_from_predictions(pred, threshold)
    metrics.to_csv(out_dir / "metrics.csv", index=False)
    paths = {"metrics": out_dir / "metrics.csv"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        t3 = table3(metrics, paper)
        t4 = table4(metrics, paper)
    if not t3.empty:
        paths["table3"] = write_table(t3, out_dir / "table3")[0]
    if not t4.empty:
        paths["table4"] = write_table(t4, out_dir / "table4")[0]
    return paths
