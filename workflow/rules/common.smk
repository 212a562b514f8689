# Shared helpers for the rules: config validation, subject lists, parameter passing.
import json
import os
import shlex
import sys

import pandas as pd
from snakemake.utils import validate

# VOLUME_FORMATS: scans that curation turns into volumes (2D image datasets feed the 2D models).
from covidmtl.stageplan import VOLUME_FORMATS, plan_stages, read_indexes

validate(config, schema="../schemas/config.schema.yaml")


envvars:
    "PATH",


# Rules call the `covidmtl` entry point installed next to the Python running Snakemake,
# so `.venv/bin/snakemake` works without activating the environment.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

RESULTS = "results"
# Raw data (downloads, mirrors, the generated synthetic cohort) stays outside results/:
# real DICOM headers carry identifiers that must never reach results/.
RAW = "resources/raw"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"


wildcard_constraints:
    dataset="[a-z0-9_]+",
    subject="[A-Za-z0-9][A-Za-z0-9_-]*",


def params_json(*keys):
    """A config section as a shell-quoted JSON argument (rules re-run when it changes)."""
    section = config
    for key in keys:
        section = section[key]
    return shlex.quote(json.dumps(section, sort_keys=True))


def synthetic_subject_ids():
    from covidmtl.synthetic.cohort import subject_id

    return [subject_id(i + 1) for i in range(config["synthetic"]["n_subjects"])]


def dataset_subjects(dataset):
    """Volume subjects of one dataset, read from its index (a checkpoint output), minus exclusions."""
    index_path = checkpoints.dataset_index.get(dataset=dataset).output.index
    index = pd.read_csv(index_path, usecols=["subject_id", "image_format"], dtype=str)
    excluded = set(config["exclude_subjects"])
    return [s for s, fmt in zip(index.subject_id, index.image_format) if fmt in VOLUME_FORMATS and s not in excluded]


def per_subject(pattern):
    """Expand a per-subject path pattern over every selected dataset and subject (input function)."""

    def inputs(wildcards):
        return [
            pattern.format(dataset=dataset, subject=subject)
            for dataset in config["datasets"]
            for subject in dataset_subjects(dataset)
        ]

    return inputs


def dataset_indexes(wildcards=None):
    """The index table of every selected dataset (checkpoint outputs)."""
    return [checkpoints.dataset_index.get(dataset=dataset).output.index for dataset in config["datasets"]]


# What covidmtl.stageplan reads from the config.
STAGE_PLAN_KEYS = ("datasets", "exclude_subjects", "split", "classical", "stats")


def stage_plan_config():
    return shlex.quote(json.dumps({key: config[key] for key in STAGE_PLAN_KEYS}, sort_keys=True))


def planned_targets(wildcards):
    """Targets of the stages that the cohort's labels allow (see results/stage_plan.md)."""
    decisions = plan_stages(read_indexes(dataset_indexes(), config["exclude_subjects"]), config)
    return [target for decision in decisions if decision.runs for target in STAGE_TARGETS[decision.stage]]


def dataset_raw_inputs(wildcards):
    """What a dataset's index depends on: the generated cohort, or the dataset's download."""
    if wildcards.dataset == "synthetic":
        return [rules.synthetic_clinical.output[0]] + expand(
            rules.synthetic_subject.output[0], subject=synthetic_subject_ids()
        )
    return [f"{RAW}/{wildcards.dataset}/.complete"]


def deep_train_inputs(wildcards):
    spec = DEEP_VARIANTS[wildcards.variant]
    inputs = {
        "volumes": LUNG_VOLUMES(wildcards),
        "manifest": rules.manifest.output[0],
        "split": rules.split.output[0],
    }
    if spec.features:
        inputs["features"] = rules.features_merge.output.parquet
    if spec.is_transfer:
        # the two-diagnosis-task model with the same Shift3D setting (section 5.4)
        source = "mtl2_shift" if spec.shift3d else "mtl2_noshift"
        inputs["init"] = f"{RESULTS}/deep/{source}/model.pt"
    return inputs


def twod_train_inputs(wildcards):
    inputs = {"slices": rules.twod_slices.output[0]}
    if TWOD_VARIANTS[wildcards.variant].architecture == "mga" and config["twod"]["mga"]["guide_source"] == "predicted":
        inputs["segmenter"] = f"{RESULTS}/twod/runs/mga_seg_hmsa/model.pt"
    return inputs


def twod_run_metrics(variants):
    return expand(f"{RESULTS}/twod/runs/{{variant}}/metrics.json", variant=variants)
