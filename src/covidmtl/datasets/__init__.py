"""Dataset adapters: each turns a dataset's raw layout into one index table.

The index is what curation reads, with the same columns for every dataset, so the
synthetic cohort and a real download look identical from curation onwards.
Label columns may be empty where a dataset does not have that label.
"""

INDEX_COLUMNS = [
    "subject_id",        # unique across datasets (adapters prefix their ids)
    "patient_id",        # pseudonymous; scans of one patient share it (patient-disjoint splits)
    "dataset",
    "hospital",
    "age",
    "sex",
    "morbidity",         # control | suspected | mild | regular | severe | critically_ill
    "diagnosis3",        # covid19 | cap | normal
    "ct",                # 1 = COVID-19 positive by radiology
    "nat",               # 1 = COVID-19 positive by nucleic acid test
    "severity",          # 0 control/suspected, 1 mild/regular, 2 severe/critically ill
    "image_format",      # nifti | dicom
    "image_path",        # NIfTI file or DICOM series folder
    "lung_mask_path",    # ground-truth lung mask (NIfTI) or empty
    "lesion_mask_path",  # ground-truth lesion mask (NIfTI) or empty
    "source_dir",        # folder the subject's raw files live in
]

LABEL_COLUMNS = ["morbidity", "diagnosis3", "ct", "nat", "severity"]
