"""The built-in synthetic cohort: clinical labels, per-subject images, and the raw layout.

The cohort is written exactly like a downloaded dataset (``results/raw/synthetic/``):

    clinical.csv                  one row per scan: ids, hospital, age, sex, labels
    subjects/<id>/ct.nii.gz       NIfTI volume in HU ...
    subjects/<id>/dicom/*.dcm     ... or a DICOM series (some JPEG Lossless), shuffled file names
    subjects/<id>/lung_mask.nii.gz, lesion_mask.nii.gz, lesions.json   ground truth

Labels follow the structure of COVID-MTL's HUST-19 cohort (its Table 1): a morbidity
group (control, suspected, mild, regular, severe, critically ill) from which follow
COVID by radiology (CT), COVID by nucleic acid test (NAT; CT-positive but NAT-negative
= suspected) and the 3-class severity; controls are split into normal subjects and
community-acquired pneumonia (CAP) for the DeepSC-COVID 3-class diagnosis.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from covidmtl.config import parse_params

log = logging.getLogger(__name__)

DATASET = "synthetic"
GROUPS = ["normal", "cap", "suspected", "mild", "regular", "severe", "critically_ill"]
# group -> (morbidity, diagnosis3, ct, nat, severity)
GROUP_LABELS = {
    "normal": ("control", "normal", 0, 0, 0),
    "cap": ("control", "cap", 0, 0, 0),
    "suspected": ("suspected", "covid19", 1, 0, 0),
    "mild": ("mild", "covid19", 1, 1, 1),
    "regular": ("regular", "covid19", 1, 1, 1),
    "severe": ("severe", "covid19", 1, 1, 2),
    "critically_ill": ("critically_ill", "covid19", 1, 1, 2),
}
# Older patients are over-represented among severe cases (COVID-MTL Table 1 reports age per group).
AGE_SHIFT = {"severe": 8.0, "critically_ill": 12.0, "cap": 4.0}
# A share of patients has a second (follow-up) scan, so that patient-disjoint splits matter.
FOLLOW_UP_FRACTION = 0.1


def subject_id(index: int) -> str:
    return f"syn-{index:04d}"


def group_counts(n: int, proportions: dict[str, float]) -> dict[str, int]:
    """Exact counts per group by largest remainder, so small cohorts keep the proportions."""
    weights = np.array([proportions[g] for g in GROUPS], dtype=float)
    if weights.sum() <= 0:
        raise ValueError("synthetic.morbidity_proportions must not all be zero")
    raw = weights / weights.sum() * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts))[: n - counts.sum()]:
        counts[i] += 1
    return dict(zip(GROUPS, counts.tolist()))


def sample_clinical(params: dict) -> pd.DataFrame:
    """One row per scan with ids, demographics and labels; deterministic from ``params['seed']``."""
    n = int(params["n_subjects"])
    rng = np.random.default_rng(params["seed"])
    n_follow_up = int(round(n * FOLLOW_UP_FRACTION))
    n_patients = n - n_follow_up
    counts = group_counts(n_patients, params["morbidity_proportions"])
    groups = np.array([g for g in GROUPS for _ in range(counts[g])])
    rng.shuffle(groups)

    patients = []
    for p, group in enumerate(groups):
        male = rng.random() < params["male_fraction"] + (0.08 if group in {"severe", "critically_ill"} else 0.0)
        age = rng.normal(params["age_mean"] + AGE_SHIFT.get(group, 0.0), params["age_sd"])
        patients.append(
            {
                "patient_id": f"synP{p + 1:04d}",
                "group": group,
                "sex": "M" if male else "F",
                "age": int(np.clip(round(age), 18, 92)),
                "hospital": params["hospitals"][int(rng.integers(len(params["hospitals"])))],
            }
        )
    scans = patients + [dict(patients[i]) for i in rng.choice(n_patients, size=n_follow_up, replace=False)]

    n_dicom = int(round(n * params["dicom_fraction"]))
    formats = np.array(["dicom"] * n_dicom + ["nifti"] * (n - n_dicom))
    rng.shuffle(formats)
    rows = []
    for i, scan in enumerate(scans):
        morbidity, diagnosis3, ct, nat, severity = GROUP_LABELS[scan["group"]]
        rows.append(
            {
                "subject_id": subject_id(i + 1),
                **scan,
                "morbidity": morbidity,
                "diagnosis3": diagnosis3,
                "ct": ct,
                "nat": nat,
                "severity": severity,
                "image_format": str(formats[i]),
                # Half the DICOM series use JPEG Lossless, as many scanners (and COVID-CT-MD) do.
                "dicom_compression": "jpeg_lossless" if formats[i] == "dicom" and i % 2 == 0 else "none",
                "seed": int(np.random.SeedSequence([params["seed"], i + 1]).generate_state(1)[0]),
            }
        )
    return pd.DataFrame(rows)


def image_relpath(row: pd.Series | dict) -> str:
    """Where a subject's image lives inside the raw dataset folder."""
    return f"subjects/{row['subject_id']}/" + ("dicom" if row["image_format"] == "dicom" else "ct.nii.gz")


def _dicom_age(age) -> str:
    return f"{int(age):03d}Y"


