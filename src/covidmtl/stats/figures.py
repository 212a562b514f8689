"""COVID-MTL statistical figures of the selected lung features (section 5.5).

- Figure 5: box plots of up to 10 significant features, min-max scaled to [0, 1], by
  group; one row per task (CT, NAT, severity).
- Figure 6: clustering heatmap (seaborn clustermap) of the selected features, z-scored
  per feature, hierarchical clustering of features and subjects with Pearson-correlation
  distance (1 - r); each subject annotated with CT, NAT, severity, sex and age group.
- Figure 8: the top features of one infected and one normal case, scaled to [0, 1].
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from covidmtl.classical.figures import save_figure  # noqa: E402
from covidmtl.classical.metrics import TASK_LABELS  # noqa: E402
from covidmtl.errors import PipelineInputError  # noqa: E402
from covidmtl.stats.anova import GROUP_LABELS, STAGE, TASK_NAMES, short_name  # noqa: E402

log = logging.getLogger(__name__)

GROUP_COLORS = {
    "ct": ["#4c72b0", "#c44e52"],
    "nat": ["#4c72b0", "#c44e52"],
    "severity": ["#55a868", "#dd8452", "#c44e52"],
}
UNKNOWN_COLOR = "#d9d9d9"


def minmax_scale(df: pd.DataFrame) -> pd.DataFrame:
    """Scale each column to [0, 1] over the rows; a constant column becomes 0."""
    lo, hi = df.min(), df.max()
    span = (hi - lo).replace(0, np.nan)
    return ((df - lo) / span).fillna(0.0)


def _labels(table: pd.DataFrame, task: str) -> pd.Series:
    if task not in table.columns:
        return pd.Series(np.nan, index=table.index)
    return pd.to_numeric(table[task], errors="coerce")


def figure5_boxplots(table: pd.DataFrame, long: pd.DataFrame, features: list[str], out: str | Path,
                     tasks: Iterable[str] = ("ct", "nat", "severity"), alpha: float = 0.001) -> list[Path]:
    """Box plots of ``features`` (scaled to [0, 1]) by group, one row per task; Welch p above each box group."""
    import seaborn as sns

    tasks = list(tasks)
    n = max(len(features), 1)
    fig, axes = plt.subplots(len(tasks), 1, figsize=(max(11, 1.45 * n + 3.5), 4.0 * len(tasks)),
                             squeeze=False, sharex=True)
    scaled = minmax_scale(table[features].astype(float)) if features else None
    for ax, task in zip(axes[:, 0], tasks):
        name = TASK_NAMES.get(task, task)
        ax.set_title(TASK_LABELS.get(task, name), fontsize=12, loc="left")
        ax.set_ylabel("Scaled value [0, 1]", fontsize=11)
        labels = _labels(table, task)
        if not features or labels.isna().all():
            msg = (f"no feature reached p < {alpha:g}" if not features else f"no '{task}' labels")
            ax.text(0.5, 0.5, msg, ha="center", va="center", transform=ax.transAxes, fontsize=12)
            ax.set_yticks([])
            continue
        keep = labels.notna()
        groups = labels[keep].astype(int).map(lambda g: GROUP_LABELS[task].get(g, str(g)))
        data = scaled.loc[keep].assign(group=groups.to_numpy()).melt(id_vars="group", var_name="feature",
                                                                     value_name="value")
        data["feature"] = data["feature"].map(short_name)
        order = [GROUP_LABELS[task][g] for g in sorted(GROUP_LABELS[task]) if GROUP_LABELS[task][g] in set(groups)]
        palette = dict(zip([GROUP_LABELS[task][g] for g in sorted(GROUP_LABELS[task])], GROUP_COLORS[task]))
        sns.boxplot(data=data, x="feature", y="value", hue="group", hue_order=order,
                    order=[short_name(f) for f in features], palette=palette, fliersize=2, linewidth=1, ax=ax)
        sub = long[long["task"] == task].set_index("feature")["p"]
        for i, f in enumerate(features):
            p = sub.get(f, np.nan)
            text = "n/a" if pd.isna(p) else (f"p={p:.1e}" + ("*" if p < alpha else ""))
            ax.text(i, 1.04, text, ha="center", va="bottom", fontsize=8)
        ax.set_ylim(-0.05, 1.16)
        ax.set_xlabel("")
        ax.legend(title="Group", loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=9, title_fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[-1, 0].tick_params(axis="x", labelrotation=35, labelsize=9)
    for lbl in axes[-1, 0].get_xticklabels():
        lbl.set_horizontalalignment("right")
    axes[-1, 0].set_xlabel("Feature (image type, class, name)", fontsize=11)
    fig.suptitle(f"Significant lung features by group (Welch's ANOVA; * p < {alpha:g}) - COVID-MTL Figure 5",
                 fontsize=13)
    fig.tight_layout()
    return save_figure(fig, out)


def _corr_linkage(data: np.ndarray, method: str):
    """Hierarchical linkage of the rows with Pearson-correlation distance (1 - r)."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import pdist

    d = pdist(data, metric="correlation")
    # A constant row has no correlation; treat it as uncorrelated (distance 1) rather than fail.
    d = np.clip(np.nan_to_num(d, nan=1.0), 0.0, 2.0)
    return linkage(d, method=method)


