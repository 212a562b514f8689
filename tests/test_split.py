"""Patient-disjoint, stratified, reproducible train/test split and Table 1."""

import pandas as pd

from covidmtl.cohort_table import cohort_table
from covidmtl.config import validate
from covidmtl.split import patient_split
from covidmtl.synthetic.cohort import sample_clinical


def cohort(n=120, seed=7):
    params = validate({})["synthetic"] | {"n_subjects": n, "seed": seed}
    return sample_clinical(params)


def test_split_is_patient_disjoint_and_70_30():
    manifest = cohort()
    split = patient_split(manifest, 0.3, "nat", seed=42)
    assert split.subject_id.tolist() == sorted(manifest.subject_id)
    per_patient = split.groupby("patient_id").split.nunique()
    assert (per_patient == 1).all(), "a patient ended up in both sets"
    patients_test = split.drop_duplicates("patient_id").split.eq("test").mean()
    assert abs(patients_test - 0.3) < 0.02


def test_split_is_stratified_by_nat():
    manifest = cohort(200)
    split = patient_split(manifest, 0.3, "nat", seed=42).merge(manifest[["subject_id", "nat"]])
    rates = split.drop_duplicates("patient_id").groupby("split").nat.mean()
    assert abs(rates["train"] - rates["test"]) < 0.03


def test_split_is_reproducible_and_seed_dependent():
    manifest = cohort()
    a = patient_split(manifest, 0.3, "nat", seed=42)
    b = patient_split(manifest, 0.3, "nat", seed=42)
    c = patient_split(manifest, 0.3, "nat", seed=43)
    pd.testing.assert_frame_equal(a, b)
    assert not a.split.equals(c.split)


def test_tiny_cohort_falls_back_to_an_unstratified_split():
    manifest = cohort(n=6).head(3)
    split = patient_split(manifest, 0.3, "nat", seed=1)
    assert set(split.split) <= {"train", "test"} and (split.split == "train").any()


def test_table1_counts_match_the_cohort():
    manifest = cohort()
    split = patient_split(manifest, 0.3, "nat", seed=42)
    table = cohort_table(manifest, split)
    scans = table[(table.characteristic == "Scans")].iloc[0]
    assert int(scans["All"]) == len(manifest)
    assert int(scans["Train"]) + int(scans["Test"]) == len(manifest)
    nat_pos = table[(table.characteristic.str.contains("NAT")) & (table.value == "positive")].iloc[0]
    assert nat_pos["All"].startswith(f"{int(manifest.nat.sum())} (")
    hospitals = set(manifest.hospital)
    assert hospitals <= set(table.columns)
    assert "±" in table[table.characteristic == "Age (years)"].iloc[0]["All"]