def write_dicom_series(
    image: sitk.Image, out_dir: Path, row: dict, compression: str, rng: np.random.Generator
) -> None:
    """Write a 3D int16 HU image as a CT DICOM series, one file per slice.

    File names are shuffled (slice order must come from the headers, as with real
    exports) and the headers carry fake direct identifiers so the de-identification of
    the pipeline is exercised. Pixels are stored as signed HU (GDCM writes the rescale
    tags itself); unsigned storage with an intercept is covered by the real studies.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    stored = sitk.Clamp(image, sitk.sitkInt16, -1024, 3071)
    direction = image.GetDirection()
    iop = "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7]))
    uid_root = "1.2.826.0.1.3680043.8.498."  # pydicom's example root, fine for synthetic data
    study_uid = uid_root + str(int(rng.integers(1e12, 1e13)))
    series_uid = study_uid + ".1"
    frame_uid = study_uid + ".2"
    common = {
        "0008|0060": "CT",
        "0008|0070": "covidmtl synthetic scanner",
        "0008|1030": "Chest CT (synthetic)",
        "0010|0010": f"SYNTHETIC^PATIENT^{row['patient_id']}",
        "0010|0020": f"MRN{int(rng.integers(1e6, 1e7))}",
        "0010|0030": "19700101",
        "0010|0040": row["sex"],
        "0010|1010": _dicom_age(row["age"]),
        "0008|0080": row["hospital"],
        "0018|0015": "CHEST",
        "0018|0050": f"{image.GetSpacing()[2]:.3f}",
        "0018|0060": "120",
        "0020|000d": study_uid,
        "0020|000e": series_uid,
        "0020|0052": frame_uid,
        "0020|0037": iop,
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    if compression == "jpeg_lossless":
        writer.SetUseCompression(True)
        writer.SetCompressor("JPEG")  # GDCM's JPEG compressor writes JPEG Lossless, Process 14
    n_slices = image.GetSize()[2]
    names = rng.permutation(n_slices)
    for k in range(n_slices):
        slice_img = stored[:, :, k]
        for tag, value in common.items():
            slice_img.SetMetaData(tag, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        slice_img.SetMetaData("0020|0032", "\\".join(f"{v:.4f}" for v in position))
        slice_img.SetMetaData("0020|1041", f"{position[2]:.4f}")
        slice_img.SetMetaData("0020|0013", str(k + 1))
        slice_img.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        writer.SetFileName(str(out_dir / f"IM{names[k]:05d}.dcm"))
        writer.Execute(slice_img)


def write_subject(row: dict, phantom_params: dict, subject_dir: Path) -> dict:
    """Generate one subject's CT and ground truth and write them in the raw layout."""
    from covidmtl.synthetic.phantom import PhantomParams, generate_subject

    params = PhantomParams(
        size_scale=phantom_params["size_scale"],
        inplane_spacing_mm=tuple(phantom_params["inplane_spacing_mm"]),
        slice_spacing_mm=tuple(phantom_params["slice_spacing_mm"]),
        noise_hu=phantom_params["noise_hu"],
    )
    labels = {k: row[k] for k in ("diagnosis3", "morbidity", "age", "sex")}
    synthetic = generate_subject(labels, params, seed=int(row["seed"]))
    subject_dir.mkdir(parents=True, exist_ok=True)
    if row["image_format"] == "dicom":
        rng = np.random.default_rng(int(row["seed"]) + 1)
        write_dicom_series(synthetic.ct, subject_dir / "dicom", row, row["dicom_compression"], rng)
    else:
        sitk.WriteImage(synthetic.ct, str(subject_dir / "ct.nii.gz"), useCompression=True)
    sitk.WriteImage(synthetic.lung_mask, str(subject_dir / "lung_mask.nii.gz"), useCompression=True)
    sitk.WriteImage(synthetic.lesion_mask, str(subject_dir / "lesion_mask.nii.gz"), useCompression=True)
    (subject_dir / "lesions.json").write_text(json.dumps(synthetic.lesions, indent=1, default=float), encoding="utf-8")
    return {"subject_id": row["subject_id"], "n_lesions": len(synthetic.lesions), "size": synthetic.ct.GetSize()}


def clinical_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="covidmtl synth-clinical", description="Sample the synthetic cohort's clinical table.")
    parser.add_argument("--params", required=True, help="JSON of the `synthetic` config section")
    parser.add_argument("--out", required=True, type=Path, help="clinical.csv of the raw synthetic dataset")
    args = parser.parse_args(argv)
    clinical = sample_clinical(parse_params(args.params))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    clinical.to_csv(args.out, index=False)
    log.info("synthetic cohort: %d scans of %d patients", len(clinical), clinical.patient_id.nunique())
    return 0


def subject_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="covidmtl synth-subject", description="Generate one synthetic subject in the raw layout.")
    parser.add_argument("--subject", required=True)
    parser.add_argument("--clinical", required=True, type=Path)
    parser.add_argument("--params", required=True, help="JSON of the `synthetic` config section")
    parser.add_argument("--out-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    clinical = pd.read_csv(args.clinical)
    rows = clinical[clinical.subject_id == args.subject]
    if rows.empty:
        raise SystemExit(f"subject {args.subject} is not in {args.clinical}")
    info = write_subject(rows.iloc[0].to_dict(), parse_params(args.params), args.out_dir)
    log.info("wrote %s", info)
    return 0
