"""Which stages a cohort's labels allow.

The synthetic cohort carries every label and mask, so every stage runs.  A real dataset
carries only some (COVID-CT-MD: the 3-class diagnosis, no NAT result for its controls, no
lung or lesion masks), and a small selection may have too few subjects per class to train
and test a model.  The DAG asks :func:`plan_stages` which stages to request, from the
datasets' index tables (so before any image is curated); stages that cannot run are left
out with the reason written to ``results/stage_plan.md`` instead of failing half way.

A supervised task qualifies when it has at least two classes with
``split.min_subjects_per_class`` labelled subjects each (by default 2: one subject of each
class on each side of the train/test split).  The stage code handles what is left
(a task that still cannot be fitted is skipped and reported in the stage's QC table).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

# Ordered as the pipeline runs; every name is a key of STAGE_TARGETS in the Snakefile.
STAGE_DESCRIPTIONS = {
    "cohort": "curation, manifest, split, Table 1",
    "lungseg": "lung masks (classical and refined), masked lung volumes, QC overlays, Figure 2",
    "lungseg_eval": "Table 2: lung segmentation against ground-truth lung masks",
    "features": "pyradiomics lung features",
    "classical": "Random Forest and LightGBM on the lung features",
    "stats": "feature selection and Welch's ANOVA: Table 5, Figures 5, 6, 8",
    "covid_mtl": "3D deep models (ResNet3D, SqueezeNet3D, ShiftNet3D, COVID-MTL): Tables 3-4, Figures 3, 4, 7, 9, 10",
    "deepsc": "DeepSC-COVID: joint lesion segmentation and 3-class diagnosis",
    "twod": "Amyar et al. and mask-guided attention 2D models",
}
COVID_MTL_TASKS = ("ct", "nat", "severity")
VOLUME_FORMATS = {"nifti", "dicom"}
# 2D images and slice folders (UCSD COVID-CT, MedSeg Dataset 1, CC-CCII, iCTCF): only the 2D
# models read them (covidmtl twod-index), next to slices cut from the curated volumes.
TWOD_FORMATS = {"image2d", "slices2d"}


@dataclass(frozen=True)
class StageDecision:
    stage: str
    runs: bool
    reason: str
    description: str


def _labelled(index: pd.DataFrame, column: str) -> pd.Series:
    """The non-blank values of ``column`` (blank or missing = unlabelled / no file)."""
    if column not in index:
        return pd.Series(dtype="string")
    return index[column].astype("string").str.strip().replace("", pd.NA).dropna()


def class_counts(index: pd.DataFrame, column: str) -> dict[str, int]:
    """Labelled subjects per class of ``column`` (empty values are unlabelled)."""
    # '1.0' and '1' are one class (labels may have passed through a float column)
    values = _labelled(index, column).map(lambda v: v[:-2] if v.endswith(".0") else v)
    return {str(k): int(v) for k, v in values.value_counts().sort_index().items()}


def task_status(index: pd.DataFrame, task: str, min_per_class: int) -> tuple[bool, str]:
    """(qualifies, 'task: counts') for one supervised label."""
    counts = class_counts(index, task)
    enough = {k: n for k, n in counts.items() if n >= min_per_class}
    text = f"{task} {counts or 'unlabelled'}"
    return len(enough) >= 2, text


def _n_with(index: pd.DataFrame, column: str) -> int:
    return len(_labelled(index, column))


def _tasks_decision(index: pd.DataFrame, tasks, min_per_class: int, need_all: bool) -> tuple[bool, str]:
    status = [task_status(index, task, min_per_class) for task in tasks]
    ok = [s[0] for s in status]
    runs = all(ok) if need_all else any(ok)
    return runs, "; ".join(text for _, text in status)


def _lesion_three_class(rows: pd.DataFrame, min_per_class: int, what: str) -> tuple[bool, str]:
    """Three diagnoses with >= min_per_class rows each, and >= min_per_class rows with a lesion mask."""
    n_lesion = _n_with(rows, "lesion_mask_path")
    diagnosis = class_counts(rows, "diagnosis3")
    three = sum(v >= min_per_class for v in diagnosis.values()) == 3
    evidence = (f"diagnosis3 {diagnosis or 'unlabelled'} (need 3 classes with >= {min_per_class}); "
                f"{n_lesion} {what} with a lesion mask (need >= {min_per_class})")
    return three and n_lesion >= min_per_class, evidence


def plan_stages(index: pd.DataFrame, config: dict) -> list[StageDecision]:
    """Decide every stage of :data:`STAGE_DESCRIPTIONS` for the cohort in ``index`` (the
    dataset index tables concatenated, one row per scan, excluded subjects removed)."""
    min_per_class = int(config["split"]["min_subjects_per_class"])
    volumes = index[index["image_format"].isin(VOLUME_FORMATS)] if "image_format" in index else index
    rule = f"a task needs >= 2 classes with >= {min_per_class} labelled subjects (split.min_subjects_per_class)"
    decisions: dict[str, tuple[bool, str]] = {}

    n = len(volumes)
    decisions["cohort"] = (n > 0, f"{n} CT volumes")
    decisions["lungseg"] = decisions["cohort"]
    decisions["features"] = decisions["cohort"]
    n_lung = _n_with(volumes, "lung_mask_path")
    decisions["lungseg_eval"] = (n > 0 and n_lung > 0, f"{n_lung} volumes with a ground-truth lung mask")

    runs, text = _tasks_decision(volumes, config["classical"]["tasks"], min_per_class, need_all=False)
    decisions["classical"] = (n > 0 and runs, f"any of: {text}; {rule}")
    runs, text = _tasks_decision(volumes, config["stats"]["tasks"], max(min_per_class, int(config["stats"]["min_group_size"])), need_all=False)
    decisions["stats"] = (decisions["classical"][0] and runs,
                          f"any of: {text}; and the classical stage (LightGBM importance selects the features)")
    runs, text = _tasks_decision(volumes, COVID_MTL_TASKS, min_per_class, need_all=True)
    decisions["covid_mtl"] = (decisions["classical"][0] and runs,
                              f"all of: {text}; and the classical stage (Tables 3-4 hold both); {rule}")

    # DeepSC-COVID and the 2D models segment lesions and tell the three diagnoses apart;
    # the 2D models also read the 2D datasets' images and slice folders.
    decisions["deepsc"] = _lesion_three_class(volumes, min_per_class, "volumes")
    twod = index[index["image_format"].isin(VOLUME_FORMATS | TWOD_FORMATS)] if "image_format" in index else index
    n_2d = len(twod) - n
    runs, text = _lesion_three_class(twod, min_per_class, "volumes or 2D images/slice folders")
    decisions["twod"] = (runs, f"{text} (over {n} CT volumes and {n_2d} 2D images/slice folders)")
    return [StageDecision(stage, *decisions[stage], description) for stage, description in STAGE_DESCRIPTIONS.items()]


def read_indexes(paths: list[str | Path], exclude: list[str] | None = None) -> pd.DataFrame:
    """The dataset index tables concatenated, minus the excluded subjects."""
    frames = [pd.read_csv(path, dtype=str, keep_default_na=False) for path in paths]
    index = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["subject_id", "image_format"])
    return index[~index["subject_id"].isin(set(exclude or []))].reset_index(drop=True)


def plan_markdown(decisions: list[StageDecision], datasets: list[str]) -> str:
    lines = [f"# Stages run for datasets {', '.join(datasets)}", "",
             "Decided from the datasets' labels and masks before any image is processed "
             "(`covidmtl.stageplan`). A stage left out lacks the labels it needs; add subjects or "
             "labels, or narrow its `tasks` in the config.", "",
             "| stage | runs | what it produces | evidence |", "|---|---|---|---|"]
    for d in decisions:
        lines.append(f"| {d.stage} | {'yes' if d.runs else 'no'} | {d.description} | {d.reason} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="covidmtl stage-plan", description="Which stages the cohort's labels allow.")
    parser.add_argument("--index", nargs="+", required=True, type=Path, help="dataset index tables (dataset-index)")
    parser.add_argument("--config", required=True, help="JSON of the whole (validated) config")
    parser.add_argument("--out-md", required=True, type=Path)
    parser.add_argument("--out-json", required=True, type=Path)
    args = parser.parse_args(argv)
    config = json.loads(args.config)
    decisions = plan_stages(read_indexes(args.index, config.get("exclude_subjects")), config)
    markdown = plan_markdown(decisions, config["datasets"])
    args.out_md.parent.mkdir(parents=True, exist_ok=True)
    args.out_md.write_text(markdown, encoding="utf-8")
    args.out_json.write_text(json.dumps([asdict(d) for d in decisions], indent=2) + "\n", encoding="utf-8")
    print(markdown)
    return 0
