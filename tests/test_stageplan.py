"""The stages a cohort's labels allow (covidmtl.stageplan)."""

import json

import pandas as pd
import pytest

from covidmtl.config import validate
from covidmtl.stageplan import STAGE_DESCRIPTIONS, class_counts, main, plan_stages


def _rows(n, **labels):
    return [{"image_format": "nifti", **labels} for _ in range(n)]


def _index(*groups) -> pd.DataFrame:
    """Rows of all groups, numbered s000, s001, ..."""
    rows = [row for group in groups for row in group]
    for i, row in enumerate(rows):
        row["subject_id"] = f"s{i:03d}"
    columns = ["subject_id", "image_format", "diagnosis3", "ct", "nat", "severity", "lung_mask_path", "lesion_mask_path"]
    return pd.DataFrame(rows).reindex(columns=columns).fillna("")


def _plan(index, **config):
    decisions = plan_stages(index, validate({"datasets": ["synthetic"], **config}))
    assert [d.stage for d in decisions] == list(STAGE_DESCRIPTIONS)
    return {d.stage: d for d in decisions}


def test_a_fully_labelled_cohort_runs_every_stage():
    full = dict(lung_mask_path="lung.nii.gz", lesion_mask_path="lesion.nii.gz")
    index = _index(_rows(3, diagnosis3="normal", ct="0", nat="0", severity="0", **full),
                   _rows(3, diagnosis3="cap", ct="0", nat="0", severity="0", **full),
                   _rows(3, diagnosis3="covid19", ct="1", nat="1", severity="1", **full),
                   _rows(3, diagnosis3="covid19", ct="1", nat="1", severity="2", **full))
    plan = _plan(index)
    assert all(d.runs for d in plan.values()), [d for d in plan.values() if not d.runs]


def test_the_three_real_studies_run_what_needs_no_training():
    # COVID-CT-MD: one COVID-19 (NAT positive), one CAP, one normal; no masks, no NAT for controls.
    index = _index(_rows(1, diagnosis3="covid19", ct="1", nat="1"),
                   _rows(1, diagnosis3="cap", ct="0", severity="0"),
                   _rows(1, diagnosis3="normal", ct="0", severity="0"))
    plan = _plan(index)
    assert {s for s, d in plan.items() if d.runs} == {"cohort", "lungseg", "features"}
    assert "0 volumes with a ground-truth lung mask" in plan["lungseg_eval"].reason
    assert "ct {'0': 2, '1': 1}" in plan["classical"].reason and ">= 2 labelled" in plan["classical"].reason


def test_the_full_covid_ct_md_trains_the_ct_task_but_not_covid_mtl():
    index = _index(_rows(20, diagnosis3="covid19", ct="1", nat="1"),
                   _rows(8, diagnosis3="cap", ct="0", severity="0"),
                   _rows(8, diagnosis3="normal", ct="0", severity="0"))
    plan = _plan(index)
    assert plan["classical"].runs and plan["stats"].runs
    assert not plan["covid_mtl"].runs and "nat {'1': 20}" in plan["covid_mtl"].reason
    assert not plan["deepsc"].runs and not plan["twod"].runs  # no lesion masks
    # a stricter threshold turns the classical stage off
    assert not _plan(index, split={"min_subjects_per_class": 17})["classical"].runs  # 16 CT-negative


def test_2d_images_count_for_the_2d_models_only():
    # a 2D-only selection (CC-CCII-like slice folders, MedSeg-like images with lesion masks)
    lesion = dict(lesion_mask_path="lesion.nii.gz")
    index = _index([{**r, "image_format": "slices2d"} for r in _rows(3, diagnosis3="normal")],
                   [{**r, "image_format": "slices2d"} for r in _rows(3, diagnosis3="cap")],
                   [{**r, "image_format": "image2d"} for r in _rows(3, diagnosis3="covid19", **lesion)])
    plan = _plan(index)
    assert {s for s, d in plan.items() if d.runs} == {"twod"}
    assert "over 0 CT volumes and 9 2D images/slice folders" in plan["twod"].reason
    assert not plan["deepsc"].runs and "0 volumes with a lesion mask" in plan["deepsc"].reason
    # 2D images complete volumes that alone lack a class
    volumes = _index(_rows(3, diagnosis3="covid19", **lesion), _rows(3, diagnosis3="cap", **lesion),
                     [{**r, "image_format": "image2d"} for r in _rows(3, diagnosis3="normal")])
    plan = _plan(volumes)
    assert plan["twod"].runs and not plan["deepsc"].runs and plan["cohort"].reason == "6 CT volumes"
    # without lesion masks anywhere the 2D models cannot segment
    no_masks = _index(*([{**r, "image_format": "image2d"} for r in _rows(3, diagnosis3=d)]
                        for d in ("normal", "cap", "covid19")))
    assert not _plan(no_masks)["twod"].runs


def test_class_counts_ignore_blanks_and_float_spellings():
    index = pd.DataFrame({"nat": ["1", "1.0", "", " ", "0", None]})
    assert class_counts(index, "nat") == {"0": 1, "1": 2}
    assert class_counts(index, "missing") == {}


def test_entry_point_writes_markdown_and_json(tmp_path):
    index = _index(_rows(1, diagnosis3="covid19", ct="1", nat="1"))
    index_path = tmp_path / "index.csv"
    index.to_csv(index_path, index=False)
    config = validate({"datasets": ["covid_ct_md"], "exclude_subjects": ["s000"]})
    out_md, out_json = tmp_path / "plan.md", tmp_path / "plan.json"
    assert main(["--index", str(index_path), "--config", json.dumps(config), "--out-md", str(out_md),
                 "--out-json", str(out_json)]) == 0
    decisions = json.loads(out_json.read_text(encoding="utf-8"))
    assert not any(d["runs"] for d in decisions)  # the only subject was excluded
    assert "| cohort | no |" in out_md.read_text(encoding="utf-8")


def _deep_update(base: dict, overlay: dict) -> dict:
    """As Snakemake merges a --configfile overlay into the config."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = _deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.mark.parametrize("overlay", [None, "config/smoke.yaml"])
def test_the_synthetic_configs_run_every_stage(overlay):
    """The built-in cohort carries every label and mask: the demo and the smoke run drop no stage."""
    import yaml

    from covidmtl.synthetic.cohort import sample_clinical

    config = yaml.safe_load(open("config/config.yaml", encoding="utf-8"))
    if overlay:
        config = _deep_update(config, yaml.safe_load(open(overlay, encoding="utf-8")))
    config = validate(config)
    clinical = sample_clinical(config["synthetic"])
    index = clinical.assign(image_format="nifti", lung_mask_path="lung.nii.gz", lesion_mask_path="lesion.nii.gz")
    plan = _plan(index.astype(str), **{k: config[k] for k in ("split", "classical", "stats")})
    assert all(d.runs for d in plan.values()), [d for d in plan.values() if not d.runs]