def _age_group(age: Any, bins: list[float]) -> str:
    if pd.isna(age):
        return "unknown"
    edges = sorted(bins)
    if age < edges[0]:
        return f"< {edges[0]:g}"
    for lo, hi in zip(edges, edges[1:]):
        if lo <= age < hi:
            return f"{lo:g}-{hi:g}"
    return f">= {edges[-1]:g}"


def subject_annotations(table: pd.DataFrame, age_bins: list[float]) -> tuple[pd.DataFrame, dict[str, dict[str, str]]]:
    """Per-subject annotation labels (CT, NAT, Severity, Sex, Age group) and their colours."""
    ann = pd.DataFrame(index=table["subject_id"].astype(str))
    palettes: dict[str, dict[str, str]] = {}
    for task in ("ct", "nat", "severity"):
        name = TASK_NAMES[task]
        labels = _labels(table, task).to_numpy()
        ann[name] = [GROUP_LABELS[task].get(int(v), str(v)) if pd.notna(v) else "unknown" for v in labels]
        palettes[name] = {GROUP_LABELS[task][g]: c for g, c in zip(sorted(GROUP_LABELS[task]), GROUP_COLORS[task])}
    sex = table["sex"] if "sex" in table.columns else pd.Series(np.nan, index=table.index)
    ann["Sex"] = [{"M": "male", "F": "female"}.get(str(s).upper(), "unknown") if pd.notna(s) else "unknown"
                  for s in sex]
    palettes["Sex"] = {"male": "#8172b3", "female": "#ccb974"}
    age = table["age"] if "age" in table.columns else pd.Series(np.nan, index=table.index)
    ann["Age group"] = [_age_group(a, age_bins) for a in pd.to_numeric(age, errors="coerce")]
    age_levels = [_age_group(x, age_bins) for x in [-np.inf, *sorted(age_bins)]]
    palettes["Age group"] = dict(zip(age_levels, plt.get_cmap("Purples")(np.linspace(0.3, 0.9, len(age_levels)))))
    for col in ann.columns:
        palettes[col]["unknown"] = UNKNOWN_COLOR
    return ann, palettes


def figure6_clustermap(table: pd.DataFrame, features: list[str], out: str | Path, method: str = "average",
                       age_bins: Iterable[float] = (40, 60)) -> list[dict[str, str]]:
    """Clustering heatmap of the selected features; returns QC rows for features left out."""
    import seaborn as sns
    from matplotlib.colors import to_hex

    qc: list[dict[str, str]] = []
    X = table[features].apply(pd.to_numeric, errors="coerce").astype(float)
    usable = []
    for f in features:
        col = X[f]
        if not np.isfinite(col.to_numpy()).all():
            qc.append({"item": f, "kind": "feature", "reason": "NaN/infinite values; left out of Figure 6"})
        elif not col.std(ddof=0) > 0:
            qc.append({"item": f, "kind": "feature", "reason": "constant over the subjects; left out of Figure 6"})
        else:
            usable.append(f)
    if not usable or len(table) < 2:
        raise PipelineInputError(stage=STAGE, reason=f"Figure 6 needs >= 1 usable feature and >= 2 subjects "
                                 f"(have {len(usable)} and {len(table)})",
                                 hint="check the selected features and the QC table")
    Z = (X[usable] - X[usable].mean()) / X[usable].std(ddof=0)
    data = pd.DataFrame(Z.to_numpy().T, index=[short_name(f).replace("\n", " ") for f in usable],
                        columns=table["subject_id"].astype(str))
    ann, palettes = subject_annotations(table, list(age_bins))
    colors = ann.apply(lambda c: c.map(lambda v: to_hex(palettes[c.name].get(v, UNKNOWN_COLOR))))
    n_feat, n_subj = data.shape
    g = sns.clustermap(
        data,
        row_linkage=_corr_linkage(data.to_numpy(), method) if n_feat >= 2 else None,
        col_linkage=_corr_linkage(data.to_numpy().T, method),
        row_cluster=n_feat >= 2,
        col_colors=colors,
        cmap="RdBu_r", center=0, vmin=-3, vmax=3,
        xticklabels=n_subj <= 60, yticklabels=True,
        figsize=(min(max(12, 0.05 * n_subj + 8), 24), max(7, 0.38 * n_feat + 4)),
        dendrogram_ratio=(0.12, 0.15), colors_ratio=0.025,
        cbar_kws={"label": "z-score (clipped at ±3)"}, cbar_pos=(0.03, 0.80, 0.015, 0.13),
    )
    g.ax_heatmap.set_xlabel(f"Subjects (n = {n_subj})", fontsize=11)
    g.ax_heatmap.set_ylabel("")
    g.ax_heatmap.tick_params(axis="y", labelsize=9)
    y = 0.98
    for col in ann.columns:
        present = [v for v in palettes[col] if v in set(ann[col])]
        handles = [Patch(facecolor=palettes[col][v], edgecolor="grey", label=v) for v in present]
        g.figure.legend(handles=handles, title=col, loc="upper left", bbox_to_anchor=(1.0, y), fontsize=9,
                        title_fontsize=10, frameon=False)
        y -= 0.032 * (len(handles) + 2)
    g.figure.suptitle("Selected lung features: z-scores, hierarchical clustering with Pearson-correlation "
                      f"distance ({method} linkage) - COVID-MTL Figure 6", fontsize=12, y=1.06)
    save_figure(g.figure, out)
    return qc


