"""DVC on top of the Snakemake DAG: dvc.yaml, the default remote, metrics export.

The slow tests build a temporary git repository from this checkout with the smoke config
(6 subjects) as config/config.yaml, then run `dvc repro table1` (raw data, curation, Table 1),
change one parameter, and push and pull through the default local remote. Fast tests check
dvc.yaml against the Snakemake rules, the documented metrics/plots, and metrics-export.
"""

from __future__ import annotations

import filecmp
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO
from covidmtl import metrics_export

BIN = Path(sys.executable).parent
# Copied into the temporary repository: what `dvc repro` needs (the stage deps included).
REPO_ITEMS = ["Snakefile", "workflow", "config", "envs", "src", "profiles", "dvc.yaml", ".dvcignore",
              ".dvc/config", ".dvc/.gitignore", ".gitignore", "pyproject.toml"]
# Snakemake bookkeeping that no stage declares (and nothing reads).
UNDECLARED_OK = ("results/logs/", "results/benchmarks/")
# The slow tests reproduce the pipeline up to this stage (and its upstream stages) only:
# the later stages' Snakemake targets run in tests/test_workflow.py.
TARGET = "table1"
TARGET_STAGES = {"raw@synthetic", "curate", "table1"}


def dvc_stages() -> dict[str, dict]:
    """Stage name -> stage body (a `foreach` stage's template body under its own name)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def declared_paths(stages: dict) -> list[str]:
    paths = []
    for stage in stages.values():
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key, []):
                paths.append(entry if isinstance(entry, str) else next(iter(entry)))
    return paths


def covered(path: str, declared: list[str]) -> bool:
    """Is a file (or the fixed prefix of a rule's output pattern) inside a declared output?"""
    for out in declared:
        if "${" in out:  # foreach template, e.g. resources/raw/${item}
            if path.startswith(out.split("${")[0]):
                return True
        elif path == out or path.startswith(out.rstrip("/") + "/"):
            return True
    return False


# --- static checks (fast) ----------------------------------------------------------------


def test_dvc_yaml_refers_to_existing_files_and_config_keys():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    stages = dvc_stages()
    assert stages, "dvc.yaml has no stages"
    declared = declared_paths(stages)
    for name, stage in stages.items():
        assert stage["cmd"].startswith("${snakemake} "), f"stage {name} must call Snakemake (the DAG's source of truth)"
        for dep in stage.get("deps", []):
            if not covered(dep, declared) and not any(out.startswith(dep.rstrip("/") + "/") for out in declared):
                assert (REPO / dep).exists(), f"stage {name}: dependency {dep} does not exist"
        for params in stage.get("params", []):
            (params_file, keys), = params.items()
            assert params_file == "config/config.yaml", f"stage {name}: parameters come from config/config.yaml"
            for key in keys:
                node = config
                for part in key.split("."):
                    assert isinstance(node, dict) and part in node, (
                        f"stage {name} tracks {key}, which config/config.yaml does not set; add it there "
                        "(e.g. `{key}: {{}}`: DVC can only track keys present in the file)")
                    node = node[part]
    assert len(declared) == len(set(declared)), "an output is declared by two stages"


@functools.cache
def load_workflow():
    """The parsed Snakemake workflow (rules, outputs, resources, report flags), loaded once
    per test session (test_report.py and test_slurm.py use it too)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

    with SnakemakeApi(OutputSettings()) as api:
        workflow_api = api.workflow(resource_settings=ResourceSettings(), config_settings=ConfigSettings(),
                                    storage_settings=StorageSettings(), snakefile=REPO / "Snakefile", workdir=REPO)
        return workflow_api._workflow


def test_every_rule_output_is_a_dvc_output_and_every_stage_target_a_rule_output():
    """DVC deletes a stage's outs before it runs the stage's Snakemake targets: a rule output
    that no stage declares would survive a rerun and could be reused although stale."""
    stages = dvc_stages()
    declared = declared_paths(stages)
    workflow = load_workflow()
    problems = []
    patterns = []
    for rule in workflow.rules:
        for output in rule.output:
            pattern = str(output)
            patterns.append((rule.name, output.regex()))
            prefix = pattern.split("{")[0]
            if prefix.startswith(UNDECLARED_OK):
                continue
            if not covered(prefix, declared):
                problems.append(f"rule {rule.name} writes {pattern}, which no dvc.yaml stage declares as output")
    for name, stage in stages.items():
        for target in stage["cmd"].split()[1:]:
            if target.startswith("-") or target.startswith("${"):
                continue
            target = target.replace("${item}", "synthetic")
            if not any(regex.match(target) for _, regex in patterns):
                problems.append(f"stage {name}: target {target} is no rule's output")
            if not covered(target, declared):
                problems.append(f"stage {name}: target {target} is not declared as output")
    assert not problems, "\n".join(problems)


def test_default_remote_is_a_local_directory():
    config = (REPO / ".dvc" / "config").read_text(encoding="utf-8")
    assert "remote = local" in config and "url = ../../covidmtl-dvc-remote" in config
    assert "/config.local" in (REPO / ".dvc" / ".gitignore").read_text(encoding="utf-8")


# --- metrics export (fast) -------------------------------------------------------------


def _predictions(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for model in ("rf", "lgbm"):
        for i in range(20):
            y = i % 2
            p1 = float(np.clip(0.5 + (0.3 if y else -0.3) + rng.normal(0, 0.2), 0, 1))
            rows.append({"subject_id": f"S{i:03d}", "task": "ct", "model": model, "y_true": y,
                         "y_pred": int(p1 >= 0.5), "prob_0": 1 - p1, "prob_1": p1, "prob_2": np.nan})
            k = i % 3
            prob = np.full(3, 0.2)
            prob[k] = 0.6
            rows.append({"subject_id": f"S{i:03d}", "task": "severity", "model": model, "y_true": k,
                         "y_pred": k, "prob_0": prob[0], "prob_1": prob[1], "prob_2": prob[2]})
    return pd.DataFrame(rows)


def test_classification_export_writes_auc_json_and_roc_curves(tmp_path):
    pred_file = tmp_path / "predictions.csv"
    _predictions(np.random.default_rng(0)).to_csv(pred_file, index=False)
    out, roc_dir = tmp_path / "metrics" / "classical.json", tmp_path / "roc"
    assert metrics_export.main(["classification", "--predictions", str(pred_file), "--out", str(out),
                                "--roc-dir", str(roc_dir)]) == 0
    metrics = json.loads(out.read_text(encoding="utf-8"))
    assert set(metrics) == {"ct", "severity"} and set(metrics["ct"]) == {"rf", "lgbm"}
    assert 0.5 < metrics["ct"]["rf"]["auc"] <= 1.0
    assert metrics["severity"]["lgbm"]["auc"] == pytest.approx(1.0)
    curves = sorted(p.name for p in roc_dir.glob("*.csv"))
    assert curves == ["ct_lgbm.csv", "ct_rf.csv"] + [f"severity_{m}_class{k}.csv" for m in ("lgbm", "rf") for k in range(3)]
    roc = pd.read_csv(roc_dir / "ct_rf.csv")
    assert list(roc.columns) == ["fpr", "tpr", "threshold"]
    assert roc.fpr.is_monotonic_increasing and roc.tpr.iloc[-1] == 1.0


def test_segmentation_and_cohort_exports(tmp_path):
    scores = pd.DataFrame({"subject_id": ["a", "b", "c"], "dice": [0.9, 0.8, np.nan], "method": ["x", "x", "y"]})
    scores.to_csv(tmp_path / "qc.csv", index=False)
    out = tmp_path / "lungseg.json"
    metrics_export.main(["segmentation", "--table", str(tmp_path / "qc.csv"), "--columns", "dice",
                         "--group-by", "method", "--out", str(out)])
    summary = json.loads(out.read_text(encoding="utf-8"))
    assert set(summary) == {"x", "y"}
    assert summary["x"]["dice"]["mean"] == pytest.approx(0.85) and summary["x"]["dice"]["n"] == 2
    assert summary["y"]["dice"]["mean"] is None  # NaN becomes null: DVC reads strict JSON
    assert metrics_export.summary_metrics(scores, ["dice"])["dice"]["n"] == 2

    manifest = pd.DataFrame({"subject_id": ["a", "b", "c"], "patient_id": ["p1", "p1", "p2"],
                             "diagnosis3": ["covid19", "cap", "covid19"]})
    split = pd.DataFrame({"subject_id": ["a", "b", "c"], "split": ["train", "train", "test"]})
    assert metrics_export.cohort_metrics(manifest, split) == {
        "scans": 3, "patients": 2, "train_scans": 2, "test_scans": 1, "diagnosis3": {"cap": 1, "covid19": 2}}


def test_missing_input_names_the_file_and_stage(tmp_path, capsys):
    from covidmtl.errors import PipelineInputError

    with pytest.raises(PipelineInputError, match="stage=metrics-export.*no_such.csv"):
        metrics_export.main(["segmentation", "--table", str(tmp_path / "no_such.csv"), "--columns", "dice",
                             "--out", str(tmp_path / "x.json")])


# The plot definitions that docs/running.md tells stage authors to add to dvc.yaml.
PLOTS_EXAMPLE = """
metrics:
  - results/metrics/classical.json
plots:
  - results/plots/roc/classical:
      template: simple
      x: fpr
      y: tpr
      x_label: false positive rate
      y_label: true positive rate
  - Loss curves (COVID-MTL):
      template: linear
      x: epoch
      y:
        results/deep/mtl/history.csv: [train_loss_total, test_loss_total]
      y_label: loss
  - results/figures/figure3_roc.png
"""


def test_documented_metrics_and_plot_definitions_render(tmp_path, dvc_env):
    """ROC curves from metrics-export, loss curves from a training history, a figure image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dvc = str(BIN / "dvc")
    _run([dvc, "init", "--no-scm", "-q"], tmp_path, dvc_env)
    predictions = tmp_path / "results/classical/predictions.csv"
    predictions.parent.mkdir(parents=True)
    _predictions(np.random.default_rng(1)).to_csv(predictions, index=False)
    metrics_export.main(["classification", "--predictions", str(predictions),
                         "--out", str(tmp_path / "results/metrics/classical.json"),
                         "--roc-dir", str(tmp_path / "results/plots/roc/classical")])
    history = tmp_path / "results/deep/mtl/history.csv"
    history.parent.mkdir(parents=True)
    pd.DataFrame({"epoch": [1, 2, 3], "train_loss_total": [1.0, 0.7, 0.5],
                  "test_loss_total": [1.1, 0.9, 0.8]}).to_csv(history, index=False)
    figure = tmp_path / "results/figures/figure3_roc.png"
    figure.parent.mkdir(parents=True)
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    fig.savefig(figure)
    plt.close(fig)
    (tmp_path / "dvc.yaml").write_text(PLOTS_EXAMPLE)

    shown = json.loads(_run([dvc, "plots", "show", "--json"], tmp_path, dvc_env).stdout)
    assert "errors" not in shown, shown.get("errors")
    plots = shown["data"]
    assert "results/plots/roc/classical/ct_rf.csv" in plots and "Loss curves (COVID-MTL)" in plots
    assert plots["results/figures/figure3_roc.png"][0]["type"] == "image"
    values = plots["Loss curves (COVID-MTL)"][0]["content"]["data"]["values"]
    assert {v["field"] for v in values} == {"train_loss_total", "test_loss_total"}
    metrics = json.loads(_run([dvc, "metrics", "show", "--json"], tmp_path, dvc_env).stdout)
    (workspace,) = metrics.values()
    assert workspace["data"]["results/metrics/classical.json"]["data"]["ct"]["rf"]["auc"] > 0.5


# --- dvc repro / params / push / pull on a temporary repository (slow) -------------------


def _run(args: list[str], cwd: Path, env: dict, timeout: int = 1200) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    return result


def _merge(base: dict, overlay: dict) -> dict:
    out = dict(base)
    for key, value in overlay.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _digest(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def dvc_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    env = dict(os.environ)
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # `snakemake` in the stage commands
        "HOME": str(home),  # no global git/DVC config of the developer leaks in
        "GIT_AUTHOR_NAME": "covidmtl test", "GIT_AUTHOR_EMAIL": "test@example.org",
        "GIT_COMMITTER_NAME": "covidmtl test", "GIT_COMMITTER_EMAIL": "test@example.org",
        "DVC_NO_ANALYTICS": "1",
    })
    env.pop("SNAKEMAKE_PROFILE", None)
    return env


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory, dvc_env):
    """A git+DVC repository with the smoke config (6 subjects) after `dvc repro` and a commit."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = tmp_path_factory.mktemp("dvc")
    repo = root / "repo"
    repo.mkdir()
    for item in REPO_ITEMS:
        src, dest = REPO / item, repo / item
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(src, dest)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    config = _merge(config, yaml.safe_load((REPO / "config" / "smoke.yaml").read_text(encoding="utf-8")))
    config = _merge(config, {"synthetic": {"n_subjects": 6}})
    (repo / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    _run(["git", "init", "-q"], repo, dvc_env)
    # DVC's index database would otherwise go to /var/tmp/dvc
    _run([str(BIN / "dvc"), "config", "--local", "core.site_cache_dir", str(root / "dvc-site-cache")], repo, dvc_env)
    _run(["git", "add", "-A"], repo, dvc_env)
    _run(["git", "commit", "-qm", "covidmtl at smoke size"], repo, dvc_env)
    _run([str(BIN / "dvc"), "repro", TARGET], repo, dvc_env)
    _run(["git", "add", "-A"], repo, dvc_env)
    _run(["git", "commit", "-qm", "dvc repro"], repo, dvc_env)
    return repo


@pytest.mark.slow
def test_dvc_repro_builds_every_stage_and_declares_every_output(dvc_repo, dvc_env):
    dvc = str(BIN / "dvc")
    status = _run([dvc, "status", "--with-deps", TARGET], dvc_repo, dvc_env).stdout
    assert "up to date" in status, status
    table1 = pd.read_csv(dvc_repo / "results" / "tables" / "table1.csv")
    assert int(table1.loc[table1.characteristic == "Scans", "All"].iloc[0]) == 6
    lock = yaml.safe_load((dvc_repo / "dvc.lock").read_text(encoding="utf-8"))["stages"]
    assert set(lock) == TARGET_STAGES
    assert lock["raw@synthetic"]["params"]["config/config.yaml"]["synthetic"]["n_subjects"] == 6

    # DVC deletes a stage's outs before running it: anything a stage's Snakemake jobs write
    # but dvc.yaml does not declare would survive and could go stale.
    declared = declared_paths(dvc_stages())
    undeclared = []
    for top in ("results", "resources"):
        for path in (dvc_repo / top).rglob("*"):
            rel = path.relative_to(dvc_repo).as_posix()
            if path.is_file() and not rel.startswith(UNDECLARED_OK) and not covered(rel, declared):
                undeclared.append(rel)
    assert not undeclared, f"files written by the DVC stages but not declared in dvc.yaml: {undeclared[:10]}"

    metrics = json.loads(_run([dvc, "metrics", "show", "--json"], dvc_repo, dvc_env).stdout)
    (workspace,) = metrics.values()  # one revision: the workspace (key "" in DVC 3)
    cohort = workspace["data"]["results/metrics/cohort.json"]["data"]
    assert cohort["scans"] == 6 and cohort["train_scans"] + cohort["test_scans"] == 6


@pytest.mark.slow
def test_changing_one_parameter_reruns_only_the_stages_that_depend_on_it(dvc_repo, dvc_env):
    dvc = str(BIN / "dvc")
    upstream = [dvc_repo / "resources/raw/synthetic/index.csv", dvc_repo / "results/curated/manifest.csv"]
    before = {path: (path.stat().st_mtime_ns, _digest(path)) for path in upstream}
    config_path = dvc_repo / "config" / "config.yaml"
    original = config_path.read_text(encoding="utf-8")
    config = yaml.safe_load(original)
    config["split"] = {**config.get("split", {}), "test_fraction": 0.5}
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        diff = _run([dvc, "params", "diff", "--json"], dvc_repo, dvc_env).stdout
        assert "split.test_fraction" in diff
        status = yaml.safe_load(_run([dvc, "status", "--json", "--with-deps", TARGET], dvc_repo, dvc_env).stdout)
        assert set(status) == {"table1"}, status
        log = _run([dvc, "repro", TARGET], dvc_repo, dvc_env).stdout
        assert "Stage 'raw@synthetic' didn't change, skipping" in log
        assert "Stage 'curate' didn't change, skipping" in log
        assert "Running stage 'table1'" in log
        # neither DVC nor Snakemake touched the upstream stages' files
        assert {path: (path.stat().st_mtime_ns, _digest(path)) for path in upstream} == before
        split = pd.read_csv(dvc_repo / "results" / "split" / "split.csv")
        assert (split.split == "test").sum() >= 2
    finally:
        config_path.write_text(original)
        _run([dvc, "repro", TARGET], dvc_repo, dvc_env)  # back to the committed state (from the run cache)


@pytest.mark.slow
def test_push_and_pull_round_trip_through_the_default_remote(dvc_repo, dvc_env):
    dvc = str(BIN / "dvc")
    push = _run([dvc, "push"], dvc_repo, dvc_env)
    remote = dvc_repo.parent / "covidmtl-dvc-remote"  # .dvc/config: url = ../../covidmtl-dvc-remote
    assert remote.is_dir() and any(remote.rglob("*")), push.stdout

    clone = dvc_repo.parent / "clone"
    _run(["git", "clone", "-q", str(dvc_repo), str(clone)], dvc_repo.parent, dvc_env)
    _run([dvc, "config", "--local", "core.site_cache_dir", str(dvc_repo.parent / "dvc-site-cache")], clone, dvc_env)
    assert not (clone / "resources").exists() and not (clone / "results").exists()
    # only the stages up to TARGET have been run (and are in dvc.lock)
    _run([dvc, "pull", "--with-deps", TARGET], clone, dvc_env)
    for rel in ["resources/raw/synthetic/index.csv", "results/curated/manifest.csv",
                "results/tables/table1.csv", "results/tables/table1.md", "results/metrics/cohort.json"]:
        assert filecmp.cmp(dvc_repo / rel, clone / rel, shallow=False), rel
    subjects = sorted(p.name for p in (clone / "resources/raw/synthetic/subjects").iterdir())
    assert len(subjects) == 6
    status = _run([dvc, "status", "--with-deps", TARGET], clone, dvc_env).stdout
    assert "up to date" in status, status
