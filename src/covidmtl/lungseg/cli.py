"""Command-line entry points of the lung-segmentation stage (thin wrappers).

``covidmtl lungseg``         one subject: masks, masked lung volume, metrics, QC image
``covidmtl lungseg-table2``  COVID-MTL Table 2 from the subjects' metrics.json files
``covidmtl lungseg-figure2`` COVID-MTL Figure 2 from a few subjects' outputs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from covidmtl.errors import PipelineInputError
from covidmtl.lungseg.classical import STAGE
from covidmtl.lungseg.params import LungSegParams


def _params(text: str | None, subject: str | None) -> LungSegParams:
    try:
        return LungSegParams.from_json(text)
    except (ValueError, TypeError) as err:  # json.JSONDecodeError is a ValueError
        raise PipelineInputError(stage=STAGE, subject=subject, reason=f"bad --params: {err}",
                                 hint="pass the lungseg section of the config as JSON") from err


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="covidmtl lungseg", description="Lung segmentation of one curated CT (COVID-MTL section 2.1).")
    parser.add_argument("--subject", required=True, help="subject id (used in messages and outputs)")
    parser.add_argument("--ct", required=True, type=Path, help="curated CT (ct.nii.gz, HU)")
    parser.add_argument("--gt-lung", type=Path, default=None, help="ground-truth lung mask on the CT grid (masks/lung.nii.gz); metrics are computed when the file exists (a missing file means: no ground truth)")
    parser.add_argument("--params", default="{}", help="JSON of the 'lungseg' config section")
    parser.add_argument("--threads", type=int, default=1, help="worker threads (refinement slices, SimpleITK filters)")
    parser.add_argument("--out-dir", required=True, type=Path, help="folder for lung_classical/lung_refined/lung_volume/lung_volume_mask .nii.gz, metrics.json, qc.png")
    parser.add_argument("--no-qc", action="store_true", help="skip the QC overlay image")
    args = parser.parse_args(argv)
    from covidmtl.lungseg.pipeline import run_subject

    params = _params(args.params, args.subject)
    gt = args.gt_lung if args.gt_lung is not None and str(args.gt_lung) not in {"", "-"} else None
    run_subject(args.subject, args.ct, args.out_dir, params, gt, args.threads, write_qc=not args.no_qc)
    return 0


def table2_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="covidmtl lungseg-table2", description="COVID-MTL Table 2 (lung segmentation quality).")
    parser.add_argument("--metrics", nargs="+", required=True, type=Path, help="metrics.json files written by 'covidmtl lungseg'")
    parser.add_argument("--out-stem", required=True, type=Path, help="writes <stem>.csv, <stem>.md and <stem>_per_subject.csv")
    parser.add_argument("--manifest", type=Path, help="cohort manifest: adds rows per diagnosis")
    args = parser.parse_args(argv)
    from covidmtl.lungseg.evaluate import write_table2

    table = write_table2(args.metrics, args.out_stem, manifest=args.manifest)
    print(table.to_string(index=False))
    return 0


def figure2_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="covidmtl lungseg-figure2", description="COVID-MTL Figure 2 (classical vs refined lung segmentation).")
    parser.add_argument("--subject-dirs", nargs="+", required=True, type=Path, help="output folders of 'covidmtl lungseg'")
    parser.add_argument("--curated-dirs", nargs="+", required=True, type=Path, help="curated folders (ct.nii.gz, masks/), same order")
    parser.add_argument("--out", required=True, type=Path, help="PNG path; a PDF is written beside it")
    parser.add_argument("--max-subjects", type=int, default=4, help="panels at most")
    parser.add_argument("--scan-subjects", type=int, default=40,
                        help="subjects (in the order given) examined to choose the panels: those where the refinement recovers most lesion voxels (else where the methods differ most)")
    args = parser.parse_args(argv)
    if len(args.subject_dirs) != len(args.curated_dirs):
        parser.error("--subject-dirs and --curated-dirs must have the same length")
    from covidmtl.lungseg.figures import choose_figure2_panels, write_figure2

    pairs = list(zip(args.subject_dirs, args.curated_dirs))[: args.scan_subjects]
    panels = choose_figure2_panels(pairs, args.max_subjects)
    png, pdf = write_figure2(panels, args.out)
    print(json.dumps({"png": str(png), "pdf": str(pdf), "subjects": [p["subject"] for p in panels]}))
    return 0
