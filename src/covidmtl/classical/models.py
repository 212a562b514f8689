"""Random Forest and LightGBM baselines on the lung features (COVID-MTL section 5.2, Tables 3-4).

Three tasks, each trained on the train split and evaluated on the test split:
``ct`` (COVID-19 by radiology), ``nat`` (COVID-19 by nucleic acid test) and ``severity``
(0 control/suspected, 1 mild/regular, 2 severe/critically ill). COVID-MTL uses
1000 trees for the RF and 1000 estimators with learning rate 0.01 for LightGBM; other
hyperparameters are the libraries' defaults and are exposed as config knobs.

A task whose label is missing for every subject is skipped (logged and listed in the QC
table); subjects without a task's label are left out of that task (listed too).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from covidmtl.errors import PipelineInputError
from covidmtl.features.radiomics import feature_columns, read_table_file

log = logging.getLogger(__name__)
STAGE = "classical"


@dataclass(frozen=True)
class Task:
    name: str
    column: str
    classes: tuple[int, ...]


TASKS: dict[str, Task] = {
    "ct": Task("ct", "ct", (0, 1)),
    "nat": Task("nat", "nat", (0, 1)),
    "severity": Task("severity", "severity", (0, 1, 2)),
}

DEFAULT_PARAMS: dict[str, Any] = {
    "seed": 20201210,
    "tasks": ["ct", "nat", "severity"],
    "models": ["rf", "lgbm"],
    # Binary tasks: predict COVID-19 when its probability reaches this.
    "threshold": 0.5,
    # Figure 3's severity panel: "macro" (mean one-vs-rest curve) or "per_class".
    "roc_severity_mode": "macro",
    "rf": {
        "n_estimators": 1000,      # COVID-MTL section 5.2
        "max_depth": None,
        "max_features": "sqrt",
        "min_samples_leaf": 1,
        "class_weight": None,
    },
    "lgbm": {
        "n_estimators": 1000,      # COVID-MTL section 5.2
        "learning_rate": 0.01,     # COVID-MTL section 5.2
        "num_leaves": 31,
        "max_depth": -1,
        "min_child_samples": 20,
        "subsample": 1.0,
        "colsample_bytree": 1.0,
        "class_weight": None,
        # Feature importance used for the feature selection of section 5.5.
        "importance_type": "split",
    },
}


def parse_params(text: str | dict | None) -> dict[str, Any]:
    """The ``classical`` config section (JSON) merged over the defaults; unknown keys are errors."""
    given = json.loads(text) if isinstance(text, str) and text else (text or {})
    params = copy.deepcopy(DEFAULT_PARAMS)
    for key, value in given.items():
        if key not in params:
            raise ValueError(f"unknown classical parameter {key!r}; known: {sorted(params)}")
        if isinstance(params[key], dict):
            unknown = set(value) - set(params[key])
            if unknown:
                raise ValueError(f"unknown classical.{key} parameter(s) {sorted(unknown)}; known: {sorted(params[key])}")
            params[key].update(value)
        else:
            params[key] = value
    for task in params["tasks"]:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known: {sorted(TASKS)}")
    for model in params["models"]:
        if model not in {"rf", "lgbm"}:
            raise ValueError(f"unknown model {model!r}; known: rf, lgbm")
    return params


def make_model(name: str, params: dict[str, Any], n_jobs: int = 1):
    """An unfitted RF or LightGBM classifier with the configured hyperparameters."""
    if name == "rf":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(**params["rf"], random_state=params["seed"], n_jobs=n_jobs)
    if name == "lgbm":
        from lightgbm import LGBMClassifier

        p = dict(params["lgbm"])
        p.pop("importance_type")
        # subsample < 1 needs a bagging frequency to take effect in LightGBM
        subsample_freq = 1 if p.get("subsample", 1.0) < 1.0 else 0
        return LGBMClassifier(**p, subsample_freq=subsample_freq, random_state=params["seed"], n_jobs=n_jobs,
                              deterministic=True, force_col_wise=True, verbose=-1)
    raise ValueError(f"unknown model {name!r}")


def _qc(item: str, kind: str, reason: str) -> dict[str, str]:
    return {"item": str(item), "kind": kind, "reason": reason}


def task_data(table: pd.DataFrame, task: Task) -> tuple[pd.DataFrame | None, list[dict[str, str]]]:
    """Rows usable for a task (label present and valid) and QC rows for those left out."""
    qc: list[dict[str, str]] = []
    if task.column not in table.columns or table[task.column].isna().all():
        reason = f"task {task.name} skipped: no subject has a '{task.column}' label"
        log.warning(reason)
        return None, [_qc(task.name, "task", reason)]
    labels = pd.to_numeric(table[task.column], errors="coerce")
    missing = labels.isna()
    for sid in table.loc[missing, "subject_id"]:
        qc.append(_qc(sid, "subject", f"no '{task.column}' label; left out of task {task.name}"))
    invalid = ~missing & ~labels.isin(task.classes)
    if invalid.any():
        bad = table.loc[invalid, ["subject_id", task.column]].head(5).to_dict("records")
        raise PipelineInputError(stage=STAGE, subject=str(bad[0]["subject_id"]),
                                 reason=f"'{task.column}' must be one of {list(task.classes)}; found {bad}",
                                 hint="fix the label in the cohort manifest and rerun features-merge")
    rows = table.loc[~missing].copy()
    rows[task.column] = labels[~missing].astype(int)
    return rows, qc


def predict_full(model, X: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    """Probabilities for every class of the task, 0 for a class absent from training."""
    prob = model.predict_proba(X)
    full = np.zeros((X.shape[0], len(classes)))
    for j, c in enumerate(model.classes_):
        full[:, classes.index(int(c))] = prob[:, j]
    return full


def train_and_evaluate(table: pd.DataFrame, split: pd.DataFrame, params: dict[str, Any], n_jobs: int = 1
                       ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Fit every model on the train split for every task; returns (predictions, importance, qc).

    predictions: the test split in the layout of :mod:`covidmtl.classical.metrics`.
    importance: task, model, feature, importance, rank (1 = most important).
    """
    feats = feature_columns(table)
    if not feats:
        raise PipelineInputError(stage=STAGE, reason="the features table has no feature columns",
                                 hint="pass the table written by `covidmtl features-merge`")
    split = split[["subject_id", "split"]].astype({"subject_id": str})
    bad = split.loc[~split["split"].isin(["train", "test"]), "subject_id"]
    if len(bad):
        raise PipelineInputError(stage=STAGE, subject=bad.iloc[0], reason="split must be 'train' or 'test'",
                                 hint="rerun `covidmtl split`")
    table = table.assign(subject_id=table["subject_id"].astype(str))
    qc = [_qc(s, "subject", "not in the split file; left out of all tasks")
          for s in table.loc[~table["subject_id"].isin(split["subject_id"]), "subject_id"]]
    table = table.merge(split, on="subject_id", how="inner")

    predictions, importance = [], []
    for task_name in params["tasks"]:
        task = TASKS[task_name]
        rows, task_qc = task_data(table, task)
        qc += task_qc
        if rows is None:
            continue
        train, test = rows[rows["split"] == "train"], rows[rows["split"] == "test"]
        if train[task.column].nunique() < 2 or test.empty:
            reason = (f"task {task.name} skipped: the train split has classes {sorted(int(c) for c in train[task.column].unique())} "
                      f"and the test split {len(test)} subjects; need >= 2 classes and >= 1 test subject")
            log.warning(reason)
            qc.append(_qc(task.name, "task", reason))
            continue
        X_train, y_train = train[feats].to_numpy(np.float64), train[task.column].to_numpy()
        X_test, y_test = test[feats].to_numpy(np.float64), test[task.column].to_numpy()
        for model_name in params["models"]:
            model = make_model(model_name, params, n_jobs)
            model.fit(X_train, y_train)
            prob = predict_full(model, X_test, task.classes)
            pred = pd.DataFrame({"subject_id": test["subject_id"].to_numpy(), "task": task.name,
                                 "model": model_name, "y_true": y_test,
                                 "y_pred": np.asarray(task.classes)[prob.argmax(axis=1)]})
            if len(task.classes) == 2:  # binary: y_pred at the configured threshold
                pred["y_pred"] = (prob[:, 1] >= params["threshold"]).astype(int)
            for k, c in enumerate(task.classes):
                pred[f"prob_{c}"] = prob[:, k]
            predictions.append(pred)
            if model_name == "lgbm":
                imp = model.booster_.feature_importance(importance_type=params["lgbm"]["importance_type"])
            else:
                imp = model.feature_importances_
            imp_df = pd.DataFrame({"task": task.name, "model": model_name, "feature": feats,
                                   "importance": np.asarray(imp, dtype=float)})
            imp_df = imp_df.sort_values("importance", ascending=False, kind="stable")
            imp_df["rank"] = np.arange(1, len(imp_df) + 1)
            importance.append(imp_df)
            log.info("task %s, model %s: trained on %d, tested on %d subjects", task.name, model_name,
                     len(train), len(test))
    if not predictions:
        raise PipelineInputError(stage=STAGE, reason="no task could be trained (see the QC table)",
                                 hint="check the labels in the manifest and the split")
    return (pd.concat(predictions, ignore_index=True), pd.concat(importance, ignore_index=True),
            pd.DataFrame(qc, columns=["item", "kind", "reason"]))


