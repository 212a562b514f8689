"""``covidmtl twod-report-amyar`` and ``covidmtl twod-report-mga``: tables and figures of the
2D models from twod-train run folders (missing or unfinished runs are left out).

    covidmtl twod-report-amyar --run-dirs results/twod/runs/* --out-dir results/twod/report_amyar
    covidmtl twod-report-mga   --run-dirs results/twod/runs/* --out-dir results/twod/report_mga

Amyar (Comput Biol Med 2020), for the binary (COVID vs non-COVID) and the 3-class (COVID /
normal / CAP) versions:

- ``table2_segmentation``: Dice (mean over test slices with lesion), IoU, pooled Dice of
  the U-Net baseline trained with Amyar's recipe (``unet_seg_amyar``) and every Amyar variant
  with segmentation;
- ``table3_classification``: accuracy, sensitivity, specificity, AUC (slices; AUC per patient
  beside) of the 8-layer CNN and every Amyar variant with classification (tasks, 256/512);
- ``figure6_learning_curves`` (three-task models), ``figure7_segmentation``,
  ``figure8_roc_binary``, ``figure9_roc_3class``, ``figure10_confusion``.

MGA (IISE Trans Healthc Syst Eng 2023):

- ``table3_segmentation``: IoU, Dice, precision, recall of the multi-scale attention
  segmenter, U-Net and SegNet; ``figure_segmentation``;
- ``table4_classifiers``: recall, precision, F1, accuracy, AUC and training time per
  mini-batch (and relative to ResNet18) of ResNet18, ResNet18 + CBAM, ResNet50, DenseNet121, MGA;
- ``table5_mga_stage``: MGA at residual stage 1, 2, 3;
- ``size_sweep`` table and ``figure_size_sweep``: models trained on fractions of the training
  set (``twod-train --train-fraction``; MGA section 6.3).

Every table is CSV + Markdown. Paper numbers stand in "(paper)" columns only when given in
the checked paper-values CSV (``--paper-values config/paper_values.csv``, the file of the
other stages: columns ``task, model, metric, value[, source]``); none are built in. The 2D
tables read the rows whose ``task`` is one of :data:`PAPER_TASKS`:

==================  =============================================  ===================================
task                table                                          metrics
==================  =============================================  ===================================
``amyar_seg``       Amyar Table 2 (lesion segmentation)            dice, iou
``amyar_binary``    Amyar Table 3, COVID vs non-COVID rows         accuracy, sensitivity, specificity, auc
``amyar_3class``    Amyar Table 3, COVID / normal / CAP rows       accuracy, sensitivity, specificity, auc
``mga_seg``         MGA Table 3 (lesion segmentation)              iou, dice, precision, recall
``mga_cls``         MGA Table 4 (classifiers)                      recall, precision, f1, accuracy, auc,
                                                                   sec_per_batch
``mga_stage``       MGA Table 5 (MGA at residual stage 1, 2, 3)    as mga_cls
==================  =============================================  ===================================

``model`` is the variant name of the table's Variant column (e.g. ``amyar_mtl_binary``,
``unet_seg_amyar``, ``mga``; Table 5: ``mga_stage1`` .. ``mga_stage3``). A missing row or an
empty value gives an empty cell.

MGA Table 5's row for the stage of ``twod.mga.attention_stage`` comes from the ``mga`` run
(the same model), which the workflow therefore does not train a second time.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from covidmtl.tables import paper_value, read_paper_values, write_table
from covidmtl.twod import figures
from covidmtl.twod.data import CLASS_NAMES
from covidmtl.twod.variants import VARIANTS

log = logging.getLogger(__name__)

CLASS_LABELS = {"binary": "binary", "3class": "3-class", None: "-"}
# paper-values task of each 2D table (module docstring)
PAPER_TASKS = {"amyar_table2": "amyar_seg", "amyar_table3": {"binary": "amyar_binary", "3class": "amyar_3class"},
               "mga_table3": "mga_seg", "mga_table4": "mga_cls", "mga_table5": "mga_stage"}


# --------------------------------------------------------------------------- runs


def load_runs(run_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """Finished run folders (with metrics.json); others are left out with a warning."""
    runs = []
    for d in run_dirs:
        d = Path(d)
        mpath = d / "metrics.json"
        if not mpath.is_file():
            log.warning("%s: no metrics.json (run missing or unfinished); left out", d)
            continue
        metrics = json.loads(mpath.read_text(encoding="utf-8"))
        run: dict[str, Any] = {"dir": d, "metrics": metrics, "variant": metrics["variant"],
                               "fraction": float(metrics.get("train_fraction") or 1.0)}
        run["history"] = pd.read_csv(d / "history.csv") if (d / "history.csv").is_file() else None
        pred_path = d / "predictions.csv"
        pred = pd.read_csv(pred_path, dtype={"slice_id": str, "subject_id": str}) if pred_path.is_file() else None
        run["predictions"] = pred if pred is not None and len(pred) else None
        ex = d / "seg_examples.npz"
        if ex.is_file():
            with np.load(ex, allow_pickle=False) as z:
                run["examples"] = {k: z[k] for k in z.files}
        else:
            run["examples"] = None
        runs.append(run)
    return runs


def full_runs(runs: list[dict]) -> dict[str, dict]:
    """variant -> its run on the whole training set (the tables' rows)."""
    out: dict[str, dict] = {}
    for r in runs:
        if r["fraction"] < 1:
            continue
        if r["variant"] in out:
            log.warning("variant %s appears twice (%s and %s); the first is used", r["variant"],
                        out[r["variant"]]["dir"], r["dir"])
            continue
        out[r["variant"]] = r
    return out


def load_paper_values(path: Path | None) -> pd.DataFrame:
    """Rows of the paper-values CSV (:func:`covidmtl.tables.read_paper_values`); an empty or
    non-numeric value is an empty cell, never 'nan' text."""
    df = read_paper_values(path)
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    return df


def _num(d: dict | None, key: str) -> float:
    v = (d or {}).get(key)
    return float("nan") if v is None else float(v)


def _label(variant: str) -> str:
    spec = VARIANTS.get(variant)
    return spec.label if spec else variant


def _write(df: pd.DataFrame, stem: Path, note: str) -> None:
    """CSV + Markdown; paper columns stay empty where no checked value was given."""
    df = df.copy()
    for col in [c for c in df.columns if "(paper)" in c]:
        df[col] = df[col].astype(object).where(df[col].notna(), "")
    write_table(df if not df.empty else pd.DataFrame({"note": [note]}), stem)


# --------------------------------------------------------------------------- Amyar


def amyar_seg_order() -> list[str]:
    return ["unet_seg_amyar", "amyar_seg_rec", "amyar_cls_seg_binary", "amyar_cls_seg_3class", "amyar_mtl_binary",
            "amyar_mtl_3class", "amyar_mtl_binary_512", "amyar_mtl_3class_512"]


def amyar_cls_order(task: str) -> list[str]:
    return [f"cnn8_{task}", f"amyar_cls_{task}", f"amyar_cls_rec_{task}", f"amyar_cls_seg_{task}",
            f"amyar_mtl_{task}", f"amyar_mtl_{task}_512"]


def segmentation_table(runs: dict[str, dict], order: Sequence[str], paper: pd.DataFrame, task: str,
                       metrics: Sequence[str], digits: int = 3) -> pd.DataFrame:
    rows = []
    for v in order:
        if v not in runs or "segmentation" not in runs[v]["metrics"]:
            continue
        m = runs[v]["metrics"]
        s = m["segmentation"]
        row = {"Model": _label(v), "Variant": v, "Tasks": " + ".join(m["tasks"]),
               "Classes": CLASS_LABELS.get(m.get("task"), "-"), "Input": m["input_size"]}
        for metric in metrics:
            name = "IoU" if metric == "iou" else metric.capitalize()
            row[name] = round(_num(s, metric), digits)
            row[f"{name} (paper)"] = paper_value(paper, task, v, metric)
        row["Dice (pooled)"] = round(_num(s, "dice_pooled"), digits)
        row["Lesion slices"] = s.get("n_lesion_slices")
        rows.append(row)
    return pd.DataFrame(rows)


def amyar_classification_table(runs: dict[str, dict], paper: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    rows = []
    for task in ("binary", "3class"):
        for v in amyar_cls_order(task):
            if v not in runs or "classification" not in runs[v]["metrics"]:
                continue
            m = runs[v]["metrics"]
            c = m["classification"]
            row = {"Classes": CLASS_LABELS[task], "Model": _label(v), "Variant": v, "Tasks": " + ".join(m["tasks"]),
                   "Input": m["input_size"]}
            for metric in ("accuracy", "sensitivity", "specificity", "auc"):
                name = "AUC" if metric == "auc" else metric.capitalize()
                row[name] = round(_num(c, metric), digits)
                row[f"{name} (paper)"] = paper_value(paper, PAPER_TASKS["amyar_table3"][task], v, metric)
            row["AUC (per patient)"] = round(_num(m.get("classification_patient"), "auc"), digits)
            row["Test slices"] = c.get("n")
            rows.append(row)
    return pd.DataFrame(rows)


def amyar_report(runs: list[dict], out_dir: Path, paper: pd.DataFrame) -> None:
    full = full_runs(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write(segmentation_table(full, amyar_seg_order(), paper, PAPER_TASKS["amyar_table2"], ["dice", "iou"]),
           out_dir / "table2_segmentation", "no segmentation runs")
    _write(amyar_classification_table(full, paper), out_dir / "table3_classification", "no classification runs")
    curves = {_label(v) + f" ({CLASS_LABELS[VARIANTS[v].task]})": full[v]["history"]
              for v in ("amyar_mtl_binary", "amyar_mtl_3class") if v in full}
    figures.learning_curves(curves, out_dir / "figure6_learning_curves",
                            "Figure 6: learning curves of the three-task model (training vs validation)")
    figures.segmentation_examples({_label(v): full[v]["examples"] for v in amyar_seg_order() if v in full},
                                  out_dir / "figure7_segmentation", "Figure 7: lesion segmentation on test slices")
    figures.roc_binary({_label(v): full[v]["predictions"] for v in amyar_cls_order("binary")
                        if v in full and full[v]["predictions"] is not None},
                       out_dir / "figure8_roc_binary", "Figure 8: ROC, COVID-19 vs non-COVID (test slices)")
    figures.roc_multiclass({_label(v): full[v]["predictions"] for v in amyar_cls_order("3class")
                            if v in full and full[v]["predictions"] is not None}, CLASS_NAMES["3class"],
                           out_dir / "figure9_roc_3class", "Figure 9: ROC, COVID-19 / normal / CAP (one vs rest)")
    panels = {f"{_label(v)} ({CLASS_LABELS[t]})": (full[v]["predictions"], CLASS_NAMES[t])
              for v, t in (("amyar_mtl_binary", "binary"), ("amyar_mtl_3class", "3class"))
              if v in full and full[v]["predictions"] is not None}
    figures.confusion_matrices(panels, out_dir / "figure10_confusion", "Figure 10: confusion matrices (test slices)")
    log.info("Amyar report: %d run(s) -> %s", len(full), out_dir)


# --------------------------------------------------------------------------- MGA

MGA_SEG = ["mga_seg_hmsa", "unet_seg", "segnet_seg"]
MGA_CLS = ["resnet18", "resnet18_cbam", "resnet50", "densenet121", "mga"]
MGA_STAGES = ["mga_stage1", "mga_stage2", "mga_stage3"]
CLS_METRICS = ("recall", "precision", "f1", "accuracy", "auc")


def classifier_table(runs: dict[str, dict], order: Sequence[str], paper: pd.DataFrame, task: str,
                     digits: int = 3) -> pd.DataFrame:
    """One row per variant of ``order`` that ran; Variant names the run the numbers come from."""
    base = runs.get("resnet18", {}).get("metrics", {}).get("sec_per_batch")
    rows = []
    for v in order:
        if v not in runs or "classification" not in runs[v]["metrics"]:
            continue
        m = runs[v]["metrics"]
        c = m["classification"]
        row = {"Model": _label(v), "Variant": m.get("variant", v), "Classes": CLASS_LABELS.get(m.get("task"), "-"),
               "MGA stage": m.get("mga_stage") or "-"}
        for metric in CLS_METRICS:
            name = {"f1": "F1", "auc": "AUC"}.get(metric, metric.capitalize())
            row[name] = round(_num(c, metric), digits)
            row[f"{name} (paper)"] = paper_value(paper, task, v, metric)
        spb = m.get("sec_per_batch")
        row["Time per mini-batch (s)"] = round(spb, 4) if spb is not None else float("nan")
        row["Time per mini-batch (paper)"] = paper_value(paper, task, v, "sec_per_batch")
        row["Time vs ResNet18"] = round(spb / base, 2) if spb and base else float("nan")
        row["Batch"] = m.get("batch_size")
        row["Test slices"] = c.get("n")
        rows.append(row)
    return pd.DataFrame(rows)


def size_sweep_table(runs: list[dict]) -> pd.DataFrame:
    """Runs of the variants that have at least one reduced-training-set run, with their full runs."""
    swept = {r["variant"] for r in runs if r["fraction"] < 1}
    rows = []
    for r in runs:
        if r["variant"] not in swept or "classification" not in r["metrics"]:
            continue
        c = r["metrics"]["classification"]
        rows.append({"model": _label(r["variant"]), "variant": r["variant"], "train_fraction": r["fraction"],
                     "n_train_patients": r["metrics"]["n_patients"]["train"],
                     "n_train_slices": r["metrics"]["n_slices"]["train"],
                     **{k: _num(c, k) for k in CLS_METRICS}})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    # the sweep's 100 % point may be the main run and a sweep run: keep one
    df = df.drop_duplicates(["variant", "train_fraction"], keep="first")
    return df.sort_values(["variant", "train_fraction"]).reset_index(drop=True)


def stage_runs(full: dict[str, dict]) -> dict[str, dict]:
    """MGA Table 5's runs: mga_stage<k>, or the ``mga`` run for the stage it was trained at
    (twod.mga.attention_stage; the workflow does not train that stage twice)."""
    out = {v: full[v] for v in MGA_STAGES if v in full}
    mga = full.get("mga")
    if mga is not None and mga["metrics"].get("mga_stage") in (1, 2, 3):
        out.setdefault(f"mga_stage{mga['metrics']['mga_stage']}", mga)
    return out


def mga_report(runs: list[dict], out_dir: Path, paper: pd.DataFrame) -> None:
    full = full_runs(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write(segmentation_table(full, MGA_SEG, paper, PAPER_TASKS["mga_table3"], ["iou", "dice", "precision", "recall"]),
           out_dir / "table3_segmentation", "no segmentation runs")
    _write(classifier_table(full, MGA_CLS, paper, PAPER_TASKS["mga_table4"]), out_dir / "table4_classifiers",
           "no classifier runs")
    _write(classifier_table({**full, **stage_runs(full)}, MGA_STAGES, paper, PAPER_TASKS["mga_table5"]),
           out_dir / "table5_mga_stage", "no MGA stage runs")
    sweep = size_sweep_table(runs)
    _write(sweep, out_dir / "size_sweep", "no runs with --train-fraction < 1")
    figures.size_sweep(sweep, out_dir / "figure_size_sweep",
                       "Training-set size: single-task vs mask-guided attention (test slices)")
    figures.segmentation_examples({_label(v): full[v]["examples"] for v in MGA_SEG if v in full},
                                  out_dir / "figure_segmentation", "Lesion segmentation on test slices")
    log.info("MGA report: %d run(s) -> %s", len(runs), out_dir)


# --------------------------------------------------------------------------- CLI


def _parser(prog: str, what: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=f"Tables and figures of {what} from twod-train runs.")
    ap.add_argument("--run-dirs", type=Path, nargs="+", required=True, help="twod-train output folders")
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--paper-values", type=Path, default=None,
                    help="checked paper numbers (config/paper_values.csv: task, model, metric, value[, source]; "
                         "tasks in the module docstring)")
    return ap


def main_amyar(argv: list[str] | None = None) -> int:
    args = _parser("covidmtl twod-report-amyar", "Amyar et al.").parse_args(argv)
    amyar_report(load_runs(args.run_dirs), args.out_dir, load_paper_values(args.paper_values))
    return 0


def main_mga(argv: list[str] | None = None) -> int:
    args = _parser("covidmtl twod-report-mga", "the mask-guided attention paper").parse_args(argv)
    mga_report(load_runs(args.run_dirs), args.out_dir, load_paper_values(args.paper_values))
    return 0
