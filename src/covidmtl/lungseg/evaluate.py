"""COVID-MTL Table 2: lung segmentation quality of the classical and the refined method.

Rows: method; columns: mean ± sd over subjects of Dice, Jaccard, MCC and precision
(section 4.1 definitions, see :mod:`covidmtl.lungseg.metrics`), the number of subjects
with ground truth, and a separate, labelled column with the Dice the paper reports.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

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


def table2(per_subject: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    rows = []
    for method in METHODS:
        group = per_subject[per_subject["method"] == method]
        row = {"Method": METHOD_NAMES[method], "n subjects": int(group["subject"].nunique())}
        for name in METRIC_NAMES:
            row[f"{METRIC_LABELS[name]} (mean ± sd)"] = mean_sd(group[name], digits=digits)
        row[PAPER_COLUMN] = f"{PAPER_DICE[method]:.3f}"
        rows.append(row)
    return pd.DataFrame(rows)


def write_table2(metrics_paths: list[str | Path], out_stem: str | Path) -> pd.DataFrame:
    """Write ``<stem>.csv``/``.md`` (Table 2) and ``<stem>_per_subject.csv``."""
    per_subject = per_subject_metrics(metrics_paths)
    if per_subject.empty:
        log.warning("no subject has a ground-truth lung mask: Table 2 has no reproduced values")
    table = table2(per_subject)
    write_table(table, out_stem)
    out_stem = Path(out_stem)
    if out_stem.suffix in {".csv", ".md"}:
        out_stem = out_stem.with_suffix("")
    per_subject.to_csv(out_stem.parent / f"{out_stem.name}_per_subject.csv", index=False)
    return table
