"""``covidmtl deep-report``: deep rows of COVID-MTL Tables 3 and 4, Figures 4, 9 and 10.

    covidmtl deep-report --run-dirs results/deep/* --out-dir results/deep/report

Reads each run folder's ``predictions.csv``, ``history.csv`` and ``metrics.json`` (written
by ``covidmtl deep-train``); runs that are missing are left out of the tables and shown
as "not run" in the figures. Writes ``table3_deep.{csv,md}`` (CT, NAT: precision, recall,
F1, accuracy, AUC), ``table4_deep.{csv,md}`` (severity: one-vs-rest AUC per class,
mean ± sd, macro precision/recall/F1, accuracy), ``metrics_deep.csv`` and the figures
``figure4_shift3d``, ``figure9_losses``, ``figure10_transfer`` (PNG + PDF).

Paper values stand in "(paper)" columns beside the reproduced numbers, only where the
paper states them (abstract of COVID-MTL, arXiv 2012.05509): AUC 0.939 / 0.846 and
accuracy 90.23 % / 79.20 % for CT / NAT, severity AUC 0.800 ± 0.020 and, with transfer
learning, 0.813 ± 0.021. They are attributed to the full model (``mtl_shift_features``)
and to ``transfer_severity_shift``; they are read from ``config/paper_values.csv``
(columns task, model, metric, value, source; model = the variant name).
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from pathlib import Path

import pandas as pd

from covidmtl.classical.metrics import metrics_from_predictions, read_predictions, table3, table4
from covidmtl.deep import figures
from covidmtl.deep.variants import VARIANTS
from covidmtl import tables
from covidmtl.tables import write_table

log = logging.getLogger(__name__)

# The paper's own numbers live in one file, config/paper_values.csv, with their source.
PAPER_VALUES_CSV = Path(__file__).resolve().parents[3] / "config" / "paper_values.csv"


def read_paper_values(path: Path | None = None) -> pd.DataFrame:
    """``path`` (default config/paper_values.csv) read by :func:`covidmtl.tables.read_paper_values`."""
    path = Path(path) if path else PAPER_VALUES_CSV
    if not path.is_file():
        log.warning("no paper values at %s: the paper columns stay empty", path)
        return tables.read_paper_values(None)
    return tables.read_paper_values(path)[tables.PAPER_COLUMNS]


ARCH_LABELS = {"resnet3d": "ResNet3D-34", "squeezenet3d": "SqueezeNet3D", "shiftnet3d": "ShiftNet3D"}


def table_label(variant: str) -> str:
    spec = VARIANTS.get(variant)
    if spec is None:
        return variant
    return ARCH_LABELS.get(spec.architecture, spec.label)


def load_runs(run_dirs: list[Path]) -> dict[str, dict]:
    """variant -> {"dir", "metrics", "history", "predictions"} for every complete run folder."""
    runs: dict[str, dict] = {}
    for d in run_dirs:
        d = Path(d)
        mpath, hpath, ppath = d / "metrics.json", d / "history.csv", d / "predictions.csv"
        if not (mpath.is_file() and ppath.is_file()):
            log.warning("%s: no metrics.json/predictions.csv (run not finished?); left out", d)
            continue
        metrics = json.loads(mpath.read_text(encoding="utf-8"))
        variant = metrics["variant"]
        if variant in runs:
            raise ValueError(f"variant {variant} appears twice ({runs[variant]['dir']} and {d})")
        runs[variant] = {"dir": d, "metrics": metrics, "predictions": ppath,
                         "history": pd.read_csv(hpath) if hpath.is_file() else None}
    return runs


def _ordered(runs: dict[str, dict]) -> list[str]:
    order = list(VARIANTS)
    return sorted(runs, key=lambda v: order.index(v) if v in order else len(order))


def build_tables(runs: dict[str, dict], paper: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    variants = _ordered(runs)
    if not variants:
        empty = pd.DataFrame()
        return empty, empty, empty
    pred = read_predictions([runs[v]["predictions"] for v in variants])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = metrics_from_predictions(pred)
    metrics["order"] = metrics["model"].map({v: i for i, v in enumerate(variants)})
    metrics = metrics.sort_values(["task", "order"], kind="stable").drop(columns="order")
    # Tables show readable model names and keep the variant id beside them.
    labelled = metrics.copy()
    labelled["model"] = [f"{table_label(v)}||{v}" for v in metrics["model"]]
    paper = paper.copy()
    paper["model"] = [f"{table_label(v)}||{v}" for v in paper["model"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        t3 = table3(labelled, paper)
        t4 = table4(labelled, paper)
    for t in (t3, t4):
        if not t.empty:
            split = t["Model"].str.split(r"\|\|", n=1, expand=True, regex=True)
            t["Model"] = split[0]
            t.insert(t.columns.get_loc("Model") + 1, "Variant", split[1])
    return metrics, t3, t4


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="covidmtl deep-report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dirs", type=Path, nargs="+", required=True, help="deep-train output folders")
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--figures-dir", type=Path, default=None, help="where Figures 4, 9, 10 go (default: --out-dir)")
    ap.add_argument("--paper-values", type=Path, default=None,
                    help="CSV (task, model, metric, value[, source]); default config/paper_values.csv")
    args = ap.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    figures_dir = args.figures_dir or args.out_dir
    figures_dir.mkdir(parents=True, exist_ok=True)
    runs = load_runs(args.run_dirs)
    paper = read_paper_values(args.paper_values)
    metrics, t3, t4 = build_tables(runs, paper)
    metrics.to_csv(args.out_dir / "metrics_deep.csv", index=False)
    write_table(t3 if not t3.empty else pd.DataFrame({"note": ["no diagnosis-task runs"]}), args.out_dir / "table3_deep")
    write_table(t4 if not t4.empty else pd.DataFrame({"note": ["no severity runs"]}), args.out_dir / "table4_deep")
    histories = {v: r["history"] for v, r in runs.items() if r["history"] is not None}
    losses = {v: r["metrics"].get("loss") for v, r in runs.items()}
    figures.figure4_shift3d(histories, figures_dir / "figure4_shift3d")
    figures.figure9_losses(histories, losses, figures_dir / "figure9_losses")
    figures.figure10_transfer(histories, figures_dir / "figure10_transfer")
    log.info("deep report: %d run(s) -> %s", len(runs), args.out_dir)
    return 0
