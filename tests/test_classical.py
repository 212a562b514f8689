"""RF/LightGBM baselines: metrics against scikit-learn, training, Tables 3-4, Figure 3."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from covidmtl.classical.figures import main as roc_main, roc_figure
from covidmtl.classical.metrics import (
    binary_metrics,
    metrics_from_predictions,
    multiclass_metrics,
    read_predictions,
    table3,
    table4,
    write_tables,
)
from covidmtl.classical.models import (
    main as train_main,
    parse_params,
    tables_main,
    train_and_evaluate,
    write_predictions,
)
from covidmtl.tables import read_paper_values

FEATURES = ["original_firstorder_Maximum", "original_glcm_Contrast", "wavelet-HLL_glcm_ClusterProminence",
            "wavelet-LLL_glcm_Imc1", "wavelet-LLH_glrlm_RunEntropy"]
SMALL = {"rf": {"n_estimators": 25}, "lgbm": {"n_estimators": 25, "min_child_samples": 3}}


def fake_cohort(n: int = 48, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Features with planted effects: the first two grow with severity; a 70/30 split."""
    rng = np.random.default_rng(seed)
    severity = np.resize([0, 1, 2], n)
    ct = (severity > 0).astype(int)
    ct[::8] = 1  # 'suspected': CT-positive, NAT-negative
    nat = (severity > 0).astype(int)
    table = pd.DataFrame({"subject_id": [f"S{i:03d}" for i in range(n)], "sex": rng.choice(["M", "F"], n),
                          "age": rng.uniform(20, 80, n), "ct": ct, "nat": nat, "severity": severity})
    for j, f in enumerate(FEATURES):
        table[f] = rng.normal(size=n) + [2.0, 1.5, 0, 0, 0][j] * severity
    test = rng.permutation(n) < int(0.3 * n)
    split = pd.DataFrame({"subject_id": table["subject_id"], "split": np.where(test, "test", "train")})
    return table, split


# ---------------------------------------------------------------- metrics vs scikit-learn

def test_binary_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 80), 0, 1)
    m = binary_metrics(y, p)
    pred = (p >= 0.5).astype(int)
    assert m["precision"] == pytest.approx(precision_score(y, pred))
    assert m["recall"] == pytest.approx(recall_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))


