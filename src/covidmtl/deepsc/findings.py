"""``covidmtl deepsc-findings``: the lesion statistics of DeepSC-COVID section III per class.

    covidmtl deepsc-findings --manifest results/manifest.csv --lungseg-dir results/lungseg \
        --params '<json of config "deepsc">' --out-dir results/deepsc/findings

From every scan with a lesion mask (connected components of the mask = lesions, specks
below ``findings.min_lesion_volume_mm3`` ignored) and its refined lung mask:

1. lesion count per scan;
2. total lesion volume and the spread of lesion sizes within a scan (sd and coefficient of
   variation of the lesion volumes);
3. HU distribution of the lesion voxels (histogram per class, mean HU per scan);
4. position: depth of each lesion's centroid inside the lung = its Euclidean distance (mm)
   to the lung boundary divided by the largest such distance in that lung; a lesion with
   relative depth < ``findings.peripheral_fraction`` is peripheral (outer third by
   default), else central.

COVID-19 vs CAP differences are tested with two-sided Mann-Whitney U tests (scans for the
per-scan statistics, lesions for depth). On the synthetic cohort the numbers recover what
the generator planted; on real data they say what the masks say.

Writes ``findings_lesions.csv`` (one row per lesion), ``findings_subjects.csv`` (one row per
scan), ``findings_table.{csv,md}`` (per class, with p-values), ``findings_hu_histogram.csv``
and ``figure1_findings.{png,pdf}``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage as ndi
from scipy.stats import mannwhitneyu

from covidmtl.deepsc.config import DeepSCConfig, FindingsConfig
from covidmtl.deepsc.data import CLASS_LABELS, CLASSES, check_subject_files, lung_mask_path, read_lps, read_table
from covidmtl.deepsc.data import Subject
from covidmtl.errors import PipelineInputError
from covidmtl.tables import mean_sd, write_table

log = logging.getLogger(__name__)

STAGE = "deepsc-findings"
CONNECTIVITY = {6: 1, 18: 2, 26: 3}


def lesion_statistics(hu: np.ndarray, lesion: np.ndarray, lung: np.ndarray, spacing, params: FindingsConfig
                      ) -> pd.DataFrame:
    """One row per lesion: volume (ml), mean HU, centroid (voxel), depth (mm) and relative depth."""
    structure = ndi.generate_binary_structure(3, CONNECTIVITY[params.connectivity])
    labels, n = ndi.label(lesion > 0, structure=structure)
    columns = ["lesion", "volume_ml", "mean_hu", "centroid_z", "centroid_y", "centroid_x", "depth_mm",
               "relative_depth"]
    if n == 0:
        return pd.DataFrame(columns=columns)
    voxel_mm3 = float(np.prod(spacing))
    index = np.arange(1, n + 1)
    counts = ndi.sum_labels(np.ones_like(labels, dtype=np.float64), labels, index)
    keep = index[counts * voxel_mm3 >= params.min_lesion_volume_mm3]
    if keep.size == 0:
        return pd.DataFrame(columns=columns)
    means = ndi.mean(hu.astype(np.float64), labels, keep)
    centroids = ndi.center_of_mass(np.ones_like(labels, dtype=np.float64), labels, keep)
    # Lungs: labels of the refined mask where it has them (1 right, 2 left), else connected pieces.
    lung_labels = lung.astype(np.int32)
    if lung_labels.max() <= 1:
        lung_labels, _ = ndi.label(lung > 0)
    depth = ndi.distance_transform_edt(lung_labels > 0, sampling=spacing)
    lung_ids = [int(k) for k in np.unique(lung_labels) if k > 0]
    max_depth = dict(zip(lung_ids, (float(v) for v in ndi.maximum(depth, lung_labels, lung_ids)))) if lung_ids else {}
    boxes = ndi.find_objects(labels)
    rows = []
    for k, (lab, vol, mean_hu, c) in enumerate(zip(keep, counts[keep - 1], means, centroids), start=1):
        voxel = tuple(int(np.clip(round(v), 0, s - 1)) for v, s in zip(c, labels.shape))
        box = boxes[lab - 1]
        owners = lung_labels[box][labels[box] == lab]
        owners = owners[owners > 0]
        owner = int(np.bincount(owners).argmax()) if owners.size else (max(max_depth, key=max_depth.get)
                                                                       if max_depth else 0)
        d = float(depth[voxel]) if lung_labels[voxel] > 0 else 0.0
        rel = d / max_depth[owner] if max_depth.get(owner, 0) > 0 else np.nan
        rows.append({"lesion": k, "volume_ml": vol * voxel_mm3 / 1000.0, "mean_hu": float(mean_hu),
                     "centroid_z": c[0], "centroid_y": c[1], "centroid_x": c[2], "depth_mm": d, "relative_depth": rel})
    return pd.DataFrame(rows, columns=columns)


def hu_histogram(hu: np.ndarray, lesion: np.ndarray, bins: np.ndarray) -> np.ndarray:
    return np.histogram(hu[lesion > 0], bins=bins)[0]


def analyse(subjects: list[Subject], params: FindingsConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(lesions, per-scan, HU histogram) over the subjects with a lesion mask."""
    start, stop, width = params.hu_bins
    bins = np.arange(start, stop + width / 2, width)
    lesions, scans, hist = [], [], {c: np.zeros(len(bins) - 1, np.int64) for c in CLASSES}
    for s in subjects:
        hu_img = read_lps(s.ct_path)
        hu = sitk.GetArrayFromImage(hu_img)
        lesion = sitk.GetArrayFromImage(read_lps(s.lesion_path, sitk.sitkUInt8))
        lung = sitk.GetArrayFromImage(read_lps(s.lung_path, sitk.sitkUInt8))
        spacing = tuple(float(v) for v in hu_img.GetSpacing()[::-1])
        table = lesion_statistics(hu, lesion, lung, spacing, params)
        diagnosis = CLASSES[s.label]
        table.insert(0, "diagnosis3", diagnosis)
        table.insert(0, "subject_id", s.subject_id)
        lesions.append(table)
        hist[diagnosis] += hu_histogram(hu, lesion, bins)
        vols = table["volume_ml"].to_numpy(dtype=float)
        rel = table["relative_depth"].to_numpy(dtype=float)
        scans.append({
            "subject_id": s.subject_id, "diagnosis3": diagnosis, "n_lesions": len(table),
            "total_volume_ml": float(vols.sum()),
            "lesion_volume_sd_ml": float(vols.std(ddof=1)) if len(vols) > 1 else np.nan,
            "lesion_volume_cv": float(vols.std(ddof=1) / vols.mean()) if len(vols) > 1 else np.nan,
            "mean_lesion_hu": float(hu[lesion > 0].mean()) if (lesion > 0).any() else np.nan,
            "peripheral_share": float(np.mean(rel[np.isfinite(rel)] < params.peripheral_fraction))
            if np.isfinite(rel).any() else np.nan,
            "mean_relative_depth": float(np.nanmean(rel)) if np.isfinite(rel).any() else np.nan,
        })
    lesion_df = pd.concat(lesions, ignore_index=True) if lesions else pd.DataFrame()
    if not lesion_df.empty:
        lesion_df["peripheral"] = lesion_df["relative_depth"] < params.peripheral_fraction
    hist_rows = [{"diagnosis3": c, "hu_from": float(bins[i]), "hu_to": float(bins[i + 1]), "voxels": int(h[i]),
                  "density": float(h[i] / h.sum()) if h.sum() else np.nan}
                 for c, h in hist.items() for i in range(len(h))]
    return lesion_df, pd.DataFrame(scans), pd.DataFrame(hist_rows)


