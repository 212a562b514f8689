"""``covidmtl deepsc-report``: DeepSC-COVID Tables II and III, Figures 7-10 from the runs.

    covidmtl deepsc-report --run-dirs results/deepsc/* --out-dir results/deepsc/report

Reads each ``deepsc-train`` output folder (``metrics.json``, ``predictions.csv``,
``segmentation.csv``, ``example.npz``); unfinished or missing runs are left out of the
tables and shown as "not run" in the figures. Writes:

- ``table2_deepsc.{csv,md}``: full model, single-task, ablations (inception, cross-stitch)
  and the baselines (3D ResNet-50, 3D U-Net): diagnosis accuracy, macro sensitivity,
  specificity, F1, AUC; whole-volume DSC, sensitivity, specificity, NSD, RMS surface
  distance; inference seconds per scan;
- ``table3_deepsc.{csv,md}``: without / single-scale / multi-scale task-aware loss;
- ``metrics_deepsc.csv``: every summary number of every run (one row per run);
- ``figure7_roc``, ``figure8_segmentation``, ``figure9_lambda_ta``, ``figure10_evidence``
  (PNG + PDF).

Paper numbers stand in "(paper)" columns beside the reproduced ones, only where we are sure
of them; a number we do not have is an empty cell. Built in is only the inference time of
2.2 s per scan (GPU) of the full model. The others come from ``--paper-values``, the
project's one file of checked paper numbers ``config/paper_values.csv`` (columns ``task,
model, metric, value, source``), whose DeepSC-COVID rows follow this convention:

- ``task``: ``deepsc_table2`` (Table II) or ``deepsc_table3`` (Table III); rows of other
  tasks belong to the other papers and are ignored here;
- ``model``: the variant name of the table row (``TABLE2_RUNS``: deepsc, seg_only,
  cls_only, no_inception, no_cross_stitch, resnet50_cls, unet3d_seg; ``TABLE3_RUNS``:
  lambda_ta_0, single_scale_ta, multi_scale_ta -- also when the full model stands in for
  a Table III row);
- ``metric``: a column key (``COLUMNS``): accuracy, sensitivity, specificity, f1, auc, dsc,
  seg_sensitivity, seg_specificity, nsd, rms_ssd_mm, inference_seconds;
- ``value`` as the paper prints it (fractions, not percent, where the column is a fraction);
  an empty value is allowed (an empty cell); ``source`` says where in the paper it stands.

A DeepSC task with an unknown model or metric, or a number given twice, is an error (a typo
would otherwise leave a cell silently empty). A file row overrides the built-in 2.2 s.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from covidmtl.deepsc import figures
from covidmtl.deepsc.metrics import roc_curves
from covidmtl.deepsc.variants import VARIANTS
from covidmtl import tables
from covidmtl.tables import PAPER_COLUMNS, write_table

log = logging.getLogger(__name__)

TABLE2_RUNS = ["deepsc", "seg_only", "cls_only", "no_inception", "no_cross_stitch", "resnet50_cls", "unet3d_seg"]
TABLE3_RUNS = [("lambda_ta_0", "w/o task-aware loss (lambda_ta = 0)"), ("single_scale_ta", "single-scale task-aware loss"),
               ("multi_scale_ta", "multi-scale task-aware loss")]
# task of config/paper_values.csv -> the variants (models) of that table
PAPER_TASKS = {"deepsc_table2": TABLE2_RUNS, "deepsc_table3": [v for v, _ in TABLE3_RUNS]}
BUILT_IN_PAPER_VALUES = pd.DataFrame([("deepsc_table2", "deepsc", "inference_seconds", 2.2)], columns=PAPER_COLUMNS)
SEG_RUNS = ["deepsc", "seg_only", "no_inception", "no_cross_stitch", "unet3d_seg"]

# (key in metrics_deepsc.csv, column title)
COLUMNS = [("accuracy", "Accuracy"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity"), ("f1", "F1"),
           ("auc", "AUC"), ("dsc", "DSC"), ("seg_sensitivity", "Seg. sensitivity"),
           ("seg_specificity", "Seg. specificity"), ("nsd", "NSD"), ("rms_ssd_mm", "RMS-SSD (mm)"),
           ("inference_seconds", "Inference (s/scan)")]


def load_runs(run_dirs: list[Path]) -> dict[str, dict]:
    """variant -> run record, for every finished run folder."""
    runs: dict[str, dict] = {}
    for d in run_dirs:
        d = Path(d)
        mpath = d / "metrics.json"
        if not mpath.is_file():
            log.warning("%s: no metrics.json (run not finished?); left out", d)
            continue
        metrics = json.loads(mpath.read_text(encoding="utf-8"))
        variant = metrics["variant"]
        if variant in runs:
            raise ValueError(f"variant {variant} appears twice ({runs[variant]['dir']} and {d})")
        record = {"dir": d, "metrics": metrics, "predictions": None, "segmentation": None, "example": None}
        if (d / "predictions.csv").is_file():
            pred = pd.read_csv(d / "predictions.csv", dtype={"subject_id": str})
            record["predictions"] = pred if len(pred) else None
        if (d / "segmentation.csv").is_file():
            seg = pd.read_csv(d / "segmentation.csv", dtype={"subject_id": str})
            record["segmentation"] = seg if len(seg) else None
        if (d / "example.npz").is_file():
            with np.load(d / "example.npz") as z:
                example = {k: z[k] for k in z.files}
            record["example"] = example if str(example.get("subject_id", "")) else None
            if record["example"] is not None:
                record["example"]["subject_id"] = str(example["subject_id"])
        runs[variant] = record
    return runs


def summary_row(variant: str, record: dict) -> dict:
    m = record["metrics"]
    cls, seg = m.get("classification") or {}, m.get("segmentation") or {}
    row = {"variant": variant, "label": m.get("label", variant), "lambda_ta": m.get("lambda_ta"),
           "task_aware_scales": m.get("task_aware_scales"), "n_train": m.get("n_train"), "n_test": m.get("n_test"),
           "device": m.get("device"), "train_seconds": m.get("train_seconds"),
           "inference_seconds": m.get("inference_seconds_per_scan"), "n_parameters": m.get("n_parameters")}
    for k in ("accuracy", "sensitivity", "specificity", "f1", "auc", "precision"):
        row[k] = cls.get(k)
    for k, v in cls.items():
        if k.startswith(("auc_", "sensitivity_", "specificity_")):
            row[k] = v
    for k in ("dsc", "nsd", "rms_ssd_mm", "n_infected", "false_positive_ml_lesion_free"):
        row[k] = seg.get(k)
    row["seg_sensitivity"], row["seg_specificity"] = seg.get("sensitivity"), seg.get("specificity")
    return row


def read_paper_values(path: Path | None) -> pd.DataFrame:
    """The DeepSC-COVID rows (task, model, metric, value) of a paper-values CSV on top of the
    built-in ones; checks them against the tables (see the module docstring)."""
    if path is None:
        return BUILT_IN_PAPER_VALUES.copy()
    table = tables.read_paper_values(path)
    table = table[table["task"].astype(str).str.startswith("deepsc")][PAPER_COLUMNS]
    try:
        table["value"] = pd.to_numeric(table["value"], errors="raise")
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: a DeepSC-COVID paper value is not a number ({err})") from err
    metrics = {key for key, _ in COLUMNS}
    problems = [f"task {t!r} (known: {', '.join(PAPER_TASKS)})" for t in sorted(set(table["task"]) - set(PAPER_TASKS))]
    for _, r in table[table["task"].isin(list(PAPER_TASKS))].iterrows():
        if r["model"] not in PAPER_TASKS[r["task"]]:
            problems.append(f"{r['task']} has no row {r['model']!r} (rows: {', '.join(PAPER_TASKS[r['task']])})")
        if r["metric"] not in metrics:
            problems.append(f"metric {r['metric']!r} (known: {', '.join(sorted(metrics))})")
    twice = table[table.duplicated(["task", "model", "metric"], keep=False)]
    if len(twice):
        problems.append("numbers given twice: " + ", ".join(sorted({"/".join(k) for k in
                                                                    twice[["task", "model", "metric"]].values})))
    if problems:
        raise ValueError(f"{path}: bad DeepSC-COVID paper values: " + "; ".join(problems))
    # The file's numbers win over the built-in ones.
    return pd.concat([table, BUILT_IN_PAPER_VALUES], ignore_index=True).drop_duplicates(
        ["task", "model", "metric"], keep="first").reset_index(drop=True)


def _paper(paper: pd.DataFrame, model: str, metric: str) -> float | None:
    hit = paper[(paper["model"] == model) & (paper["metric"] == metric)]
    if not len(hit) or pd.isna(hit["value"].iloc[0]):
        return None
    return float(hit["value"].iloc[0])


def build_table(summary: pd.DataFrame, rows: list[tuple[str, str]], paper: pd.DataFrame, digits: int = 3,
                paper_rows: list[str] | None = None) -> pd.DataFrame:
    """One row per run in ``rows`` (variant, label); ``paper`` holds this table's paper values,
    looked up by ``paper_rows[i]`` (default: the variant), the paper's row a run stands for."""
    out = []
    by_variant = summary.set_index("variant") if not summary.empty else pd.DataFrame()
    paper_rows = paper_rows or [v for v, _ in rows]
    for (variant, label), paper_row in zip(rows, paper_rows):
        if variant not in by_variant.index:
            continue
        s = by_variant.loc[variant]
        row = {"Model": label, "Variant": variant}
        for key, title in COLUMNS:
            v = s.get(key)
            row[title] = None if v is None or pd.isna(v) else round(float(v), digits)
            row[f"{title} (paper)"] = _paper(paper, paper_row, key)
        row["Inference device"] = s.get("device")
        row["n test"] = int(s["n_test"]) if pd.notna(s.get("n_test")) else None
        out.append(row)
    table = pd.DataFrame(out)
    return table.astype(object).where(table.notna(), None) if not table.empty else table