def write_predictions(predictions: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """One prediction file per model: predictions_<model>.csv (empty prob columns dropped per task)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for model, g in predictions.groupby("model", sort=False):
        path = out_dir / f"predictions_{model}.csv"
        g.to_csv(path, index=False)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """``covidmtl classical-train``: RF and LightGBM per task; predictions, importance, Tables 3-4."""
    from covidmtl.classical.metrics import read_predictions, write_tables
    from covidmtl.tables import read_paper_values

    ap = argparse.ArgumentParser(prog="covidmtl classical-train", description=main.__doc__)
    ap.add_argument("--features", required=True, help="features table (features-merge output, .parquet/.csv)")
    ap.add_argument("--split", required=True, help="split CSV: subject_id, split (train|test)")
    ap.add_argument("--params", default=None, help="JSON of the 'classical' config section")
    ap.add_argument("--threads", type=int, default=1, help="n_jobs of the models (the rule's threads)")
    ap.add_argument("--out-dir", required=True,
                    help="writes predictions_<model>.csv, importance.csv, qc.csv, metrics.csv, table3/4.{csv,md}")
    ap.add_argument("--paper-values", default=None,
                    help="optional CSV (task, model, metric, value) of checked paper numbers for the tables")
    args = ap.parse_args(argv)
    params = parse_params(args.params)
    table = read_table_file(args.features)
    split = pd.read_csv(args.split, dtype={"subject_id": str})
    predictions, importance, qc = train_and_evaluate(table, split, params, n_jobs=max(1, args.threads))
    out_dir = Path(args.out_dir)
    pred_paths = write_predictions(predictions, out_dir)
    importance.to_csv(out_dir / "importance.csv", index=False)
    qc.to_csv(out_dir / "qc.csv", index=False)
    write_tables(read_predictions(pred_paths), out_dir, read_paper_values(args.paper_values), params["threshold"])
    log.info("classical models: %d prediction file(s), tables in %s", len(pred_paths), out_dir)
    return 0


def tables_main(argv: list[str] | None = None) -> int:
    """``covidmtl classical-tables``: Tables 3-4 (+ metrics.csv) from any prediction files."""
    from covidmtl.classical.metrics import read_predictions, write_tables
    from covidmtl.tables import read_paper_values

    ap = argparse.ArgumentParser(prog="covidmtl classical-tables", description=tables_main.__doc__)
    ap.add_argument("--predictions", nargs="+", required=True, help="prediction CSVs (classical and deep models)")
    ap.add_argument("--out-dir", required=True, help="writes metrics.csv and table3/4.{csv,md}")
    ap.add_argument("--paper-values", default=None, help="optional CSV (task, model, metric, value)")
    ap.add_argument("--threshold", type=float, default=DEFAULT_PARAMS["threshold"],
                    help="binary decision threshold on prob_1 (classical.threshold)")
    args = ap.parse_args(argv)
    write_tables(read_predictions(args.predictions), args.out_dir, read_paper_values(args.paper_values),
                 args.threshold)
    return 0