def _p(a: pd.Series, b: pd.Series) -> float:
    a, b = pd.to_numeric(a, errors="coerce").dropna(), pd.to_numeric(b, errors="coerce").dropna()
    if len(a) < 1 or len(b) < 1 or (len(a) + len(b)) < 3:
        return np.nan
    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)


def findings_table(lesions: pd.DataFrame, scans: pd.DataFrame, params: FindingsConfig) -> pd.DataFrame:
    """Rows = statistics, columns = classes (mean ± sd) and the COVID-19 vs CAP p-value."""
    stats = [("Lesions per scan", "n_lesions", 1), ("Total lesion volume (ml)", "total_volume_ml", 2),
             ("Lesion size sd within scan (ml)", "lesion_volume_sd_ml", 2),
             ("Lesion size CV within scan", "lesion_volume_cv", 2), ("Mean lesion HU", "mean_lesion_hu", 0),
             ("Share of lesions peripheral (per scan)", "peripheral_share", 2)]
    rows = []
    by = {c: scans[scans["diagnosis3"] == c] for c in CLASSES}
    les = {c: lesions[lesions["diagnosis3"] == c] if not lesions.empty else pd.DataFrame() for c in CLASSES}
    rows.append({"Statistic": "Scans with a lesion mask", **{CLASS_LABELS[c]: str(len(by[c])) for c in CLASSES},
                 "p (COVID-19 vs CAP)": np.nan})
    for label, col, digits in stats:
        rows.append({"Statistic": label, **{CLASS_LABELS[c]: mean_sd(by[c][col], digits) for c in CLASSES},
                     "p (COVID-19 vs CAP)": _p(by["covid19"][col], by["cap"][col])})
    rows.append({"Statistic": "Lesion volume, per lesion (ml)",
                 **{CLASS_LABELS[c]: mean_sd(les[c]["volume_ml"], 2) if len(les[c]) else "-" for c in CLASSES},
                 "p (COVID-19 vs CAP)": _p(les["covid19"].get("volume_ml", pd.Series(dtype=float)),
                                           les["cap"].get("volume_ml", pd.Series(dtype=float)))})
    rows.append({"Statistic": "Relative depth in lung, per lesion (0 = pleura)",
                 **{CLASS_LABELS[c]: mean_sd(les[c]["relative_depth"], 2) if len(les[c]) else "-" for c in CLASSES},
                 "p (COVID-19 vs CAP)": _p(les["covid19"].get("relative_depth", pd.Series(dtype=float)),
                                           les["cap"].get("relative_depth", pd.Series(dtype=float)))})
    pct = {}
    for c in CLASSES:
        if len(les[c]):
            pct[CLASS_LABELS[c]] = f"{100 * les[c]['peripheral'].mean():.0f} % of {len(les[c])}"
        else:
            pct[CLASS_LABELS[c]] = "-"
    rows.append({"Statistic": f"Peripheral lesions (relative depth < {params.peripheral_fraction:.2f}), pooled",
                 **pct, "p (COVID-19 vs CAP)": np.nan})
    table = pd.DataFrame(rows)
    p = table["p (COVID-19 vs CAP)"]
    table["p (COVID-19 vs CAP)"] = p.astype(object).where(p.notna(), None)  # blank cells, not "nan"
    return table