def test_binary_metrics_by_hand():
    m = binary_metrics([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
    # TP=1 FP=1 FN=1 TN=1; ranks: positives beat negatives in 3 of 4 pairs
    assert (m["precision"], m["recall"], m["f1"], m["accuracy"], m["auc"]) == pytest.approx((0.5, 0.5, 0.5, 0.5, 0.75))


def test_multiclass_metrics_match_sklearn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 90)
    logits = rng.normal(size=(90, 3)) + 1.5 * np.eye(3)[y]
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    m = multiclass_metrics(y, prob)
    pred = prob.argmax(axis=1)
    assert m["precision"] == pytest.approx(precision_score(y, pred, average="macro"))
    assert m["recall"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert m["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    per_class = [roc_auc_score(y == k, prob[:, k]) for k in range(3)]
    for k in range(3):
        assert m[f"auc_class_{k}"] == pytest.approx(per_class[k])
    assert m["auc"] == pytest.approx(roc_auc_score(y, prob, multi_class="ovr", average="macro"))
    assert m["auc_sd"] == pytest.approx(np.std(per_class))


def test_auc_undefined_with_one_class():
    assert np.isnan(binary_metrics([1, 1, 1], [0.2, 0.7, 0.9])["auc"])


# ---------------------------------------------------------------- training

def test_params_defaults_and_typos():
    p = parse_params(None)
    assert p["rf"]["n_estimators"] == 1000
    assert (p["lgbm"]["n_estimators"], p["lgbm"]["learning_rate"]) == (1000, 0.01)
    assert parse_params(json.dumps({"lgbm": {"learning_rate": 0.1}}))["lgbm"]["n_estimators"] == 1000
    with pytest.raises(ValueError, match="n_estimator"):
        parse_params({"rf": {"n_estimator": 10}})


def test_train_and_evaluate():
    table, split = fake_cohort()
    table.loc[table.index[:3], "nat"] = np.nan  # no NAT result for three subjects
    pred, importance, qc = train_and_evaluate(table, split, parse_params(SMALL), n_jobs=1)
    test_ids = set(split.loc[split["split"] == "test", "subject_id"])
    assert set(pred["subject_id"]) <= test_ids
    assert set(pred["task"]) == {"ct", "nat", "severity"} and set(pred["model"]) == {"rf", "lgbm"}
    sev = pred[pred["task"] == "severity"]
    assert np.allclose(sev[["prob_0", "prob_1", "prob_2"]].sum(axis=1), 1.0)
    binary = pred[pred["task"] == "ct"]
    assert np.allclose(binary[["prob_0", "prob_1"]].sum(axis=1), 1.0) and binary["prob_2"].isna().all()
    missing_nat = set(table["subject_id"][:3])
    assert missing_nat.isdisjoint(pred.loc[pred["task"] == "nat", "subject_id"])
    assert set(qc.loc[qc["reason"].str.contains("no 'nat' label"), "item"]) == missing_nat
    lgbm_ct = importance[(importance["task"] == "ct") & (importance["model"] == "lgbm")]
    assert list(lgbm_ct["rank"]) == list(range(1, len(FEATURES) + 1))
    # the planted feature is the most important for severity
    top = importance[(importance["task"] == "severity") & (importance["rank"] == 1)]["feature"]
    assert set(top) <= {"original_firstorder_Maximum", "original_glcm_Contrast"}
    m = metrics_from_predictions(pred).set_index(["task", "model"])
    assert m.loc[("severity", "rf"), "auc"] > 0.7


def test_task_without_labels_is_skipped():
    table, split = fake_cohort()
    table["nat"] = np.nan
    pred, _, qc = train_and_evaluate(table, split, parse_params({**SMALL, "models": ["rf"]}))
    assert "nat" not in set(pred["task"])
    assert qc.loc[qc["item"] == "nat", "kind"].tolist() == ["task"]


# ---------------------------------------------------------------- tables and figure

@pytest.fixture(scope="module")
def prediction_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("classical")
    table, split = fake_cohort()
    pred, _, _ = train_and_evaluate(table, split, parse_params(SMALL))
    paths = write_predictions(pred, tmp)
    # a deep model's file in the same layout joins the tables and the figure
    deep = pred[pred["model"] == "rf"].assign(model="covidmtl")
    deep.to_csv(tmp / "predictions_covidmtl.csv", index=False)
    return [*paths, tmp / "predictions_covidmtl.csv"]


def test_tables_from_predictions(prediction_files, tmp_path):
    pred = read_predictions(prediction_files)
    metrics = metrics_from_predictions(pred)
    t3 = table3(metrics)
    assert list(t3["Model"]) == ["RF", "LGBM", "covidmtl"] * 2
    assert t3["AUC (paper)"].isna().all() and t3["Accuracy (paper)"].isna().all()
    assert t3.loc[0, "AUC"] == pytest.approx(metrics.set_index(["task", "model"]).loc[("ct", "rf"), "auc"], abs=5e-4)
    t4 = table4(metrics)
    assert {"AUC control/suspected", "AUC mild/regular", "AUC severe/critically ill", "AUC mean ± sd",
            "AUC mean (paper)"} <= set(t4.columns)
    paper_csv = tmp_path / "paper.csv"
    pd.DataFrame([{"task": "ct", "model": "rf", "metric": "auc", "value": 0.5}]).to_csv(paper_csv, index=False)
    t3p = table3(metrics, read_paper_values(paper_csv))
    assert t3p.loc[0, "AUC (paper)"] == 0.5 and t3p["AUC (paper)"].isna().sum() == 5
    paths = write_tables(pred, tmp_path / "tables")
    for key in ("metrics", "table3", "table4"):
        assert paths[key].exists()
    table3_md = (tmp_path / "tables" / "table3.md").read_text(encoding="utf-8")
    assert table3_md.count("|") > 10
    # empty paper cells are blank in Markdown, not "nan"; the reproduced numbers keep 3 decimals
    assert "nan" not in table3_md and f"{t3.loc[0, 'AUC']:.3f}" in table3_md


def test_roc_figure(prediction_files, tmp_path):
    paths = roc_figure(prediction_files, tmp_path / "figure3_per_class.png", severity_mode="per_class")
    assert all(p.exists() and p.stat().st_size > 1000 for p in paths)
    assert {p.suffix for p in paths} == {".png", ".pdf"}
    assert roc_main(["--predictions", *map(str, prediction_files), "--out", str(tmp_path / "f3.png")]) == 0
    assert (tmp_path / "f3.pdf").exists()


def test_cli_end_to_end(tmp_path):
    table, split = fake_cohort(36)
    table.to_parquet(tmp_path / "features.parquet")
    split.to_csv(tmp_path / "split.csv", index=False)
    out = tmp_path / "classical"
    assert train_main(["--features", str(tmp_path / "features.parquet"), "--split", str(tmp_path / "split.csv"),
                       "--params", json.dumps(SMALL), "--threads", "1", "--out-dir", str(out)]) == 0
    for name in ("predictions_rf.csv", "predictions_lgbm.csv", "importance.csv", "qc.csv", "metrics.csv",
                 "table3.csv", "table3.md", "table4.csv", "table4.md"):
        assert (out / name).exists(), name
    assert tables_main(["--predictions", str(out / "predictions_rf.csv"), "--out-dir", str(tmp_path / "t")]) == 0
    assert list(pd.read_csv(tmp_path / "t" / "table3.csv")["Model"]) == ["RF", "RF"]