def choose_example_cases(table: pd.DataFrame, features: list[str]) -> tuple[str, str]:
    """A representative infected case (COVID-19 positive, most severe group present) and a normal case.

    Representative: closest (in scaled feature space) to the median of its group.
    """
    ct, nat, sev = _labels(table, "ct"), _labels(table, "nat"), _labels(table, "severity")
    infected = (ct == 1) & (nat.isna() | (nat == 1))
    if sev.notna().any() and (infected & sev.notna()).any():
        infected &= sev == sev[infected].max()
    if "diagnosis3" in table.columns and (table["diagnosis3"] == "normal").any():
        normal = table["diagnosis3"] == "normal"
    else:
        normal = (ct == 0) & (nat.isna() | (nat == 0)) & (sev.isna() | (sev == 0))
    if not infected.any() or not normal.any():
        raise PipelineInputError(stage=STAGE, reason=f"Figure 8 needs an infected and a normal case "
                                 f"(found {int(infected.sum())} and {int(normal.sum())})",
                                 hint="set stats.example_subjects to [infected_id, normal_id]")
    scaled = minmax_scale(table[features].astype(float))

    def representative(mask: pd.Series) -> str:
        sub = scaled[mask]
        dist = ((sub - sub.median()) ** 2).sum(axis=1)
        return str(table.loc[dist.idxmin(), "subject_id"])

    return representative(infected), representative(normal)


def _describe(row: pd.Series) -> str:
    parts = []
    for task in ("ct", "nat", "severity"):
        v = pd.to_numeric(pd.Series([row.get(task)]), errors="coerce").iloc[0]
        if pd.notna(v):
            parts.append(GROUP_LABELS[task].get(int(v), str(v)) if task == "severity" else
                         f"{TASK_NAMES[task]}{'+' if int(v) == 1 else '-'}")
    return ", ".join(parts)


def figure8_case_comparison(table: pd.DataFrame, features: list[str], out: str | Path,
                            example_subjects: list[str] | None = None) -> list[Path]:
    """Grouped bars of the top features (scaled to [0, 1] over the cohort) for an infected and a normal case."""
    ids = table["subject_id"].astype(str)
    if example_subjects:
        if len(example_subjects) != 2:
            raise ValueError("stats.example_subjects must be [infected_id, normal_id]")
        infected_id, normal_id = map(str, example_subjects)
        for sid in (infected_id, normal_id):
            if sid not in set(ids):
                raise PipelineInputError(stage=STAGE, subject=sid, reason="stats.example_subjects names a subject "
                                         "that is not in the analysed features table",
                                         hint="pick subjects listed in the features table (and stats.subset)")
    else:
        infected_id, normal_id = choose_example_cases(table, features)
    scaled = minmax_scale(table[features].astype(float))
    scaled.index = ids
    rows = {sid: table[ids == sid].iloc[0] for sid in (infected_id, normal_id)}
    y = np.arange(len(features))
    h = 0.38
    fig, ax = plt.subplots(figsize=(10, max(4.5, 0.55 * len(features) + 2)))
    ax.barh(y - h / 2, scaled.loc[infected_id], height=h, color="#c44e52",
            label=f"infected: {infected_id} ({_describe(rows[infected_id])})")
    ax.barh(y + h / 2, scaled.loc[normal_id], height=h, color="#4c72b0",
            label=f"normal: {normal_id} ({_describe(rows[normal_id])})")
    ax.set_yticks(y, [short_name(f).replace("\n", " ") for f in features], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("Feature value scaled to [0, 1] (min-max over the analysed subjects)", fontsize=11)
    ax.set_ylabel("Selected feature (ordered by LightGBM importance)", fontsize=11)
    ax.set_title("Top lung features of an infected and a normal case - COVID-MTL Figure 8", fontsize=12)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=9, ncol=1)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out)
