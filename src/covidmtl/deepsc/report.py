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
of them; built in is only the inference time of 2.2 s per scan (GPU) of the full model.
``--paper-values`` adds checked numbers from a CSV (columns ``model, metric, value``; model
= variant name, metric = a column key of ``metrics_deepsc.csv`` such as ``accuracy``,
``auc``, ``dsc``, ``nsd``, ``inference_seconds``).
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
from covidmtl.tables import write_table

log = logging.getLogger(__name__)

PAPER_VALUES = pd.DataFrame([("deepsc", "inference_seconds", 2.2)], columns=["model", "metric", "value"])

TABLE2_RUNS = ["deepsc", "seg_only", "cls_only", "no_inception", "no_cross_stitch", "resnet50_cls", "unet3d_seg"]
TABLE3_RUNS = [("lambda_ta_0", "w/o task-aware loss (lambda_ta = 0)"), ("single_scale_ta", "single-scale task-aware loss"),
               ("multi_scale_ta", "multi-scale task-aware loss")]
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


def _paper(paper: pd.DataFrame, model: str, metric: str):
    hit = paper[(paper["model"] == model) & (paper["metric"] == metric)]
    return float(hit["value"].iloc[0]) if len(hit) else None


def build_table(summary: pd.DataFrame, rows: list[tuple[str, str]], paper: pd.DataFrame, digits: int = 3
                ) -> pd.DataFrame:
    out = []
    by_variant = summary.set_index("variant") if not summary.empty else pd.DataFrame()
    for variant, label in rows:
        if variant not in by_variant.index:
            continue
        s = by_variant.loc[variant]
        row = {"Model": label, "Variant": variant}
        for key, title in COLUMNS:
            v = s.get(key)
            row[title] = None if v is None or pd.isna(v) else round(float(v), digits)
            row[f"{title} (paper)"] = _paper(paper, variant, key)
        row["Inference device"] = s.get("device")
        row["n test"] = int(s["n_test"]) if pd.notna(s.get("n_test")) else None
        out.append(row)
    table = pd.DataFrame(out)
    return table.astype(object).where(table.notna(), None) if not table.empty else table


def table3_rows(runs: dict[str, dict]) -> list[tuple[str, str]]:
    rows = list(TABLE3_RUNS)
    # The full model stands in for the multi-scale row when that variant was not run separately.
    if "multi_scale_ta" not in runs and runs.get("deepsc", {}).get("metrics", {}).get("task_aware_scales") == "multi":
        rows[2] = ("deepsc", "multi-scale task-aware loss (full model)")
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
                    help="CSV (model, metric, value) of checked paper numbers, added to the built-in ones")
    args = ap.parse_args(argv)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(args.run_dirs)
    paper = PAPER_VALUES
    if args.paper_values:
        extra = pd.read_csv(args.paper_values, dtype={"model": str, "metric": str})
        missing = {"model", "metric", "value"} - set(extra.columns)
        if missing:
            raise ValueError(f"{args.paper_values}: paper-values file lacks columns {sorted(missing)}")
        paper = pd.concat([extra, paper], ignore_index=True).drop_duplicates(["model", "metric"], keep="first")

    variants = _ordered(runs)
    summary = pd.DataFrame([summary_row(v, runs[v]) for v in variants])
    summary.to_csv(out / "metrics_deepsc.csv", index=False)
    labels = {v: runs[v]["metrics"].get("label", v) for v in variants}
    t2 = build_table(summary, [(v, VARIANTS[v].label) for v in TABLE2_RUNS], paper)
    t3 = build_table(summary, table3_rows(runs), paper)
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
