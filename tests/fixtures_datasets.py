"""Tiny copies of each public dataset in its real layout (file and folder names, CSV columns).

Images are a few kilobytes; the layouts follow the datasets' documentation as described in
the adapters' docstrings and docs/datasets.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image

from covidmtl.synthetic.cohort import write_dicom_series

from conftest import make_ct

SHAPE = (20, 24, 28)  # z, y, x: enough slices for curation's minimum of 16


def tiny_ct(seed: int = 0, spacing=(1.2, 1.2, 2.5)) -> tuple[sitk.Image, sitk.Image]:
    return make_ct(shape_zyx=SHAPE, spacing=spacing, seed=seed)


def write_image(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=path.name.endswith(".gz"))
    return path


def label_mask(reference: sitk.Image, labels=(1, 2, 3), seed: int = 0) -> sitk.Image:
    """A multi-label mask on the reference grid (blocks of each label value)."""
    array = np.zeros(sitk.GetArrayViewFromImage(reference).shape, np.uint8)
    z, y, x = array.shape
    for i, value in enumerate(labels):
        array[z // 3: 2 * z // 3, y // 3: 2 * y // 3, (i * x) // len(labels): ((i + 1) * x) // len(labels)] = value
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(reference)
    return mask


def write_png(path: Path, seed: int = 0, size=(16, 16), mode="L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = size + ((3,) if mode == "RGB" else ())
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(path)
    return path


# --------------------------------------------------------------------------- COVID-CT-MD

def build_covid_ct_md(root: Path, studies=None, absent_listed=("P002", "cap002")) -> dict[str, str]:
    """Class folders of DICOM series named '<PatientID>_<n>.dcm' (as in the dataset), Index.csv
    listing the labelled (COVID-19, CAP) patients, some of them absent, and the label arrays.
    Returns folder name -> PatientID written in the headers."""
    studies = studies or [("COVID-19 subjects", "P001"), ("Cap subjects", "cap001"), ("Normal subjects", "normal001")]
    patient_ids = {}
    for seed, (class_folder, name) in enumerate(studies):
        folder = root / class_folder / name
        image, _ = tiny_ct(seed)
        write_dicom_series(image, folder, {"patient_id": name, "sex": "F", "age": 50 + seed, "hospital": "H"},
                           "none", np.random.default_rng(seed))
        files = sorted(folder.glob("*.dcm"))
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(files[0]))
        reader.ReadImageInformation()
        patient_id = reader.GetMetaData("0010|0020").strip()
        for k, path in enumerate(files, start=1):
            path.rename(folder / f"{patient_id}_{k}.dcm")
        patient_ids[name] = patient_id
    labelled = [(n, "COVID-19" if c.lower().startswith("covid") else "CAP")
                for c, n in studies if not c.lower().startswith("normal")]
    labelled += [(n, "COVID-19" if n.startswith("P") else "CAP") for n in absent_listed]
    lines = ["Label Index,Diagnosis,Relative Path,Folder/ID"]
    lines += [f"{i},{d},./{d}/,{n}" for i, (n, d) in enumerate(labelled)]
    (root / "Index.csv").write_text("\n".join(lines))  # no final newline, as in the dataset
    slice_labels = np.zeros((len(labelled), 200), np.int32)
    slice_labels[:, 5:9] = 1
    np.save(root / "Slice-level-labels-updated-1.npy", slice_labels)
    np.save(root / "Lobe-level-labels-updated-1.npy", np.repeat(slice_labels[..., None], 5, axis=2).astype(float))
    return patient_ids


# --------------------------------------------------------------------------- MosMedData

def build_mosmed(root: Path) -> Path:
    base = root / "COVID19_1110"
    for seed, (category, study) in enumerate([("CT-0", "study_0001"), ("CT-1", "study_0255"), ("CT-3", "study_0900")]):
        image, _ = tiny_ct(seed)
        write_image(image, base / "studies" / category / f"{study}.nii.gz")
        if category == "CT-1":
            write_image(label_mask(image, (1,)), base / "masks" / f"{study}_mask.nii.gz")
    return base


# --------------------------------------------------------------------------- COVID-19-CT-Seg (Ma et al.)

def build_covid19_ct_seg(root: Path) -> None:
    cases = [("coronacases_org_001", "coronacases_001"),
             ("radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm", "radiopaedia_4_85506_1")]
    for seed, (image_name, mask_name) in enumerate(cases):
        image, lung = tiny_ct(seed)
        write_image(image, root / "COVID-19-CT-Seg_20cases" / f"{image_name}.nii.gz")
        left_right = label_mask(image, (1, 2))  # 1 left lung, 2 right lung
        write_image(left_right, root / "Lung_Mask" / f"{mask_name}.nii.gz")
        write_image(label_mask(image, (1,)), root / "Infection_Mask" / f"{mask_name}.nii.gz")


# --------------------------------------------------------------------------- MedSeg

def build_medseg(root: Path) -> None:
    rng = np.random.default_rng(0)
    stack = sitk.GetImageFromArray(rng.integers(-1000, 200, (4, 16, 16)).astype(np.int16))  # 4 slices of 16 x 16
    stack.SetSpacing((0.7, 0.7, 1.0))
    write_image(stack, root / "tr_im.nii.gz")
    write_image(label_mask(stack, (1, 2, 3)), root / "tr_mask.nii.gz")
    test = sitk.GetImageFromArray(rng.integers(-1000, 200, (2, 16, 16)).astype(np.int16))
    write_image(test, root / "val_im.nii.gz")
    image, lung = tiny_ct(3)
    write_image(image, root / "rp_im" / "1.nii.gz")
    write_image(label_mask(image, (1, 2, 3)), root / "rp_msk" / "1.nii.gz")
    write_image(lung, root / "rp_lung_msk" / "1.nii.gz")


# --------------------------------------------------------------------------- UCSD COVID-CT

UCSD_SPLITS = {
    ("COVID", "train"): ["2020.03.22.20040782-p25-1542.png", "bmj.m606.full-p4-22%0.png", "bmj.m606.full-p4-22%1.png"],
    ("COVID", "val"): ["kjr-21-e24-p2-8.png"],
    ("COVID", "test"): ["PIIS0140673620303603%0.png"],
    ("NonCOVID", "train"): ["1%0.jpg", "LIDC_IDRI_1.png"],
    ("NonCOVID", "val"): ["14.png"],
    ("NonCOVID", "test"): ["996.png"],
}


def build_ucsd(root: Path, unsplit_image: bool = True) -> Path:
    base = root / "COVID-CT-master"
    for seed, ((cls, split), names) in enumerate(UCSD_SPLITS.items()):
        folder = base / "Images-processed" / ("CT_COVID" if cls == "COVID" else "CT_NonCOVID")
        for k, name in enumerate(names):
            write_png(folder / name, seed * 10 + k, mode="RGB" if name.endswith(".jpg") else "L")
        split_file = base / "Data-split" / cls / f"{split}CT_{cls}.txt"
        split_file.parent.mkdir(parents=True, exist_ok=True)
        split_file.write_text("\n".join(names) + "\n")
    if unsplit_image:
        write_png(base / "Images-processed" / "CT_NonCOVID" / "extra.png", 99)
    return base


# --------------------------------------------------------------------------- iCTCF / HUST-19

ICTCF_CLINICAL = """Patient ID,Hospital,Age,Gender,SARS-CoV-2 nucleic acids,Computed tomography (CT),Morbidity outcome
Patient 1,Union,61,Male,Positive,Positive,Severe
Patient 2,Liyuan,45,Female,Negative,Positive,Suspected
Patient 3,Union,38,Female,Negative,Negative,Control (Community-acquired pneumonia)
Patient 4,Union,70,Male,Positive,Positive,Critically ill
"""


def build_ictcf(root: Path, clinical: str = ICTCF_CLINICAL) -> None:
    (root).mkdir(parents=True, exist_ok=True)
    (root / "clinical.csv").write_text(clinical)
    for number in (1, 2, 3):  # patient 4 is listed but has no CT here
        for k in range(3):
            write_png(root / "CT" / f"Patient {number}" / f"{k + 1}.jpg", number * 10 + k, mode="RGB")


# --------------------------------------------------------------------------- CC-CCII

def build_cc_ccii(root: Path, metadata_label: str | None = None) -> None:
    scans = [("NCP", "1001", "3001"), ("NCP", "1001", "3002"), ("CP", "1001", "3101"), ("Normal", "2001", "3201")]
    lines = ["zip_file,label,patient_id,scan_id,n_slice"]
    for seed, (label, patient, scan) in enumerate(scans):
        for k in range(2):
            write_png(root / label / patient / scan / f"{k:04d}.png", seed * 10 + k)
        lines.append(f"{label}-1.zip,{metadata_label or label},{patient},{scan},2")
    (root / "unzip_filenames.csv").write_text("\n".join(lines) + "\n")