def figure1(lesions: pd.DataFrame, scans: pd.DataFrame, hist: pd.DataFrame, params: FindingsConfig,
            stem: Path) -> list[Path]:
    from covidmtl.deep.figures import plt, save_figure

    colors = {"covid19": "tab:red", "cap": "tab:blue", "normal": "tab:gray"}
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    ax = axes[0, 0]
    data = [scans.loc[scans["diagnosis3"] == c, "n_lesions"].to_numpy() for c in CLASSES]
    ax.boxplot(data, tick_labels=[CLASS_LABELS[c] for c in CLASSES], showfliers=True)
    for i, (c, d) in enumerate(zip(CLASSES, data), start=1):
        ax.scatter(np.full(len(d), i) + np.linspace(-0.12, 0.12, max(len(d), 1))[: len(d)], d, s=14,
                   color=colors[c], alpha=0.7, zorder=3)
    ax.set(title="(a) Lesions per scan", ylabel="number of lesions")
    ax = axes[0, 1]
    pneu = [c for c in CLASSES if c != "normal"]
    vols = [lesions.loc[lesions["diagnosis3"] == c, "volume_ml"].to_numpy(dtype=float) if not lesions.empty
            else np.array([]) for c in pneu]
    if any(len(v) for v in vols):
        ax.boxplot([v if len(v) else [np.nan] for v in vols], tick_labels=[CLASS_LABELS[c] for c in pneu])
        ax.set_yscale("log")
    ax.set(title="(b) Lesion size (per lesion)", ylabel="lesion volume (ml, log scale)")
    ax = axes[1, 0]
    for c in pneu:
        h = hist[hist["diagnosis3"] == c]
        if h["voxels"].sum() > 0:
            ax.step(h["hu_from"], h["density"], where="post", color=colors[c], linewidth=2,
                    label=f"{CLASS_LABELS[c]} ({int(h['voxels'].sum())} voxels)")
    ax.set(title="(c) HU distribution of lesion voxels", xlabel="HU", ylabel="share of lesion voxels")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    ax = axes[1, 1]
    bins = np.linspace(0, 1, 11)
    for c in pneu:
        rel = lesions.loc[lesions["diagnosis3"] == c, "relative_depth"].dropna().to_numpy(dtype=float) \
            if not lesions.empty else np.array([])
        if len(rel):
            ax.hist(rel, bins=bins, histtype="step", linewidth=2, color=colors[c], density=True,
                    label=f"{CLASS_LABELS[c]} ({len(rel)} lesions)")
    ax.axvline(params.peripheral_fraction, color="k", linestyle=":", label="peripheral | central")
    ax.set(title="(d) Lesion position", xlabel="relative depth of the centroid (0 = pleura, 1 = lung core)",
           ylabel="density")
    ax.legend()
    for a in axes.ravel():
        a.grid(alpha=0.3)
    fig.suptitle("Lesion findings per class (DeepSC-COVID section III, Figure 1 style)")
    fig.tight_layout()
    return save_figure(fig, stem)