def table3_rows(runs: dict[str, dict]) -> list[tuple[str, str]]:
    """TABLE3_RUNS, the full model standing in for a row whose variant was not run because it
    equals the full model under the config (see ``variants.same_as_full_model``)."""
    full = runs.get("deepsc", {}).get("metrics", {})
    rows = []
    for variant, label in TABLE3_RUNS:
        spec = VARIANTS[variant]
        if variant not in runs and full and \
                (spec.lambda_ta is None or full.get("lambda_ta") == spec.lambda_ta) and \
                (spec.task_aware_scales is None or full.get("task_aware_scales") == spec.task_aware_scales):
            rows.append(("deepsc", f"{label} (full model)"))
        else:
            rows.append((variant, label))
    return rows


def lambda_points(runs: dict[str, dict]) -> dict[float, dict[str, float]]:
    points: dict[float, dict[str, float]] = {}
    names = [v for v in runs if v.startswith("lambda_ta_")] + ["deepsc"]
    for v in names:
        if v not in runs:
            continue
        m = runs[v]["metrics"]
        lam = m.get("lambda_ta")
        if lam is None or float(lam) in points:
            continue
        cls, seg = m.get("classification") or {}, m.get("segmentation") or {}
        points[float(lam)] = {"dsc": seg.get("dsc", np.nan), "nsd": seg.get("nsd", np.nan),
                              "accuracy": cls.get("accuracy", np.nan), "auc": cls.get("auc", np.nan)}
    return points


