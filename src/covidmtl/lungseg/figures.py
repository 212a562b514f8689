"""Quality-control overlays and COVID-MTL Figure 2 (classical vs refined lung segmentation)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

LUNG_WINDOW = (-1350.0, 150.0)
"""Display window (HU): level -600, width 1500, the usual lung window."""

_LABEL_COLOURS = {1: "#1f77b4", 2: "#ff7f0e"}
_LABEL_NAMES = {1: "right lung", 2: "left lung"}


def _as_array(image: sitk.Image | np.ndarray) -> np.ndarray:
    return sitk.GetArrayFromImage(image) if isinstance(image, sitk.Image) else np.asarray(image)


def _extent_axial(shape: tuple[int, ...], spacing_zyx: np.ndarray) -> list[float]:
    # LPS: x grows toward the patient's left, so x ascending left-to-right puts the patient's
    # right on the image left (radiological convention); y (anterior -> posterior) downward.
    return [0, shape[2] * spacing_zyx[2], shape[1] * spacing_zyx[1], 0]


def _extent_coronal(shape: tuple[int, ...], spacing_zyx: np.ndarray) -> list[float]:
    return [0, shape[2] * spacing_zyx[2], 0, shape[0] * spacing_zyx[0]]


def _overlay(ax, ct2d, mask2d, extent, origin="upper", alpha=0.35) -> None:
    ax.imshow(ct2d, cmap="gray", vmin=LUNG_WINDOW[0], vmax=LUNG_WINDOW[1], extent=extent, origin=origin, interpolation="nearest")
    for value, colour in _LABEL_COLOURS.items():
        region = mask2d == value
        if not region.any():
            continue
        ax.imshow(np.ma.masked_where(~region, region), cmap=ListedColormap([colour]), alpha=alpha, extent=extent, origin=origin, interpolation="nearest")
        ax.contour(region.astype(float), levels=[0.5], colors=[colour], linewidths=0.8, extent=extent, origin=origin)
    ax.set_xticks([])
    ax.set_yticks([])


def write_qc_overlay(ct: sitk.Image, mask: sitk.Image, png_path: str | Path, title: str | None = None, n_axial: int = 4) -> Path:
    """Lung mask over the CT: ``n_axial`` axial slices spread over the lungs and one coronal view.

    ``mask`` may be binary (one colour) or the lung labels (1 right, 2 left; two colours).
    Writes ``png_path`` only (a QC image, not a paper figure).  Radiological convention:
    patient right on the image left, anterior at the top of axial views.
    """
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    ct_arr = _as_array(ct).astype(np.float32)
    labels = _as_array(mask).astype(np.uint8)
    spacing = np.asarray(ct.GetSpacing()[::-1], dtype=float)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    lung = labels > 0
    fig, axes = plt.subplots(1, n_axial + 1, figsize=(3.6 * (n_axial + 1), 4.4))
    if lung.any():
        z_idx = np.flatnonzero(lung.any(axis=(1, 2)))
        picks = [int(z_idx[int(round(q * (len(z_idx) - 1)))]) for q in np.linspace(0.15, 0.85, n_axial)]
        y_cor = int(np.average(np.arange(lung.shape[1]), weights=lung.sum(axis=(0, 2))))
    else:
        picks = [int(q * (ct_arr.shape[0] - 1)) for q in np.linspace(0.15, 0.85, n_axial)]
        y_cor = ct_arr.shape[1] // 2
    z_top = ct_arr.shape[0] - 1
    for ax, z in zip(axes[:n_axial], picks):
        _overlay(ax, ct_arr[z], labels[z], _extent_axial(ct_arr.shape, spacing))
        # Distance below the top slice, a reader can match it to the coronal view.
        ax.set_title(f"axial slice {z} ({(z_top - z) * spacing[0]:.0f} mm below top)", fontsize=10)
        ax.text(0.02, 0.5, "R", transform=ax.transAxes, color="yellow", fontsize=12, va="center")
        ax.text(0.95, 0.5, "L", transform=ax.transAxes, color="yellow", fontsize=12, va="center")
    cor = axes[n_axial]
    _overlay(cor, ct_arr[:, y_cor, :], labels[:, y_cor, :], _extent_coronal(ct_arr.shape, spacing), origin="lower")
    for z in picks:
        cor.axhline((z + 0.5) * spacing[0], color="yellow", lw=0.6, ls="--")
    cor.set_title(f"coronal slice {y_cor} (dashed: axial slices)", fontsize=10)
    volumes = {name: np.count_nonzero(labels == value) * voxel_ml for value, name in _LABEL_NAMES.items()}
    handles = [Patch(facecolor=_LABEL_COLOURS[v], alpha=0.5, label=f"{_LABEL_NAMES[v]}: {volumes[_LABEL_NAMES[v]]:.0f} ml") for v in _LABEL_COLOURS if volumes[_LABEL_NAMES[v]] > 0]
    if not handles and lung.any():
        handles = [Patch(facecolor=_LABEL_COLOURS[1], alpha=0.5, label=f"lung: {lung.sum() * voxel_ml:.0f} ml")]
    total = lung.sum() * voxel_ml
    heading = title or "Lung segmentation QC"
    fig.suptitle(f"{heading} — total lung volume {total / 1000:.2f} l (window L-600/W1500)", fontsize=12)
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=10, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


# --------------------------------------------------------------------------- Figure 2
def pick_figure2_slice(classical: np.ndarray, refined: np.ndarray, lesion: np.ndarray | None) -> int:
    """Axial slice to show: where refinement recovers most lesion voxels (lesion mask
    given), else the slice with most lesion, else where the two methods differ most."""
    if lesion is not None and lesion.any():
        recovered = (lesion & refined & ~classical).sum(axis=(1, 2))
        if recovered.max() > 0:
            return int(np.argmax(recovered))
        return int(np.argmax(lesion.sum(axis=(1, 2))))
    return int(np.argmax((classical ^ refined).sum(axis=(1, 2))))


def write_figure2(panels: list[dict], out_png: str | Path) -> tuple[Path, Path]:
    """COVID-MTL Figure 2: classical region (filled, translucent), refined contour and
    ground-truth contour on axial slices with lesions.

    Each panel: dict with ``subject``, ``ct`` (2-D HU array), ``classical``, ``refined``,
    optional ``gt`` and ``lesion`` (2-D bool arrays), ``spacing`` (row, col mm), ``slice``
    and optional ``dice`` ({method: value}).  Writes PNG and PDF; returns both paths.
    """
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.9), squeeze=False)
    colours = {"classical": "#1f77b4", "refined": "#d62728", "gt": "#2ca02c", "lesion": "#ffdd00"}
    for ax, panel in zip(axes[0], panels):
        ct2d = panel["ct"]
        rows_mm, cols_mm = panel.get("spacing", (1.0, 1.0))
        extent = [0, ct2d.shape[1] * cols_mm, ct2d.shape[0] * rows_mm, 0]
        ax.imshow(ct2d, cmap="gray", vmin=LUNG_WINDOW[0], vmax=LUNG_WINDOW[1], extent=extent, interpolation="nearest")
        classical = panel["classical"]
        ax.imshow(np.ma.masked_where(~classical, classical), cmap=ListedColormap([colours["classical"]]), alpha=0.35,
                  extent=extent, interpolation="nearest")
        ax.contour(panel["refined"].astype(float), levels=[0.5], colors=[colours["refined"]], linewidths=1.4, extent=extent, origin="upper")
        if panel.get("gt") is not None:
            ax.contour(panel["gt"].astype(float), levels=[0.5], colors=[colours["gt"]], linewidths=1.2, linestyles="--", extent=extent, origin="upper")
        if panel.get("lesion") is not None and panel["lesion"].any():
            ax.contour(panel["lesion"].astype(float), levels=[0.5], colors=[colours["lesion"]], linewidths=0.9, linestyles=":", extent=extent, origin="upper")
        # Zoom on the lungs of this slice.
        union = classical | panel["refined"] | (panel["gt"] if panel.get("gt") is not None else False)
        if union.any():
            r, c = np.nonzero(union)
            pad = 10
            ax.set_xlim(max(c.min() - pad, 0) * cols_mm, min(c.max() + pad, ct2d.shape[1]) * cols_mm)
            ax.set_ylim(min(r.max() + pad, ct2d.shape[0]) * rows_mm, max(r.min() - pad, 0) * rows_mm)
        title = f"{panel['subject']}, axial slice {panel['slice']}"
        if panel.get("dice"):
            title += "\nDice " + ", ".join(f"{k} {v:.3f}" for k, v in panel["dice"].items() if v is not None)
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("x (mm from image edge, patient right → left)")
        ax.set_ylabel("y (mm from image edge, anterior → posterior)")
    handles = [
        Patch(facecolor=colours["classical"], alpha=0.35, label="classical (threshold) region"),
        Line2D([0], [0], color=colours["refined"], lw=1.6, label="refined (active contour) boundary"),
    ]
    if any(p.get("gt") is not None for p in panels):
        handles.append(Line2D([0], [0], color=colours["gt"], lw=1.4, ls="--", label="ground-truth lung boundary"))
    if any(p.get("lesion") is not None and p["lesion"].any() for p in panels):
        handles.append(Line2D([0], [0], color=colours["lesion"], lw=1.2, ls=":", label="ground-truth lesion"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=10, frameon=False)
    fig.suptitle("Lung segmentation: threshold-based vs active-contour refinement (COVID-MTL Figure 2)", fontsize=13)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    out_pdf = out_png.with_suffix(".pdf")
    fig.savefig(out_png, dpi=130)
    fig.savefig(out_pdf)
    plt.close(fig)
    return out_png, out_pdf


def figure2_panel(subject: str, subject_dir: str | Path, curated_dir: str | Path) -> dict:
    """Figure 2 panel of one subject from the stage outputs and its curated folder
    (``ct.nii.gz``, optional ``masks/lung.nii.gz`` and ``masks/lesion.nii.gz``)."""
    import json

    subject_dir, curated_dir = Path(subject_dir), Path(curated_dir)
    ct = sitk.ReadImage(str(curated_dir / "ct.nii.gz"))
    classical = sitk.GetArrayFromImage(sitk.ReadImage(str(subject_dir / "lung_classical.nii.gz"))) > 0
    refined = sitk.GetArrayFromImage(sitk.ReadImage(str(subject_dir / "lung_refined.nii.gz"))) > 0
    gt_path, lesion_path = curated_dir / "masks" / "lung.nii.gz", curated_dir / "masks" / "lesion.nii.gz"
    gt = sitk.GetArrayFromImage(sitk.ReadImage(str(gt_path))) > 0 if gt_path.is_file() else None
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(lesion_path))) > 0 if lesion_path.is_file() else None
    z = pick_figure2_slice(classical, refined, lesion)
    if lesion is not None and lesion.any():
        score = (1, int((lesion[z] & refined[z] & ~classical[z]).sum()), int(lesion[z].sum()))
    else:
        score = (0, int((classical[z] ^ refined[z]).sum()), 0)
    dice = None
    metrics_path = subject_dir / "metrics.json"
    if metrics_path.is_file():
        record = json.loads(metrics_path.read_text(encoding="utf-8"))
        subject = record.get("subject", subject)
        dice = {m: (record.get(m) or {}).get("metrics", {}) and record[m]["metrics"].get("dice") for m in ("classical", "refined")}
        if not any(dice.values()):
            dice = None
    spacing = ct.GetSpacing()
    return {
        "subject": subject, "slice": z, "ct": sitk.GetArrayViewFromImage(ct)[z].astype(np.float32),
        "classical": classical[z], "refined": refined[z],
        "gt": gt[z] if gt is not None else None, "lesion": lesion[z] if lesion is not None else None,
        "spacing": (spacing[1], spacing[0]), "dice": dice, "score": score,
    }


def choose_figure2_panels(pairs: list[tuple[Path, Path]], max_panels: int = 4) -> list[dict]:
    """Panels of the subjects that show the refinement best: lesions recovered on the chosen
    slice first (subjects with a lesion mask), then the largest difference between methods.
    ``pairs``: (stage output folder, curated folder) per subject; the panels keep their order."""
    panels = [figure2_panel(Path(out).name, out, curated) for out, curated in pairs]
    ranked = sorted(range(len(panels)), key=lambda i: panels[i]["score"], reverse=True)[:max_panels]
    return [panels[i] for i in sorted(ranked)]
