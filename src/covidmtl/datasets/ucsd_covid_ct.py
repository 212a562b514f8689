"""UCSD COVID-CT (Zhao et al., arXiv 2003.13865; github.com/UCSD-AI4H/COVID-CT).

Layout of the repository (the image zips extracted in place)::

    Images-processed/CT_COVID/*.png|jpg         349 CT images with COVID-19 findings (from papers)
    Images-processed/CT_NonCOVID/*.png|jpg      397 CT images without COVID-19
    Data-split/COVID/{train,val,test}CT_COVID.txt        official split: one file name per line
    Data-split/NonCOVID/{train,val,test}CT_NonCOVID.txt
    COVID-CT-MetaInfo.xlsx                               patient ids of the COVID images (not read:
                                                         needs openpyxl, which the environment lacks)

These are 2D images: rows get ``image_format='image2d'`` and go to the 2D slice dataset, not
to curation. The patient of an image is not read from the metadata workbook; images cut from
one figure ('<name>%0.png', '<name>%1.png', ...) share a patient id, everything else is its own
patient. Use the official split, which the authors made patient-disjoint.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from covidmtl.datasets.layout import (IMAGE2D, find_dir, finish, has_images, image_files, input_error, require_raw_dir,
                                      row, safe_id)

log = logging.getLogger(__name__)

DATASET = "ucsd_covid_ct"
PREFIX = "ucsd"
# class folder -> (tag, diagnosis3, ct, split-file class name)
CLASSES = {
    "CT_COVID": ("covid", "covid19", 1, "COVID"),
    "CT_NonCOVID": ("noncovid", None, 0, "NonCOVID"),  # normal and other diseases mixed: diagnosis3 unknown
}
SPLITS = ("train", "val", "test")
PANEL_SUFFIX = re.compile(r"%\d+$")


def read_splits(split_dir: Path) -> dict[tuple[str, str], str]:
    """(class tag, file name) -> split, from the official Data-split lists."""
    splits = {}
    for folder_name, (tag, _, _, split_class) in CLASSES.items():
        for split in SPLITS:
            path = split_dir / split_class / f"{split}CT_{split_class}.txt"
            if not path.is_file():
                raise input_error(DATASET, f"official split list {path.relative_to(split_dir.parent)} is missing",
                                  path, "download the whole repository (Data-split/ included)")
            for line in path.read_text(encoding="utf-8").splitlines():
                name = line.strip()
                if not name:
                    continue
                previous = splits.setdefault((tag, name), split)
                if previous != split:
                    raise input_error(DATASET, f"{name} is listed in both the {previous} and the {split} split", path)
    return splits


def build_index(raw_dir: Path) -> pd.DataFrame:
    raw_dir = require_raw_dir(DATASET, raw_dir)
    split_dir = find_dir(raw_dir, ["Data-split"])
    if split_dir is None:
        raise input_error(DATASET, "the official split folder 'Data-split' is missing", raw_dir,
                          "download the whole UCSD-AI4H/COVID-CT repository archive")
    splits = read_splits(split_dir)
    rows, unsplit = [], 0
    for folder_name, (tag, diagnosis, ct, _) in CLASSES.items():
        folder = find_dir(raw_dir, [folder_name], accept=has_images)
        if folder is None:
            raise input_error(DATASET, f"no image folder {folder_name!r} holding images found", raw_dir,
                              f"extract Images-processed/{folder_name}.zip (the downloader does this)")
        for path in image_files(folder):
            split = splits.pop((tag, path.name), None)
            unsplit += split is None
            patient = PANEL_SUFFIX.sub("", path.stem)
            rows.append(row(subject_id=f"{PREFIX}-{tag}-{safe_id(path.stem)}",
                            patient_id=f"{PREFIX}-{tag}-{safe_id(patient)}", diagnosis3=diagnosis, ct=ct,
                            image_format=IMAGE2D, image_path=str(path), lung_mask_path="", lesion_mask_path="",
                            source_dir=str(folder), source_label=folder_name, official_split=split))
    index = finish(DATASET, rows, raw_dir)
    log.info("%s: %d 2D images (%s); official split: %s; %d image(s) in no split list, %d listed name(s) without "
             "an image", DATASET, len(index), index.source_label.value_counts().to_dict(),
             index.official_split.value_counts().to_dict(), unsplit, len(splits))
    return index
