"""COVID-19 CT Lung and Infection Segmentation Dataset (Ma et al., Zenodo 10.5281/zenodo.3757476).

Layout after extracting the four Zenodo archives (each into a folder of its own name)::

    COVID-19-CT-Seg_20cases/coronacases_org_001.nii.gz ...                 (10 from coronacases.org)
    COVID-19-CT-Seg_20cases/radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm.nii.gz ...  (10 from Radiopaedia)
    Lung_Mask/coronacases_001.nii.gz, radiopaedia_4_85506_1.nii.gz ...     (1 left lung, 2 right lung)
    Infection_Mask/<same names>                                            (1 infection)
    Lung_and_Infection_Mask/<same names>                                   (not used)

The Kaggle copy ('ct_scans/', 'lung_mask/', 'infection_mask/', uncompressed .nii) is accepted too.
Mask names drop the image names' 'org_' / 'org_covid-19-pneumonia-' and '-dcm' parts.
All 20 patients have COVID-19. The Radiopaedia volumes were published windowed to
[-1250, 250] HU and rescaled to 0-255 (not HU): curation's intensity check rejects them
with a clear message (add them to `exclude_subjects`), which the log here announces.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from covidmtl.datasets.layout import find_dir, finish, has_nifti, input_error, nifti_files, require_raw_dir, row

log = logging.getLogger(__name__)

DATASET = "covid19_ct_seg"
PREFIX = "ctseg"
IMAGE_DIRS = ["COVID-19-CT-Seg_20cases", "ct_scans"]
LUNG_DIRS = ["Lung_Mask", "lung_mask"]
LESION_DIRS = ["Infection_Mask", "infection_mask"]
CORONACASES = re.compile(r"coronacases_org_(\d+)")
RADIOPAEDIA = re.compile(r"radiopaedia_org_covid-19-pneumonia-(\d+)_(\d+)_(\d+)-dcm")


def case_name(image_stem: str) -> tuple[str, str]:
    """(mask/case name, source site) of an image file stem."""
    if match := CORONACASES.fullmatch(image_stem):
        return f"coronacases_{match.group(1)}", "coronacases.org"
    if match := RADIOPAEDIA.fullmatch(image_stem):
        return "radiopaedia_{}_{}_{}".format(*match.groups()), "radiopaedia.org"
    return image_stem, ""


def build_index(raw_dir: Path) -> pd.DataFrame:
    raw_dir = require_raw_dir(DATASET, raw_dir)
    folders = {}
    for kind, names in (("images", IMAGE_DIRS), ("lung", LUNG_DIRS), ("lesion", LESION_DIRS)):
        folders[kind] = find_dir(raw_dir, names, accept=has_nifti)
        if folders[kind] is None:
            raise input_error(DATASET, f"folder {names[0]!r} not found", raw_dir,
                              f"extract {names[0]}.zip from the Zenodo record into {raw_dir}")
    lung = nifti_files(folders["lung"])
    lesion = nifti_files(folders["lesion"])
    rows = []
    for stem, path in nifti_files(folders["images"]).items():
        case, site = case_name(stem)
        for kind, masks in (("lung", lung), ("lesion", lesion)):
            if case not in masks:
                raise input_error(DATASET, f"no {kind} mask {case}.nii.gz for the scan {path.name}",
                                  folders[kind], "re-extract the mask archive")
        subject = f"{PREFIX}-{case}"
        rows.append(row(subject_id=subject, patient_id=subject, hospital=site, diagnosis3="covid19", ct=1,
                        image_format="nifti", image_path=str(path), lung_mask_path=str(lung[case]),
                        lesion_mask_path=str(lesion[case]), source_dir=str(folders["images"]),
                        source_label="COVID-19"))
    index = finish(DATASET, rows, raw_dir)
    n_rp = int((index.hospital == "radiopaedia.org").sum())
    log.info("%s: %d scans with lung and infection masks", DATASET, len(index))
    if n_rp:
        log.warning("%s: %d Radiopaedia scans are stored as 0-255 grey levels, not HU; curation will reject them "
                    "(list them in `exclude_subjects` to run without them): %s", DATASET, n_rp,
                    ", ".join(index.subject_id[index.hospital == "radiopaedia.org"]))
    return index
