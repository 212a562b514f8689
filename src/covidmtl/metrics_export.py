"""Headline metrics and curve data for ``dvc metrics show`` / ``dvc plots show``.

``covidmtl metrics-export <kind> ...`` turns the pipeline's own result files into the small,
flat files that DVC compares across commits and experiments (dvc.yaml declares them as
``metrics``/``plots``). Nothing is recomputed from images: the numbers are those of the
result tables, so the DVC view and the paper tables cannot disagree.

kinds:

``cohort``
    ``--manifest`` + ``--split`` -> JSON with the number of scans, patients, train/test
    scans and scans per 3-class diagnosis (the size of the cohort behind every metric).
``classification``
    prediction files (the layout shared by the RF/LightGBM and deep-model stages, see
    :mod:`covidmtl.classical.metrics`) -> JSON ``{task: {model: {auc, accuracy, f1, ...}}}``
    (COVID-MTL section 5.2 metrics) and, with ``--roc-dir``, one ROC curve per task and
    model as CSV (``fpr, tpr, threshold``; per class one-vs-rest for multi-class tasks).
``segmentation``
    a per-subject table (e.g. lung-segmentation QC with a ``dice`` column) -> JSON with
    mean, sd, median, min and n of each named column, per ``--group-by`` value if given.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from covidmtl.errors import PipelineInputError

log = logging.getLogger(__name__)

STAGE = "metrics-export"


def _plain(value: Any) -> Any:
    """JSON-safe scalars: numpy types to Python, NaN/inf to null (DVC reads strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def write_json(data: dict, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_plain(data), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def _read_csv(path: Path, what: str, required: Iterable[str] = ()) -> pd.DataFrame:
    if not path.is_file():
        raise PipelineInputError(stage=STAGE, subject=None, path=path, reason=f"{what} not found",
                                 hint="run the stage that writes it first (snakemake <target>)")
    table = pd.read_csv(path, dtype={"subject_id": str, "patient_id": str})
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise PipelineInputError(stage=STAGE, subject=None, path=path,
                                 reason=f"{what} lacks column(s) {missing}; has {list(table.columns)}",
                                 hint="pass the file the pipeline wrote for this stage")
    return table


def cohort_metrics(manifest: pd.DataFrame, split: pd.DataFrame) -> dict[str, Any]:
    """Cohort size: scans, patients, scans per split and per 3-class diagnosis."""
    data = manifest.merge(split[["subject_id", "split"]], on="subject_id", how="left")
    out: dict[str, Any] = {"scans": len(data)}
    if "patient_id" in data:
        out["patients"] = int(data.patient_id.nunique())
    for name in ("train", "test"):
        out[f"{name}_scans"] = int((data.split == name).sum())
    if "diagnosis3" in data and data.diagnosis3.notna().any():
        out["diagnosis3"] = {str(k): int(v) for k, v in data.diagnosis3.value_counts().sort_index().items()}
    return out


def classification_metrics(pred: pd.DataFrame) -> dict[str, dict[str, dict[str, Any]]]:
    """``{task: {model: metrics}}`` with COVID-MTL's metrics (precision, recall, F1, accuracy, AUC)."""
    from covidmtl.classical.metrics import metrics_from_predictions

    table = metrics_from_predictions(pred)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for _, row in table.iterrows():
        values = {k: v for k, v in row.items() if k not in {"task", "model"}}
        out.setdefault(str(row["task"]), {})[str(row["model"])] = values
    return out


def roc_curves(pred: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """ROC points per task and model (``<task>_<model>``; multi-class: ``..._class<k>``, one-vs-rest)."""
    from sklearn.metrics import roc_curve

    from covidmtl.classical.metrics import task_probabilities

    curves: dict[str, pd.DataFrame] = {}
    for (task, model), group in pred.groupby(["task", "model"], sort=True):
        prob, classes = task_probabilities(group)
        y = group["y_true"].to_numpy().astype(int)
        wanted = [(1, None)] if classes == [0, 1] else [(c, c) for c in classes]
        for cls, suffix in wanted:
            y_cls = (y == cls).astype(int)
            if y_cls.min() == y_cls.max():
                log.warning("ROC of %s/%s class %s skipped: the test set holds one class only", task, model, cls)
                continue
            fpr, tpr, thresholds = roc_curve(y_cls, prob[:, classes.index(cls)])
            name = f"{task}_{model}" + ("" if suffix is None else f"_class{suffix}")
            curves[name] = pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.clip(thresholds, 0.0, 1.0)})
    return curves


def summary_metrics(table: pd.DataFrame, columns: list[str], group_by: str | None = None) -> dict[str, Any]:
    """Mean, sd, median, min and n of each column; per value of ``group_by`` when given
    (e.g. per segmentation method: pooling methods would mean nothing)."""

    def describe(frame: pd.DataFrame) -> dict[str, Any]:
        out = {}
        for column in columns:
            values = pd.to_numeric(frame[column], errors="coerce").dropna()
            out[column] = {
                "mean": values.mean() if len(values) else None,
                "sd": values.std(ddof=1) if len(values) > 1 else None,
                "median": values.median() if len(values) else None,
                "min": values.min() if len(values) else None,
                "n": int(len(values)),
            }
        return out

    if not group_by:
        return describe(table)
    return {str(value): describe(frame) for value, frame in table.groupby(group_by, sort=True)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="covidmtl metrics-export",
                                     description="Metrics (JSON) and curves (CSV) for DVC from result files.")
    kinds = parser.add_subparsers(dest="kind", required=True)

    cohort = kinds.add_parser("cohort", help="cohort size from the manifest and the split")
    cohort.add_argument("--manifest", required=True, type=Path)
    cohort.add_argument("--split", required=True, type=Path)
    cohort.add_argument("--out", required=True, type=Path, help="JSON file")

    classification = kinds.add_parser("classification", help="AUC etc. and ROC curves from prediction files")
    classification.add_argument("--predictions", required=True, nargs="+", type=Path)
    classification.add_argument("--out", required=True, type=Path, help="JSON file")
    classification.add_argument("--roc-dir", type=Path, help="folder for one ROC CSV per task and model")

    segmentation = kinds.add_parser("segmentation", help="summary of per-subject scores such as Dice")
    segmentation.add_argument("--table", required=True, type=Path, help="CSV, one row per subject")
    segmentation.add_argument("--columns", required=True, nargs="+", help="score columns, e.g. dice")
    segmentation.add_argument("--group-by", help="summarise per value of this column (e.g. method)")
    segmentation.add_argument("--out", required=True, type=Path, help="JSON file")

    args = parser.parse_args(argv)
    if args.kind == "cohort":
        manifest = _read_csv(args.manifest, "manifest", ["subject_id"])
        split = _read_csv(args.split, "split", ["subject_id", "split"])
        write_json(cohort_metrics(manifest, split), args.out)
    elif args.kind == "classification":
        from covidmtl.classical.metrics import read_predictions

        for path in args.predictions:
            _read_csv(path, "prediction file")
        try:
            pred = read_predictions(args.predictions)
        except ValueError as err:
            raise PipelineInputError(stage=STAGE, subject=None, path=args.predictions[0], reason=str(err),
                                     hint="pass the predictions.csv files of the classical/deep stages") from err
        write_json(classification_metrics(pred), args.out)
        if args.roc_dir:
            args.roc_dir.mkdir(parents=True, exist_ok=True)
            for stale in args.roc_dir.glob("*.csv"):
                stale.unlink()
            for name, curve in roc_curves(pred).items():
                curve.to_csv(args.roc_dir / f"{name}.csv", index=False)
    else:
        required = args.columns + ([args.group_by] if args.group_by else [])
        table = _read_csv(args.table, "score table", required)
        write_json(summary_metrics(table, args.columns, args.group_by), args.out)
    log.info("%s metrics written to %s", args.kind, args.out)
    return 0