def subjects_with_masks(manifest_path: Path, lungseg_dir: Path) -> list[Subject]:
    manifest = read_table(manifest_path, "manifest", ["subject_id", "dataset", "diagnosis3", "ct_path",
                                                      "lesion_mask_path"], STAGE)
    subjects, without = [], []
    for _, row in manifest.iterrows():
        diagnosis = str(row["diagnosis3"]).strip().lower()
        if diagnosis not in CLASSES:
            raise PipelineInputError(STAGE, f"diagnosis3 is {row['diagnosis3']!r}; expected one of {list(CLASSES)}",
                                     subject=row["subject_id"], path=manifest_path,
                                     hint="fill in diagnosis3 (covid19, cap or normal) or exclude the subject")
        lesion = str(row["lesion_mask_path"]).strip()
        if not lesion or lesion.lower() == "nan":
            without.append(row["subject_id"])
            continue
        s = Subject(str(row["subject_id"]), str(row["dataset"]), CLASSES.index(diagnosis), Path(row["ct_path"]),
                    lung_mask_path(lungseg_dir, str(row["dataset"]), str(row["subject_id"])), Path(lesion))
        check_subject_files(s, STAGE)
        subjects.append(s)
    if without:
        log.info("%d scan(s) have no lesion mask and are left out of the findings", len(without))
    if not subjects:
        raise PipelineInputError(STAGE, "no scan of the manifest has a lesion mask", path=manifest_path,
                                 hint="the findings need lesion annotations (lesion_mask_path)")
    return subjects


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="covidmtl deepsc-findings", description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--lungseg-dir", type=Path, required=True, help="folder with <dataset>/<subject>/lung_refined.nii.gz")
    ap.add_argument("--params", default="{}", help="JSON of the `deepsc` config section (uses deepsc.findings)")
    ap.add_argument("--out-dir", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        cfg = DeepSCConfig.from_json(args.params)
    except (ValueError, TypeError) as err:
        print(f"covidmtl deepsc-findings: bad --params: {err}", file=sys.stderr)
        return 2
    subjects = subjects_with_masks(args.manifest, args.lungseg_dir)
    lesions, scans, hist = analyse(subjects, cfg.findings)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    lesions.to_csv(out / "findings_lesions.csv", index=False)
    scans.to_csv(out / "findings_subjects.csv", index=False)
    hist.to_csv(out / "findings_hu_histogram.csv", index=False)
    write_table(findings_table(lesions, scans, cfg.findings), out / "findings_table", floatfmt=".3g")
    figure1(lesions, scans, hist, cfg.findings, out / "figure1_findings")
    log.info("findings: %d scans, %d lesions -> %s", len(scans), len(lesions), out)
    return 0
