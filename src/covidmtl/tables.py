"""Writing result tables as CSV (machine-readable) and Markdown (for the README/report)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def write_table(df: pd.DataFrame, stem: str | Path, index: bool = False, floatfmt: str = ".3f") -> tuple[Path, Path]:
    """Write ``<stem>.csv`` and ``<stem>.md``; returns both paths."""
    stem = Path(stem)
    if stem.suffix in {".csv", ".md"}:
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    df.to_csv(csv_path, index=index)
    # A missing value (e.g. a paper column's empty cell) is a blank cell, not "nan":
    # tabulate blanks only None, so NaN/NA become None in an object copy first.
    shown = df.astype(object).where(df.notna(), None)
    md_path.write_text(shown.to_markdown(index=index, floatfmt=floatfmt, missingval="") + "\n", encoding="utf-8")
    return csv_path, md_path


# config/paper_values.csv: the papers' own numbers, each with its source; the "(paper)"
# columns of every stage's tables come from it and nowhere else.
PAPER_COLUMNS = ["task", "model", "metric", "value"]


def read_paper_values(path: str | Path | None) -> pd.DataFrame:
    """Rows of a paper-values CSV (task, model, metric, value[, source]); empty without a file.

    No numbers are built in: a value goes into a table only when someone has checked it
    against the paper and put it in this file.
    """
    if path is None:
        return pd.DataFrame(columns=PAPER_COLUMNS)
    df = pd.read_csv(path, dtype={"task": str, "model": str, "metric": str})
    missing = set(PAPER_COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"{path}: paper-values file lacks columns {sorted(missing)} (expected task, model, "
                         f"metric, value[, source])")
    return df


def paper_value(paper: pd.DataFrame, task: str, model: str, metric: str) -> float:
    """The paper's number for (task, model, metric); NaN (a blank cell) when it has none."""
    hit = paper[(paper["task"] == task) & (paper["model"] == model) & (paper["metric"] == metric)]
    return float(hit["value"].iloc[0]) if len(hit) else float("nan")


def mean_sd(values: pd.Series, digits: int = 1) -> str:
    """Format as 'mean ± sd' the way the papers' tables do; '-' for an empty group."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"
