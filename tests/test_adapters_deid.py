"""De-identification: the real COVID-CT-MD studies go mirror -> index -> curation -> manifest into a
results/ folder, and no identifier read from their DICOM headers (nor the PatientID-named file
prefix) appears in any file written there, logs included."""

import gzip
import json
import logging
from pathlib import Path

import pytest
import SimpleITK as sitk

from covidmtl.config import validate
from covidmtl.curate import main as curate_main
from covidmtl.datasets.index import main as index_main
from covidmtl.download import DownloadOptions, download_dataset, load_registry
from covidmtl.manifest import main as manifest_main

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
IDENTIFYING_TAGS = {
    "PatientID": "0010|0020",
    "PatientName": "0010|0010",
    "PatientBirthDate": "0010|0030",
    "StudyInstanceUID": "0020|000d",
    "SeriesInstanceUID": "0020|000e",
    "StudyDate": "0008|0020",
    "InstitutionName": "0008|0080",
}


def header_identifiers(study: Path) -> dict[str, str]:
    """Identifier values in a study's headers, and the file-name prefix (the PatientID in this dataset)."""
    first = sorted(study.glob("*.dcm"))[0]
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(first))
    reader.ReadImageInformation()
    found = {name: reader.GetMetaData(tag).strip() for name, tag in IDENTIFYING_TAGS.items()
             if reader.HasMetaDataKey(tag) and len(reader.GetMetaData(tag).strip()) >= 4}
    found["file name prefix"] = first.name.rsplit("_", 1)[0]
    return found


def readable_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


STUDIES = (("COVID-19 subjects", "P001"), ("Cap subjects", "cap001"), ("Normal subjects", "normal001"))


def study_identifiers(real_ct_dir: Path) -> dict[str, str]:
    """Identifier values of the three shared studies, keyed '<study> <tag name>'."""
    return {f"{study} {name}": value for class_dir, study in STUDIES
            for name, value in header_identifiers(real_ct_dir / class_dir / study).items()}


def identifier_leaks(results: Path, identifiers: dict[str, str]) -> list[tuple[str, str]]:
    """(file under results, identifier name) for every identifier value found in a written file."""
    return [(str(p.relative_to(results)), what) for p in results.rglob("*") if p.is_file()
            for what, value in identifiers.items() if value.encode() in readable_bytes(p)]


def test_no_header_identifier_reaches_results(real_ct_dir, tmp_path):
    raw = tmp_path / "resources" / "raw" / "covid_ct_md"
    results = tmp_path / "results"
    (results / "logs").mkdir(parents=True)
    handler = logging.FileHandler(results / "logs" / "pipeline.log")
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        registry = load_registry(REPO / "config" / "datasets.yaml")
        download_dataset(registry["covid_ct_md"], raw, real_ct_dir.parent, tmp_path / "lock.json",
                         DownloadOptions(progress=False))
        assert index_main(["--dataset", "covid_ct_md", "--raw-dir", str(raw), "--out", str(raw / "index.csv")]) == 0
        params = validate({})["curation"] | {"spacing_mm": [3.0, 3.0, 3.0]}
        subjects = ["ctmd-P001", "ctmd-cap001", "ctmd-normal001"]
        for subject in subjects:
            assert curate_main(["--subject", subject, "--index", str(raw / "index.csv"), "--params", json.dumps(params),
                                "--out-dir", str(results / "curated" / subject)]) == 0
        assert manifest_main(["--meta", *[str(results / "curated" / s / "meta.json") for s in subjects],
                              "--out", str(results / "manifest.csv")]) == 0
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(old_level)

    identifiers = study_identifiers(real_ct_dir)
    assert any(k.endswith("PatientID") for k in identifiers), "the headers should carry a PatientID to look for"

    written = [p for p in results.rglob("*") if p.is_file()]
    assert len(written) >= 3 * 2 + 2  # ct.nii.gz and meta.json per subject, the manifest, the log
    leaks = identifier_leaks(results, identifiers)
    assert not leaks, f"identifiers from the DICOM headers reached results/: {leaks}"
    # what is allowed through: age and sex (and the acquisition facts)
    meta = json.loads((results / "curated" / "ctmd-P001" / "meta.json").read_text(encoding="utf-8"))
    assert meta["age"] == 39 and meta["sex"] == "M"
