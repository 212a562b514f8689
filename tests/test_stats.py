"""Welch's ANOVA (checked against the textbook formula), feature selection, Table 5, Figures 5/6/8."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from covidmtl.errors import PipelineInputError
from covidmtl.stats.anova import (
    anova_long,
    main as anova_main,
    parse_params,
    select_features,
    significant_features,
    table5,
    welch_anova,
)
from covidmtl.stats.figures import (
    choose_example_cases,
    figure5_boxplots,
    figure6_clustermap,
    figure8_case_comparison,
)

FEATURES = ["original_firstorder_Maximum", "original_firstorder_Mean", "original_glcm_Contrast",
            "wavelet-HLL_glcm_ClusterProminence", "wavelet-LLL_glcm_Imc1", "wavelet-LLH_glrlm_RunEntropy"]
EFFECT = [2.5, 2.0, 1.0, 0.0, 0.0, 0.0]


def fake_table(n: int = 30, seed: int = 0) -> pd.DataFrame:
    """~30 subjects; the first three features grow with severity (planted differences)."""
    rng = np.random.default_rng(seed)
    severity = np.resize([0, 1, 2], n)
    ct = (severity > 0).astype(int)
    ct[::6] = 1  # suspected: CT-positive, NAT-negative
    nat = (severity > 0).astype(int)
    df = pd.DataFrame({"subject_id": [f"S{i:03d}" for i in range(n)], "age": rng.uniform(20, 85, n),
                       "sex": rng.choice(["M", "F"], n), "diagnosis3": np.where(ct == 1, "covid19", "normal"),
                       "ct": ct, "nat": nat, "severity": severity})
    df.loc[3, "age"] = np.nan
    df.loc[4, "sex"] = np.nan
    for f, e in zip(FEATURES, EFFECT):
        df[f] = rng.normal(size=n) * (1 + 0.5 * severity) + e * severity
    return df


def fake_importance() -> pd.DataFrame:
    rows = []
    for task, order in {"ct": [0, 1, 3, 2, 4, 5], "nat": [1, 0, 2, 4, 3, 5], "severity": [2, 0, 1, 5, 3, 4]}.items():
        for rank, j in enumerate(order):
            rows.append({"task": task, "model": "lgbm", "feature": FEATURES[j], "importance": 100 - rank})
            rows.append({"task": task, "model": "rf", "feature": FEATURES[j], "importance": rank})
    return pd.DataFrame(rows)


def welch_textbook(groups: list[np.ndarray]) -> tuple[float, float, float, float]:
    """Welch (1951): F, df1, df2, p from the formula."""
    k = len(groups)
    n = np.array([len(g) for g in groups], dtype=float)
    mean = np.array([np.mean(g) for g in groups])
    var = np.array([np.var(g, ddof=1) for g in groups])
    w = n / var
    grand = np.sum(w * mean) / np.sum(w)
    a = np.sum(w * (mean - grand) ** 2) / (k - 1)
    lam = np.sum((1 - w / np.sum(w)) ** 2 / (n - 1))
    b = 1 + 2 * (k - 2) / (k ** 2 - 1) * lam
    f = a / b
    df1, df2 = k - 1, (k ** 2 - 1) / (3 * lam)
    return f, df1, df2, float(sps.f.sf(f, df1, df2))


@pytest.mark.parametrize("sizes", [(5, 9), (6, 8, 11), (4, 4, 4, 7)])
def test_welch_anova_matches_textbook(sizes):
    rng = np.random.default_rng(sum(sizes))
    groups = [rng.normal(loc=0.4 * i, scale=1 + i, size=n) for i, n in enumerate(sizes)]
    values = np.concatenate(groups)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    got = welch_anova(values, labels)
    f, df1, df2, p = welch_textbook(groups)
    assert got["F"] == pytest.approx(f, rel=1e-9)
    assert got["df1"] == pytest.approx(df1)
    assert got["df2"] == pytest.approx(df2, rel=1e-9)
    assert got["p"] == pytest.approx(p, rel=1e-6)
    if len(sizes) == 2:  # two groups: Welch's F is the square of Welch's t
        t = sps.ttest_ind(groups[0], groups[1], equal_var=False)
        assert got["F"] == pytest.approx(t.statistic ** 2) and got["p"] == pytest.approx(t.pvalue)


def test_select_features_union():
    sel = select_features(fake_importance(), top_k=2)
    # top 2 per task: ct {0,1}, nat {1,0}, severity {2,0}; ordered by best rank, then task order
    assert list(sel["feature"]) == [FEATURES[0], FEATURES[1], FEATURES[2]]
    assert sel.loc[0, "selected_for"] == "CT, NAT, Severity"
    assert sel.loc[2, "selected_for"] == "Severity" and np.isnan(sel.loc[2, "rank_ct"])


def test_anova_and_table5():
    df = fake_table()
    long, qc = anova_long(df, FEATURES)
    assert qc.empty
    assert len(long) == 3 * len(FEATURES)
    sev = long[(long["task"] == "severity") & (long["feature"] == FEATURES[0])].iloc[0]
    groups = [df.loc[df["severity"] == g, FEATURES[0]].to_numpy() for g in (0, 1, 2)]
    assert sev["F"] == pytest.approx(welch_textbook(groups)[0])
    t5 = table5(long, select_features(fake_importance(), top_k=6), alpha=0.001)
    assert list(t5.columns[:2]) == ["Feature", "Selected for"]
    for name in ("CT", "NAT", "Severity"):
        assert {f"{name} F", f"{name} df2", f"{name} p", f"{name} p < 0.001"} <= set(t5.columns)
    row = t5.set_index("Feature")
    assert row.loc[FEATURES[0], "Severity p < 0.001"] == "*"  # planted effect
    assert "Severity" in row.loc[FEATURES[0], "Significant (p < 0.001)"]
    assert row.loc[FEATURES[4], "Significant (p < 0.001)"] == ""  # no effect
    assert significant_features(long, 0.001, 10, FEATURES)[0] in FEATURES[:3]


def test_small_group_skips_task_and_names_subject():
    df = fake_table()
    df["severity"] = np.where(df["severity"] == 2, 1, df["severity"])
    df.loc[7, "severity"] = 2  # a severity group of one subject
    long, qc = anova_long(df, FEATURES[:2])
    assert "severity" not in set(long["task"])
    reason = qc.loc[qc["item"] == "severity", "reason"].iloc[0]
    assert "1 subject(s) (S007)" in reason and "severe/critically ill" in reason


def test_bad_features_are_listed():
    df = fake_table()
    df["wavelet-HHH_glcm_Correlation"] = np.where(df["ct"] == 0, 1.0, np.arange(len(df)))  # flat in one group
    df.loc[5, FEATURES[5]] = np.nan
    long, qc = anova_long(df, ["wavelet-HHH_glcm_Correlation", FEATURES[5]], tasks=["ct"])
    reasons = dict(zip(qc["item"], qc["reason"]))
    assert "zero variance in group(s) CT negative" in reasons["wavelet-HHH_glcm_Correlation"]
    assert "S005" in reasons[FEATURES[5]]
    assert long.empty


def test_figures_from_fixture(tmp_path):
    df = fake_table()
    long, _ = anova_long(df, FEATURES)
    figure5_boxplots(df, long, significant_features(long, 0.001, 10, FEATURES), tmp_path / "figure5")
    qc = figure6_clustermap(df.assign(**{"original_glcm_Idmn": 1.0}), FEATURES + ["original_glcm_Idmn"],
                            tmp_path / "figure6.png")
    assert [q["item"] for q in qc] == ["original_glcm_Idmn"]  # constant: listed, not silently dropped
    infected, normal = choose_example_cases(df, FEATURES)
    row = df.set_index("subject_id")
    assert row.loc[infected, "severity"] == 2 and row.loc[normal, "diagnosis3"] == "normal"
    figure8_case_comparison(df, FEATURES, tmp_path / "figure8")
    for name in ("figure5", "figure6", "figure8"):
        for suffix in (".png", ".pdf"):
            assert (tmp_path / f"{name}{suffix}").stat().st_size > 1000
    with pytest.raises(PipelineInputError, match="subject=NOPE"):
        figure8_case_comparison(df, FEATURES, tmp_path / "f8", example_subjects=["NOPE", "S000"])


def test_cli(tmp_path):
    df = fake_table()
    df.to_parquet(tmp_path / "features.parquet")
    fake_importance().to_csv(tmp_path / "importance.csv", index=False)
    out = tmp_path / "stats"
    assert anova_main(["--features", str(tmp_path / "features.parquet"), "--importance",
                       str(tmp_path / "importance.csv"), "--params", json.dumps({"top_k": 3}),
                       "--out-dir", str(out)]) == 0
    for name in ("table5.csv", "table5.md", "anova_long.csv", "selected_features.csv", "qc.csv",
                 "figure5.png", "figure6.pdf", "figure8.png"):
        assert (out / name).exists(), name
    assert len(pd.read_csv(out / "table5.csv")) == 4  # union of the top 3 per task
    with pytest.raises(ValueError, match="unknown stats parameter"):
        parse_params({"topk": 3})
