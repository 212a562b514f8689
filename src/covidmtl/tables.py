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


def mean_sd(values: pd.Series, digits: int = 1) -> str:
    """Format as 'mean ± sd' the way the papers' tables do; '-' for an empty group."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"