def _ordered(names) -> list[str]:
    order = list(VARIANTS)
    return sorted(names, key=lambda v: order.index(v) if v in order else len(order))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="covidmtl deepsc-report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dirs", type=Path, nargs="+", required=True, help="deepsc-train output folders")
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--paper-values", type=Path, default=None,
                    help="config/paper_values.csv (task, model, metric, value, source): its deepsc_table2/3 "
                         "rows fill the paper columns; without it only the built-in 2.2 s per scan")
    args = ap.parse_args(argv)
    paper = read_paper_values(args.paper_values)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(args.run_dirs)

    variants = _ordered(runs)
    summary = pd.DataFrame([summary_row(v, runs[v]) for v in variants])
    summary.to_csv(out / "metrics_deepsc.csv", index=False)
    labels = {v: runs[v]["metrics"].get("label", v) for v in variants}
    t2 = build_table(summary, [(v, VARIANTS[v].label) for v in TABLE2_RUNS], paper[paper["task"] == "deepsc_table2"])
    t3 = build_table(summary, table3_rows(runs), paper[paper["task"] == "deepsc_table3"],
                     paper_rows=[v for v, _ in TABLE3_RUNS])
    write_table(t2 if not t2.empty else pd.DataFrame({"note": ["no Table II run finished"]}), out / "table2_deepsc")
    write_table(t3 if not t3.empty else pd.DataFrame({"note": ["no Table III run finished"]}), out / "table3_deepsc")

    curves, aucs = {}, {}
    for v in variants:
        pred = runs[v]["predictions"]
        if pred is None:
            continue
        pred = pred.sort_values("subject_id")
        prob = pred[["prob_0", "prob_1", "prob_2"]].to_numpy(dtype=float)
        curves[v] = roc_curves(pred["y_true"].to_numpy(), prob)
        cls = runs[v]["metrics"].get("classification") or {}
        aucs[v] = {c: cls.get(f"auc_{c}", np.nan) for c in ("covid19", "cap", "normal")}
    figures.figure7_roc(curves, aucs, labels, out / "figure7_roc")
    examples = {v: runs[v]["example"] for v in variants if runs[v]["example"] is not None}
    figures.figure8_segmentation(examples, {v: VARIANTS[v].label if v in VARIANTS else v for v in SEG_RUNS},
                                 SEG_RUNS, out / "figure8_segmentation")
    figures.figure9_lambda(lambda_points(runs), out / "figure9_lambda_ta")
    evidence_run = next((v for v in ["deepsc", "multi_scale_ta", "lambda_ta_10", "lambda_ta_1", "lambda_ta_100",
                                     "single_scale_ta", "no_cross_stitch", "no_inception"]
                         if v in examples and "evidence_1" in examples[v]), None)
    figures.figure10_evidence(examples.get(evidence_run), labels.get(evidence_run, "DeepSC-COVID"),
                              out / "figure10_evidence")
    log.info("deepsc report: %d run(s) -> %s", len(runs), out)
    return 0
