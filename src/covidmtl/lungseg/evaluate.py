"""COVID-MTL Table 2: lung segmentation quality of the classical and the refined method.

Rows: method, for all subjects with ground truth and (given the manifest) per diagnosis;
columns: mean ± sd over subjects of Dice, Jaccard, MCC and precision (section 4.1
definitions, see :mod:`covidmtl.lungseg.metrics`), the number of subjects, the paired
refined - classical Dice difference with its Wilcoxon signed-rank p-value, and a separate,
labelled column with the Dice the paper reports.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from covidmtl.lungseg.metrics import METRIC_NAMES
from covidmtl.lungseg.pipeline import METHODS
from covidmtl.tables import mean_sd, write_table

log = logging.getLogger(__name__)

PAPER_DICE = {"classical": 0.971, "refined": 0.982}
"""COVID-MTL Table 2, Dice of the threshold-based and the active-contour-refined lung
segmentation (the only values the paper reports); shown beside, never mixed with, ours."""
PAPER_COLUMN = "Dice reported in COVID-MTL (paper)"
METHOD_NAMES = {"classical": "classical (threshold, DSB 2017)", "refined": "refined (active contour, Algorithm 1)"}
METRIC_LABELS = {"dice": "Dice", "jaccard": "Jaccard", "mcc": "MCC", "precision": "Precision"}
PAIRED_COLUMN = "Dice refined - classical (mean, Wilcoxon p)"
ALL_SUBJECTS = "all"


def per_subject_metrics(metrics_paths: list[str | Path]) -> pd.DataFrame:
    """Long table: one row per subject and method with the metrics (subjects without
    ground truth are left out)."""
    rows = []
    for path in metrics_paths:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        for method in METHODS:
            metrics = (record.get(method) or {}).get("metrics")
            if not metrics:
                continue
            rows.append({"subject": record["subject"], "method": method,
                         **{name: metrics.get(name) for name in METRIC_NAMES},
                         "lung_volume_ml": record[method]["lung_volume_ml"]})
    columns = ["subject", "method", *METRIC_NAMES, "lung_volume_ml"]
    return pd.DataFrame(rows, columns=columns)


def paired_dice_difference(per_subject: pd.DataFrame) -> str:
    """Mean refined - classical Dice over the subjects with both, and the two-sided Wilcoxon
    signed-rank p-value of the paired differences ('-' with fewer than two subjects)."""
    dice = per_subject.pivot_table(index="subject", columns="method", values="dice").dropna()
    if not {"classical", "refined"} <= set(dice.columns) or len(dice) < 2:
        return "-"
    diff = dice["refined"] - dice["classical"]
    if np.allclose(diff, 0.0):
        return f"{diff.mean():+.4f} (identical)"
    return f"{diff.mean():+.4f} (p = {wilcoxon(diff).pvalue:.2g})"


def table2(per_subject: pd.DataFrame, groups: pd.Series | None = None, digits: int = 3) -> pd.DataFrame:
    """Table 2 rows for all subjects, then for each value of ``groups`` (subject -> group,
    e.g. diagnosis) when given."""
    blocks = [(ALL_SUBJECTS, per_subject)]
    if groups is not None and not per_subject.empty:
        group_of = per_subject["subject"].map(groups).fillna("unknown")
        blocks += [(str(name), part) for name, part in per_subject.groupby(group_of, sort=True)]
    rows = []
    for block_name, block in blocks:
        paired = paired_dice_difference(block)
        for method in METHODS:
            group = block[block["method"] == method]
            row = {"Subjects": block_name, "Method": METHOD_NAMES[method], "n subjects": int(group["subject"].nunique())}
            for name in METRIC_NAMES:
                row[f"{METRIC_LABELS[name]} (mean ± sd)"] = mean_sd(group[name], digits=digits)
            row[PAIRED_COLUMN] = paired if method == "refined" else ""
            row[PAPER_COLUMN] = f"{PAPER_DICE[method]:.3f}" if block_name == ALL_SUBJECTS else ""
            rows.append(row)
    return pd.DataFrame(rows)


def write_table2(metrics_paths: list[str | Path], out_stem: str | Path, manifest: str | Path | None = None) -> pd.DataFrame:
    """Write ``<stem>.csv``/``.md`` (Table 2) and ``<stem>_per_subject.csv``; with the
    manifest, rows per diagnosis follow the rows over all subjects."""
    per_subject = per_subject_metrics(metrics_paths)
    if per_subject.empty:
        log.warning("no subject has a ground-truth lung mask: Table 2 has no reproduced values")
    groups = None
    if manifest is not None:
        cohort = pd.read_csv(manifest, usecols=["subject_id", "diagnosis3"], dtype=str)
        groups = cohort.set_index("subject_id")["diagnosis3"]
    table = table2(per_subject, groups)
    if groups is not None:
        per_subject.insert(1, "diagnosis3", per_subject["subject"].map(groups))
    write_table(table, out_stem)
    out_stem = Path(out_stem)
    if out_stem.suffix in {".csv", ".md"}:
        out_stem = out_stem.with_suffix("")
    per_subject.to_csv(out_stem.parent / f"{out_stem.name}_per_subject.csv", index=False)
    return table
