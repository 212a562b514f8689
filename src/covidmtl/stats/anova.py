"""Feature selection and Welch's ANOVA of the lung features (COVID-MTL section 5.5, Table 5).

1. Feature selection: the ``top_k`` (10) most important features of each task's LightGBM
   model (trained on the train split by ``classical-train``), and their union.
2. Welch's ANOVA (``pingouin.welch_anova``; unequal variances) of each selected feature
   between the groups of each task: CT negative/positive, NAT negative/positive and the
   three severity groups. Table 5 lists F, df2 and p per task; features with p < alpha
   (0.001) are marked.

Subjects without a task's label are left out of that task; a task with a group of fewer
than ``min_group_size`` (2) subjects is skipped, and a feature whose Welch's F is undefined
(a group with zero variance) or that holds NaN/infinite values gets no result: each case is
listed in the QC table with the subject(s), group or feature named.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from covidmtl.classical.metrics import SEVERITY_CLASS_LABELS
from covidmtl.errors import PipelineInputError
from covidmtl.features.radiomics import feature_columns, read_table_file

log = logging.getLogger(__name__)
STAGE = "stats"

TASK_NAMES = {"ct": "CT", "nat": "NAT", "severity": "Severity"}
GROUP_LABELS: dict[str, dict[int, str]] = {
    "ct": {0: "CT negative", 1: "CT positive"},
    "nat": {0: "NAT negative", 1: "NAT positive"},
    "severity": dict(SEVERITY_CLASS_LABELS),
}

DEFAULT_PARAMS: dict[str, Any] = {
    "tasks": ["ct", "nat", "severity"],
    "top_k": 10,                  # section 5.5: top 10 LightGBM features per task
    "importance_model": "lgbm",   # section 5.5: LightGBM importance
    "alpha": 0.001,               # section 5.5 / Table 5: significance at p < 0.001
    "subset": "all",              # subjects entering the ANOVA and figures: all | train | test
    "min_group_size": 2,          # Welch's ANOVA needs a variance per group
    "n_boxplot_features": 10,     # Figure 5: up to 10 significant features
    "cluster_method": "average",  # Figure 6: hierarchical linkage (Pearson-correlation distance)
    "age_bins": [40, 60],         # Figure 6: age-group cut points in years
    "n_example_features": 10,     # Figure 8: features compared between the two cases
    "example_subjects": None,     # Figure 8: [infected_id, normal_id]; None = chosen automatically
}


def parse_params(text: str | dict | None) -> dict[str, Any]:
    """The ``stats`` config section (JSON) merged over the defaults; unknown keys are errors."""
    given = json.loads(text) if isinstance(text, str) and text else (text or {})
    unknown = set(given) - set(DEFAULT_PARAMS)
    if unknown:
        raise ValueError(f"unknown stats parameter(s) {sorted(unknown)}; known: {sorted(DEFAULT_PARAMS)}")
    params = copy.deepcopy(DEFAULT_PARAMS)
    params.update(given)
    if params["subset"] not in {"all", "train", "test"}:
        raise ValueError("stats.subset must be 'all', 'train' or 'test'")
    for task in params["tasks"]:
        if task not in GROUP_LABELS:
            raise ValueError(f"unknown task {task!r}; known: {sorted(GROUP_LABELS)}")
    return params


def _qc(item: str, kind: str, reason: str) -> dict[str, str]:
    return {"item": str(item), "kind": kind, "reason": reason}


def short_name(feature: str) -> str:
    """Readable two-line label: 'wavelet-HLL_glcm_ClusterProminence' -> 'wavelet-HLL glcm\\nClusterProminence'."""
    parts = feature.split("_", 2)
    if len(parts) != 3:
        return feature
    image_type, cls, name = parts
    return f"{image_type} {cls}\n{name}"


def select_features(importance: pd.DataFrame, top_k: int = 10, model: str = "lgbm",
                    tasks: Iterable[str] = ("ct", "nat", "severity")) -> pd.DataFrame:
    """Top ``top_k`` features per task by importance and their union.

    Returns one row per selected feature: feature, best_rank, and for each task its rank
    (NaN when not in that task's top k); ordered by best rank, then task order.
    """
    need = {"task", "model", "feature", "importance"}
    if need - set(importance.columns):
        raise ValueError(f"importance table lacks columns {sorted(need - set(importance.columns))}")
    imp = importance[importance["model"] == model]
    if imp.empty:
        raise ValueError(f"the importance table has no rows for model {model!r}")
    rows: dict[str, dict[str, Any]] = {}
    for t_index, task in enumerate(tasks):
        sub = imp[imp["task"] == task].sort_values("importance", ascending=False, kind="stable")
        if sub.empty:
            log.warning("no %s importance for task %s; it adds no features", model, task)
            continue
        for rank, feature in enumerate(sub["feature"].head(top_k), start=1):
            row = rows.setdefault(feature, {"feature": feature, "best_rank": rank, "first_task": t_index})
            row[f"rank_{task}"] = rank
            row["best_rank"] = min(row["best_rank"], rank)
    if not rows:
        raise ValueError("no features selected: the importance table holds none of the tasks")
    out = pd.DataFrame(list(rows.values())).sort_values(["best_rank", "first_task"], kind="stable")
    for task in tasks:
        if f"rank_{task}" not in out.columns:
            out[f"rank_{task}"] = np.nan
    out["selected_for"] = out.apply(
        lambda r: ", ".join(TASK_NAMES.get(t, t) for t in tasks if pd.notna(r.get(f"rank_{t}"))), axis=1)
    return out.drop(columns="first_task").reset_index(drop=True)


def welch_anova(values: Iterable[float], groups: Iterable[Any]) -> dict[str, float]:
    """Welch's ANOVA of one variable between groups (pingouin); F, df1, df2, p.

    Raises ValueError (pingouin's) when a group has < 2 values or zero variance.
    """
    import pingouin as pg

    df = pd.DataFrame({"y": np.asarray(values, dtype=float), "g": np.asarray(groups)})
    res = pg.welch_anova(data=df, dv="y", between="g")
    p_col = "p_unc" if "p_unc" in res.columns else "p-unc"
    return {"F": float(res["F"].iloc[0]), "df1": float(res["ddof1"].iloc[0]),
            "df2": float(res["ddof2"].iloc[0]), "p": float(res[p_col].iloc[0])}


def task_groups(table: pd.DataFrame, task: str, min_group_size: int = 2
                ) -> tuple[pd.Series | None, list[dict[str, str]]]:
    """Group labels of a task's subjects (index aligned with ``table``) and QC rows.

    Returns None (and the reason in QC) when the task cannot be tested.
    """
    qc: list[dict[str, str]] = []
    if task not in table.columns or table[task].isna().all():
        reason = f"Welch's ANOVA for {task} skipped: no subject has a '{task}' label"
        log.warning(reason)
        return None, [_qc(task, "task", reason)]
    labels = pd.to_numeric(table[task], errors="coerce")
    for sid in table.loc[labels.isna(), "subject_id"]:
        qc.append(_qc(sid, "subject", f"no '{task}' label; left out of the ANOVA for {task}"))
    labels = labels.dropna().astype(int)
    counts = labels.value_counts().sort_index()
    small = counts[counts < min_group_size]
    if len(counts) < 2 or len(small):
        parts = []
        for g, n in small.items():
            members = table.loc[labels.index[labels == g], "subject_id"].tolist()
            parts.append(f"group {GROUP_LABELS.get(task, {}).get(g, g)} has {n} subject(s) "
                         f"({', '.join(map(str, members))})")
        if len(counts) < 2:
            parts.append(f"only {len(counts)} group(s) present")
        reason = (f"Welch's ANOVA for {task} skipped: " + "; ".join(parts)
                  + f"; each group needs >= {min_group_size} subjects")
        log.warning(reason)
        return None, qc + [_qc(task, "task", reason)]
    return labels, qc


def anova_long(table: pd.DataFrame, features: Iterable[str], tasks: Iterable[str] = ("ct", "nat", "severity"),
               min_group_size: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Welch's ANOVA per (feature, task): long table (feature, task, F, df1, df2, p, n) and QC."""
    features = list(features)
    missing = [f for f in features if f not in table.columns]
    if missing:
        raise PipelineInputError(stage=STAGE, reason=f"selected features not in the features table: {missing[:5]}",
                                 hint="use the importance file and features table of the same run")
    rows, qc = [], []
    for task in tasks:
        groups, task_qc = task_groups(table, task, min_group_size)
        qc += task_qc
        if groups is None:
            continue
        for feature in features:
            values = pd.to_numeric(table.loc[groups.index, feature], errors="coerce").astype(float)
            bad = ~np.isfinite(values.to_numpy())
            if bad.any():
                subjects = table.loc[groups.index[bad], "subject_id"].tolist()
                qc.append(_qc(feature, "feature", f"NaN/infinite for subject(s) {', '.join(map(str, subjects[:5]))}; "
                              f"no Welch's ANOVA for {task}"))
                continue
            try:
                res = welch_anova(values.to_numpy(), groups.to_numpy())
            except ValueError as err:
                sd = values.groupby(groups).std(ddof=1)
                flat = [GROUP_LABELS[task].get(g, g) for g, s in sd.items() if not s > 0]
                qc.append(_qc(feature, "feature", f"Welch's F undefined for {task}: zero variance in group(s) "
                              f"{', '.join(map(str, flat)) or '?'} ({err})"))
                continue
            rows.append({"feature": feature, "task": task, **res, "n": int(len(values))})
    return (pd.DataFrame(rows, columns=["feature", "task", "F", "df1", "df2", "p", "n"]),
            pd.DataFrame(qc, columns=["item", "kind", "reason"]))


def table5(long: pd.DataFrame, selected: pd.DataFrame | None = None, tasks: Iterable[str] = ("ct", "nat", "severity"),
           alpha: float = 0.001) -> pd.DataFrame:
    """COVID-MTL Table 5 layout: rows = features, per task F, df2, p and a significance mark."""
    tasks = list(tasks)
    features = list(selected["feature"]) if selected is not None else list(dict.fromkeys(long["feature"]))
    out = pd.DataFrame({"Feature": features})
    if selected is not None:
        out["Selected for"] = list(selected["selected_for"])
    sig_tasks = [[] for _ in features]
    for task in tasks:
        name = TASK_NAMES.get(task, task)
        sub = long[long["task"] == task].set_index("feature")
        out[f"{name} F"] = [sub["F"].get(f, np.nan) for f in features]
        out[f"{name} df2"] = [sub["df2"].get(f, np.nan) for f in features]
        p = [sub["p"].get(f, np.nan) for f in features]
        out[f"{name} p"] = p
        out[f"{name} p < {alpha:g}"] = ["*" if (isinstance(v, float) and v < alpha) else "" for v in p]
        for i, v in enumerate(p):
            if isinstance(v, float) and v < alpha:
                sig_tasks[i].append(name)
    out[f"Significant (p < {alpha:g})"] = [", ".join(s) for s in sig_tasks]
    return out


def analysis_subset(table: pd.DataFrame, split: pd.DataFrame | None, subset: str) -> pd.DataFrame:
    """Subjects entering the ANOVA and figures (all, or one split)."""
    if subset == "all":
        return table.reset_index(drop=True)
    if split is None:
        raise ValueError(f"stats.subset={subset!r} needs --split")
    ids = set(split.loc[split["split"] == subset, "subject_id"].astype(str))
    return table[table["subject_id"].astype(str).isin(ids)].reset_index(drop=True)


def significant_features(long: pd.DataFrame, alpha: float, n: int, order: Iterable[str]) -> list[str]:
    """Up to n features significant (p < alpha) in the most tasks, ties by mean -log10 p, then ``order``."""
    if long.empty:
        return []
    order = {f: i for i, f in enumerate(order)}
    d = long.assign(sig=long["p"] < alpha, logp=-np.log10(np.clip(long["p"], 1e-300, 1)))
    agg = d.groupby("feature").agg(n_sig=("sig", "sum"), logp=("logp", "mean")).reset_index()
    agg = agg[agg["n_sig"] > 0]
    agg["order"] = agg["feature"].map(order).fillna(len(order))
    agg = agg.sort_values(["n_sig", "logp", "order"], ascending=[False, False, True], kind="stable")
    return agg["feature"].head(n).tolist()


def main(argv: list[str] | None = None) -> int:
    """``covidmtl stats-anova``: feature selection, Welch's ANOVA (Table 5), Figures 5, 6 and 8."""
    from covidmtl.stats.figures import figure5_boxplots, figure6_clustermap, figure8_case_comparison
    from covidmtl.tables import write_table

    ap = argparse.ArgumentParser(prog="covidmtl stats-anova", description=main.__doc__)
    ap.add_argument("--features", required=True, help="features table with labels (features-merge output)")
    ap.add_argument("--importance", required=True, help="importance.csv from classical-train")
    ap.add_argument("--split", default=None, help="split CSV (needed when stats.subset is train or test)")
    ap.add_argument("--params", default=None, help="JSON of the 'stats' config section")
    ap.add_argument("--out-dir", required=True,
                    help="writes table5.{csv,md}, anova_long.csv, selected_features.csv, qc.csv")
    ap.add_argument("--figures-dir", default=None, help="figure5/6/8 .png+.pdf (default: --out-dir)")
    ap.add_argument("--tables-dir", default=None, help="table5.{csv,md} (default: --out-dir)")
    args = ap.parse_args(argv)
    params = parse_params(args.params)
    out_dir = Path(args.out_dir)
    fig_dir = Path(args.figures_dir) if args.figures_dir else out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    table = read_table_file(args.features)
    table["subject_id"] = table["subject_id"].astype(str)
    split = pd.read_csv(args.split, dtype={"subject_id": str}) if args.split else None
    table = analysis_subset(table, split, params["subset"])
    importance = pd.read_csv(args.importance)
    known = set(feature_columns(table))
    qc = [_qc(f, "feature", "in the importance file but not in the features table; not selectable")
          for f in sorted(set(importance["feature"]) - known)]
    importance = importance[importance["feature"].isin(known)]
    tasks = list(params["tasks"])
    selected = select_features(importance, params["top_k"], params["importance_model"], tasks)
    selected.to_csv(out_dir / "selected_features.csv", index=False)

    long, anova_qc = anova_long(table, selected["feature"], tasks, params["min_group_size"])
    if long.empty:
        raise PipelineInputError(stage=STAGE, reason="Welch's ANOVA produced no result for any task or feature "
                                 "(see qc.csv)", hint="check group sizes and labels in the manifest")
    long.to_csv(out_dir / "anova_long.csv", index=False)
    t5 = table5(long, selected, tasks, params["alpha"])
    write_table(t5, Path(args.tables_dir or out_dir) / "table5", floatfmt=".4g")

    fig_qc: list[dict[str, str]] = []
    boxed = significant_features(long, params["alpha"], params["n_boxplot_features"], selected["feature"])
    figure5_boxplots(table, long, boxed, fig_dir / "figure5", tasks, params["alpha"])
    fig_qc += figure6_clustermap(table, list(selected["feature"]), fig_dir / "figure6",
                                 params["cluster_method"], params["age_bins"])
    example = list(selected["feature"].head(params["n_example_features"]))
    figure8_case_comparison(table, example, fig_dir / "figure8", params["example_subjects"])

    all_qc = pd.concat([pd.DataFrame(qc, columns=["item", "kind", "reason"]), anova_qc,
                        pd.DataFrame(fig_qc, columns=["item", "kind", "reason"])], ignore_index=True)
    all_qc.to_csv(out_dir / "qc.csv", index=False)
    n_sig = int((t5[f"Significant (p < {params['alpha']:g})"] != "").sum())
    log.info("Table 5: %d selected features, %d significant at p < %g in >= 1 task", len(t5), n_sig,
             params["alpha"])
    return 0

