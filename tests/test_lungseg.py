"""Lung segmentation (COVID-MTL section 2.1, Algorithm 1): classical mask, active-contour
refinement, masked lung volume, bad input, CLI entry points."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from covidmtl.errors import PipelineInputError
from covidmtl.lungseg import (
    ClassicalParams,
    LungSegParams,
    RefineParams,
    classical_segmentation,
    crop_masked_volume,
    refine_with_active_contours,
    segmentation_metrics,
)
from covidmtl.lungseg.classical import LEFT_LUNG, RIGHT_LUNG
from covidmtl.lungseg.refine import fill_polygon

# --------------------------------------------------------------------------- a small chest
LUNG_HU, TISSUE_HU, TABLE_HU, AIR_HU, LESION_HU = -850.0, 40.0, 160.0, -1000.0, 0.0


def chest_phantom(spacing=(2.0, 2.0, 2.0), bite_mm: float = 6.0, origin=(-150.0, -120.0, -300.0), seed: int = 0,
                  x_range_mm=(-150.0, 150.0), chest_wall_gap_slices: int = 0, bite_halfwidth_mm: float | None = None):
    """Air, table, elliptic body, two ellipsoid lungs with 'vessels', trachea and main bronchi
    (open into the lungs), and a dense subpleural lesion at the lateral wall of the right
    lung.  Returns (ct, gt_lung, lesion) SimpleITK images on one LPS grid.

    ``x_range_mm`` narrows the field of view (a lung cut by it touches the border);
    ``bite_halfwidth_mm`` is the lesion's half-width along the wall (default 1.6 x depth).
    ``chest_wall_gap_slices`` opens the right chest wall to the outside air on that many
    slices (a lung touching the border on a few slices only).
    """
    sx, sy, sz = spacing
    nx = int(round((x_range_mm[1] - x_range_mm[0]) / sx))
    ny, nz = int(round(240 / sy)), int(round(160 / sz))
    X = x_range_mm[0] + (np.arange(nx) + 0.5) * sx
    Y = -120.0 + (np.arange(ny) + 0.5) * sy
    Z = (np.arange(nz) + 0.5) * sz  # z grows toward superior (LPS)
    Z3, Y3, X3 = np.meshgrid(Z, Y, X, indexing="ij")
    ct = np.full((nz, ny, nx), AIR_HU, dtype=np.float32)
    body = (X3 / 130) ** 2 + (Y3 / 90) ** 2 < 1
    ct[body] = TISSUE_HU
    ct[(Y3 > 100) & (Y3 < 106) & (np.abs(X3) < 140)] = TABLE_HU
    lung = np.zeros(ct.shape, dtype=bool)
    for side in (-1, 1):
        lung |= (((X3 - side * 55) / 40) ** 2 + (Y3 / 60) ** 2 + ((Z3 - 85) / 65) ** 2 < 1) & (Z3 > 25)
    ct[lung] = LUNG_HU
    for cx, cy, cz in ((-60, 10, 90), (50, -15, 70), (65, 20, 100)):  # vessels: holes to fill
        ct[(X3 - cx) ** 2 + (Y3 - cy) ** 2 + (Z3 - cz) ** 2 < 4**2] = TISSUE_HU
    airway = (X3**2 + (Y3 + 20) ** 2 < 8**2) & (Z3 > 118)
    for side in (-1, 1):  # main bronchi from the carina into each lung
        t = np.clip((120 - Z3) / 22, 0, 1)
        cx, cy = side * 35 * t, -20 + 10 * t
        airway |= ((X3 - cx) ** 2 + (Y3 - cy) ** 2 < 5**2) & (Z3 <= 120) & (Z3 >= 98)
    ct[airway] = AIR_HU
    lesion = np.zeros(ct.shape, dtype=bool)
    if bite_mm > 0:  # a lens flattened against the lateral chest wall, bite_mm deep
        half = 1.6 * bite_mm if bite_halfwidth_mm is None else bite_halfwidth_mm
        lesion = lung & (((X3 + 95) / bite_mm) ** 2 + (Y3 / half) ** 2 + ((Z3 - 85) / half) ** 2 < 1)
        ct[lesion] = LESION_HU
    if chest_wall_gap_slices:
        mid = nz // 2
        gap = (np.abs(Y3) < 8) & (X3 < -80)
        gap[: mid - chest_wall_gap_slices // 2] = False
        gap[mid - chest_wall_gap_slices // 2 + chest_wall_gap_slices:] = False
        ct[gap] = AIR_HU
    ct += np.random.default_rng(seed).normal(0, 15, ct.shape).astype(np.float32)

    def image(arr, dtype):
        img = sitk.GetImageFromArray(arr.astype(dtype))
        img.SetSpacing(tuple(float(v) for v in spacing))
        img.SetOrigin(tuple(float(v) for v in origin))
        return img

    return image(np.round(ct), np.int16), image(lung, np.uint8), image(lesion, np.uint8)


def _dice(a: sitk.Image, b: sitk.Image) -> float:
    return segmentation_metrics(a, b)["dice"]


def _lesion_recall(mask: sitk.Image, lesion: sitk.Image) -> float:
    m, les = sitk.GetArrayViewFromImage(mask) > 0, sitk.GetArrayViewFromImage(lesion) > 0
    return float((m & les).sum() / les.sum())


@pytest.fixture(scope="module")
def phantom():
    # A bite deeper than it is wide: the 10 mm closing disk cannot enter most of it.
    ct, gt, lesion = chest_phantom(bite_mm=12.0, bite_halfwidth_mm=7.0)
    initial = classical_segmentation(ct, subject="phantom")
    refined = refine_with_active_contours(ct, initial, threads=2)
    return ct, gt, lesion, initial, refined


# --------------------------------------------------------------------------- classical
def test_classical_finds_both_lungs_without_airway_body_or_table(phantom):
    ct, gt, lesion, initial, _ = phantom
    labels = sitk.GetArrayFromImage(initial)
    assert set(np.unique(labels)) == {0, RIGHT_LUNG, LEFT_LUNG}
    xs = np.arange(labels.shape[2])
    com = {v: np.average(xs, weights=(labels == v).sum(axis=(0, 1))) for v in (RIGHT_LUNG, LEFT_LUNG)}
    assert com[RIGHT_LUNG] < com[LEFT_LUNG]  # LPS: patient right has the smaller x
    assert _dice(initial, gt) > 0.93
    ct_arr = sitk.GetArrayFromImage(ct)
    # Trachea above the lungs, table, outside air: none of it is lung.
    top = labels.shape[0] - 3
    assert not labels[top].any()
    assert not labels[:, 110:, :].any()  # table and everything posterior of the body
    assert (ct_arr[labels > 0] < -320).mean() > 0.97  # no body tissue except filled vessels/lesion
    # The lesion at the chest wall is denser than -320 HU: thresholding misses it.
    assert _lesion_recall(initial, lesion) < 0.5


def test_classical_uses_spacing_not_voxel_counts():
    ct, gt, _ = chest_phantom(spacing=(1.6, 1.6, 3.2), origin=(10.0, -5.0, 40.0))
    mask = classical_segmentation(ct)
    assert _dice(mask, gt) > 0.9
    assert mask.GetSpacing() == ct.GetSpacing() and mask.GetOrigin() == ct.GetOrigin()
    assert mask.GetDirection() == ct.GetDirection()


def test_classical_thresholds_are_parameters(phantom):
    ct, gt, *_ = phantom
    # A threshold below the parenchyma leaves no lung: the knob is really used.
    for params in (ClassicalParams(threshold_hu=-900.0), {"threshold_hu": -900.0},
                   {"classical": {"threshold_hu": -900.0}}, LungSegParams.from_dict({"classical": {"threshold_hu": -900.0}})):
        with pytest.raises(PipelineInputError, match="no lung"):
            classical_segmentation(ct, params, subject="phantom")


# --------------------------------------------------------------------------- refinement
def test_refinement_recovers_subpleural_lesion_and_improves_dice(phantom):
    ct, gt, lesion, initial, refined = phantom
    # Most of the bite comes back; its mouth, where the closing disk still fits, does not.
    assert _lesion_recall(refined, lesion) > 0.6 > 0.2 > _lesion_recall(initial, lesion)
    assert _dice(refined, gt) > _dice(initial, gt)
    for key in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(refined, key)() == getattr(ct, key)()
    # OR-ed into the slice mask: the refined lungs contain the initial ones.
    init, ref = sitk.GetArrayViewFromImage(initial), sitk.GetArrayViewFromImage(refined)
    assert np.all(ref[init > 0] == init[init > 0])


def test_refinement_threads_give_the_same_mask(phantom):
    ct, _, _, initial, refined = phantom
    single = refine_with_active_contours(ct, initial, threads=1)
    assert np.array_equal(sitk.GetArrayViewFromImage(single), sitk.GetArrayViewFromImage(refined))


def test_refinement_accepts_a_binary_mask(phantom):
    ct, gt, _, initial, refined = phantom
    binary = sitk.Cast(initial > 0, sitk.sitkUInt8)
    out = refine_with_active_contours(ct, binary, threads=2)
    assert set(np.unique(sitk.GetArrayViewFromImage(out))) == {0, 1, 2}
    assert _dice(out, refined) > 0.99


def test_closing_radius_zero_and_no_iterations_keep_the_initial_mask(phantom):
    ct, _, _, initial, _ = phantom
    params = RefineParams(closing_radius_mm=0.0, max_num_iter=0)  # no closing, no snake
    out = refine_with_active_contours(ct, initial, params)
    assert _dice(out, initial) > 0.995


def test_fill_polygon_matches_skimage():
    from skimage.draw import polygon

    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(3, 40))
        angles = np.sort(rng.random(n)) * 2 * np.pi
        radius = rng.uniform(3, 20, n)
        vertices = np.column_stack([25 + radius * np.sin(angles), 25 + radius * np.cos(angles)])
        expected = np.zeros((50, 50), bool)
        rr, cc = polygon(vertices[:, 0], vertices[:, 1], (50, 50))
        expected[rr, cc] = True
        assert np.array_equal(fill_polygon(vertices, (50, 50)), expected)


# --------------------------------------------------------------------------- masked volume
def test_crop_masked_volume_geometry(phantom):
    ct, _, _, _, refined = phantom
    volume, mask = crop_masked_volume(ct, refined, margin_mm=6.0, background_hu=-1024)
    assert volume.GetSize() == mask.GetSize()
    assert volume.GetSpacing() == ct.GetSpacing() and volume.GetDirection() == ct.GetDirection()
    assert np.allclose(volume.GetOrigin(), mask.GetOrigin())
    # The crop's first voxel sits where it sat in the full image (origin shifted by the crop).
    index = ct.TransformPhysicalPointToIndex(volume.GetOrigin())
    assert np.allclose(ct.TransformIndexToPhysicalPoint(index), volume.GetOrigin())
    ref = sitk.GetArrayFromImage(refined) > 0
    zs, ys, xs = np.nonzero(ref)
    margin = np.ceil(6.0 / np.array(ct.GetSpacing()[::-1])).astype(int)
    assert index == (int(xs.min() - margin[2]), int(ys.min() - margin[1]), int(zs.min() - margin[0]))
    v, m = sitk.GetArrayFromImage(volume), sitk.GetArrayFromImage(mask)
    assert set(np.unique(m)) == {0, 1} and m.sum() == ref.sum()
    assert volume.GetPixelID() == ct.GetPixelID()
    assert np.all(v[m == 0] == -1024)
    ct_crop = sitk.GetArrayFromImage(sitk.RegionOfInterest(ct, volume.GetSize(), index))
    assert np.array_equal(v[m == 1], ct_crop[m == 1])
    # Physical positions agree: resampling the full mask onto the crop grid gives the crop mask.
    back = sitk.Resample(sitk.Cast(refined > 0, sitk.sitkUInt8), mask, sitk.Transform(), sitk.sitkNearestNeighbor)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), m)


# --------------------------------------------------------------------------- bad input
def _image_like(arr: np.ndarray, spacing=(2.0, 2.0, 2.0)) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.astype(np.int16))
    img.SetSpacing(spacing)
    return img


@pytest.mark.parametrize("value", [-1000, 0])
def test_blank_image_is_a_clear_error(value):
    with pytest.raises(PipelineInputError) as err:
        classical_segmentation(_image_like(np.full((20, 40, 40), value)), subject="S42")
    text = str(err.value)
    assert "stage=lungseg" in text and "subject=S42" in text and "blank image" in text


def test_head_scan_is_a_clear_error():
    z, y, x = np.indices((60, 100, 90)).astype(float)
    head = ((x - 45) / 40) ** 2 + ((y - 50) / 45) ** 2 < 1
    skull = head & ~(((x - 45) / 36) ** 2 + ((y - 50) / 41) ** 2 < 1)
    arr = np.where(head, 30.0, -1000.0)
    arr[skull] = 900
    arr[((x - 45) ** 2 + (y - 20) ** 2 + (z - 30) ** 2) < 6**2] = -1000  # a sinus (~7 ml at 2 mm)
    with pytest.raises(PipelineInputError, match=r"subject=H1.*no lungs? found"):
        classical_segmentation(_image_like(arr), subject="H1")


def test_lung_cut_by_the_field_of_view_is_a_clear_error():
    ct, _, _ = chest_phantom(x_range_mm=(-80.0, 150.0), bite_mm=0)  # the right lung leaves the image
    with pytest.raises(PipelineInputError) as err:
        classical_segmentation(ct, subject="FOV1")
    assert "subject=FOV1" in str(err.value) and "field of view" in str(err.value)


def test_lung_touching_the_border_on_some_slices_is_a_clear_error():
    ct, _, _ = chest_phantom(chest_wall_gap_slices=4, bite_mm=0)
    with pytest.raises(PipelineInputError, match=r"subject=FOV2.*touch the image border"):
        classical_segmentation(ct, subject="FOV2")


def test_params_reject_unknown_keys():
    assert LungSegParams.from_dict({"refine": {"closing_radius_mm": 7}}).refine.closing_radius_mm == 7
    assert LungSegParams.from_dict({"classical": {"trachea_area_mm2": [10, 20]}}).classical.trachea_area_mm2 == (10, 20)
    with pytest.raises(ValueError, match="unknown"):
        LungSegParams.from_dict({"refine": {"closing_radius": 7}})
    with pytest.raises(ValueError, match="unknown"):
        LungSegParams.from_dict({"refinement": {}})


# --------------------------------------------------------------------------- entry points
@pytest.fixture(scope="module")
def cli_outputs(tmp_path_factory, phantom):
    from covidmtl.lungseg.cli import main

    ct, gt, lesion, *_ = phantom
    root = tmp_path_factory.mktemp("lungseg")
    curated = root / "curated" / "S1"
    (curated / "masks").mkdir(parents=True)
    sitk.WriteImage(ct, str(curated / "ct.nii.gz"))
    sitk.WriteImage(gt, str(curated / "masks" / "lung.nii.gz"))
    sitk.WriteImage(lesion, str(curated / "masks" / "lesion.nii.gz"))
    out = root / "lungseg" / "S1"
    params = json.dumps({"refine": {"closing_radius_mm": 10}, "output": {"crop_margin_mm": 4}})
    assert main(["--subject", "S1", "--ct", str(curated / "ct.nii.gz"), "--gt-lung", str(curated / "masks" / "lung.nii.gz"),
                 "--params", params, "--threads", "2", "--out-dir", str(out)]) == 0
    return root, curated, out


def test_cli_writes_every_output(cli_outputs):
    _, curated, out = cli_outputs
    for name in ("lung_classical.nii.gz", "lung_refined.nii.gz", "lung_volume.nii.gz", "lung_volume_mask.nii.gz", "metrics.json", "qc.png"):
        assert (out / name).is_file(), name
    ct = sitk.ReadImage(str(curated / "ct.nii.gz"))
    for name in ("lung_classical.nii.gz", "lung_refined.nii.gz"):
        mask = sitk.ReadImage(str(out / name))
        assert mask.GetSize() == ct.GetSize() and np.allclose(mask.GetOrigin(), ct.GetOrigin())
        assert set(np.unique(sitk.GetArrayViewFromImage(mask))) == {0, 1}
    volume, vmask = sitk.ReadImage(str(out / "lung_volume.nii.gz")), sitk.ReadImage(str(out / "lung_volume_mask.nii.gz"))
    assert volume.GetSize() == vmask.GetSize() and np.allclose(volume.GetOrigin(), vmask.GetOrigin())
    record = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert record["subject"] == "S1" and record["params"]["output"]["crop_margin_mm"] == 4
    for method in ("classical", "refined"):
        entry = record[method]
        assert set(entry["metrics"]) >= {"dice", "jaccard", "mcc", "precision"}
        assert entry["n_components"] == 2 and 800 < entry["lung_volume_ml"] < 1600
        assert record["seconds"][method] >= 0
    assert record["refined"]["metrics"]["dice"] > record["classical"]["metrics"]["dice"]


def test_cli_without_ground_truth_writes_no_metrics(tmp_path, phantom):
    from covidmtl.lungseg.cli import main

    ct, *_ = phantom
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    out = tmp_path / "o"
    # The rule always names masks/lung.nii.gz; real datasets have none.
    assert main(["--subject", "R1", "--ct", str(tmp_path / "ct.nii.gz"), "--gt-lung", str(tmp_path / "masks" / "lung.nii.gz"),
                 "--out-dir", str(out), "--no-qc"]) == 0
    record = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert record["gt_lung"] is None and record["gt_lung_missing"].endswith("lung.nii.gz")
    assert record["classical"]["metrics"] is None and record["refined"]["metrics"] is None
    assert record["refined"]["lung_volume_ml"] > 0 and (out / "lung_volume.nii.gz").is_file()


def test_cli_missing_ct_is_a_pipeline_error(tmp_path):
    from covidmtl.lungseg.cli import main

    with pytest.raises(PipelineInputError, match=r"stage=lungseg subject=S9 file=.*does not exist"):
        main(["--subject", "S9", "--ct", str(tmp_path / "nope.nii.gz"), "--out-dir", str(tmp_path / "o")])


def test_cli_blank_ct_names_subject_file_and_stage(tmp_path):
    from covidmtl.cli import main as covidmtl_main
    from covidmtl.lungseg.cli import main

    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(_image_like(np.full((20, 40, 40), -1000)), str(path))
    args = ["--subject", "S7", "--ct", str(path), "--out-dir", str(tmp_path / "o")]
    with pytest.raises(PipelineInputError, match=r"stage=lungseg subject=S7 file=.*ct.nii.gz\] blank image"):
        main(args)
    # Through the package CLI (once the command is registered) it is exit status 1.
    from covidmtl.cli import COMMANDS

    if "lungseg" in COMMANDS:
        assert covidmtl_main(["lungseg", *args]) == 1


def test_cli_gt_on_another_grid_is_a_pipeline_error(tmp_path, phantom):
    from covidmtl.lungseg.cli import main

    ct, gt, *_ = phantom
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    moved = sitk.Image(gt)
    moved.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(moved, str(tmp_path / "lung.nii.gz"))
    with pytest.raises(PipelineInputError, match="differ"):
        main(["--subject", "S8", "--ct", str(tmp_path / "ct.nii.gz"), "--gt-lung", str(tmp_path / "lung.nii.gz"),
              "--out-dir", str(tmp_path / "o"), "--no-qc"])


def test_paired_dice_difference_by_hand():
    import pandas as pd

    from covidmtl.lungseg.evaluate import paired_dice_difference

    rows = []
    for i, (c, r) in enumerate([(0.90, 0.95), (0.92, 0.96), (0.94, 0.95), (0.96, 0.98), (0.91, 0.97), (0.93, 0.94)]):
        rows += [{"subject": f"S{i}", "method": "classical", "dice": c}, {"subject": f"S{i}", "method": "refined", "dice": r}]
    # mean difference 0.0317; all six differences positive: exact two-sided p = 2 / 2**6
    assert paired_dice_difference(pd.DataFrame(rows)) == "+0.0317 (p = 0.031)"
    assert paired_dice_difference(pd.DataFrame(rows[:2])) == "-"  # one subject: no test


def test_table2_and_figure2_entry_points(cli_outputs, tmp_path, capsys):
    import pandas as pd

    from covidmtl.lungseg.cli import figure2_main, table2_main

    root, curated, out = cli_outputs
    # A second subject: the same metrics under another name (the table only aggregates).
    other = tmp_path / "S2"
    other.mkdir()
    record = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    record["subject"] = "S2"
    record["classical"]["metrics"]["dice"] -= 0.01
    (other / "metrics.json").write_text(json.dumps(record))
    stem = tmp_path / "tables" / "table2"
    assert table2_main(["--metrics", str(out / "metrics.json"), str(other / "metrics.json"), "--out-stem", str(stem)]) == 0
    table = pd.read_csv(stem.with_suffix(".csv"))
    assert list(table["n subjects"]) == [2, 2] and list(table["Subjects"]) == ["all", "all"]
    assert table.loc[1, "Dice refined - classical (mean, Wilcoxon p)"].startswith("+")
    assert {"Dice (mean ± sd)", "Jaccard (mean ± sd)", "MCC (mean ± sd)", "Precision (mean ± sd)"} <= set(table.columns)
    paper = [c for c in table.columns if "paper" in c.lower()]
    assert len(paper) == 1 and list(table[paper[0]]) == [0.971, 0.982]
    assert "±" in table.loc[0, "Dice (mean ± sd)"]
    assert stem.with_suffix(".md").is_file() and (stem.parent / "table2_per_subject.csv").is_file()
    # With the manifest: rows per diagnosis after the rows over all subjects.
    manifest = tmp_path / "manifest.csv"
    first = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["subject"]
    pd.DataFrame({"subject_id": [first, "S2"], "diagnosis3": ["covid19", "normal"]}).to_csv(manifest, index=False)
    assert table2_main(["--metrics", str(out / "metrics.json"), str(other / "metrics.json"), "--out-stem", str(stem),
                        "--manifest", str(manifest)]) == 0
    table = pd.read_csv(stem.with_suffix(".csv"))
    assert list(table["Subjects"]) == ["all", "all", "covid19", "covid19", "normal", "normal"]
    assert list(table["n subjects"]) == [2, 2, 1, 1, 1, 1]
    assert pd.read_csv(stem.parent / "table2_per_subject.csv").diagnosis3.notna().all()

    fig = tmp_path / "figures" / "figure2.png"
    assert figure2_main(["--subject-dirs", str(out), "--curated-dirs", str(curated), "--out", str(fig)]) == 0
    assert fig.is_file() and fig.with_suffix(".pdf").is_file()

    # Among several subjects the panels go to those where the refinement recovers lesion.
    import shutil

    other_out, other_cur = tmp_path / "out" / "S0", tmp_path / "cur" / "S0"
    shutil.copytree(out, other_out)
    renamed = json.loads((other_out / "metrics.json").read_text(encoding="utf-8"))
    renamed["subject"] = "S0"
    (other_out / "metrics.json").write_text(json.dumps(renamed))
    (other_cur / "masks").mkdir(parents=True)
    shutil.copy(curated / "ct.nii.gz", other_cur / "ct.nii.gz")  # no lesion mask
    capsys.readouterr()
    assert figure2_main(["--subject-dirs", str(other_out), str(out), "--curated-dirs", str(other_cur), str(curated),
                         "--out", str(fig), "--max-subjects", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["subjects"] == ["S1"]


def test_figure2_slice_shows_recovered_lesion(phantom):
    from covidmtl.lungseg.figures import pick_figure2_slice

    _, _, lesion, initial, refined = phantom
    les = sitk.GetArrayFromImage(lesion) > 0
    z = pick_figure2_slice(sitk.GetArrayFromImage(initial) > 0, sitk.GetArrayFromImage(refined) > 0, les)
    assert les[z].any()


# --------------------------------------------------------------------------- the cohort's phantom
def _resample(image: sitk.Image, spacing: float, interpolator, pixel, default) -> sitk.Image:
    size = [int(round(n * s / spacing)) for n, s in zip(image.GetSize(), image.GetSpacing())]
    return sitk.Resample(image, size, sitk.Transform(), interpolator, image.GetOrigin(), (spacing,) * 3,
                         image.GetDirection(), default, pixel)


@pytest.mark.slow
def test_synthetic_cohort_subject():
    phantom_module = pytest.importorskip("covidmtl.synthetic.phantom")
    subject = phantom_module.generate_subject(
        {"diagnosis3": "covid19", "morbidity": "severe", "age": 60, "sex": "M"},
        phantom_module.PhantomParams(size_scale=0.6, slice_spacing_mm=(1.0, 2.0)), seed=11)
    ct = _resample(subject.ct, 2.0, sitk.sitkLinear, sitk.sitkInt16, -1024)
    gt = _resample(subject.lung_mask, 2.0, sitk.sitkNearestNeighbor, sitk.sitkUInt8, 0)
    lesion = _resample(subject.lesion_mask, 2.0, sitk.sitkNearestNeighbor, sitk.sitkUInt8, 0)
    initial = classical_segmentation(ct, subject="synthetic")
    refined = refine_with_active_contours(ct, initial, threads=2)
    assert _dice(initial, gt) > 0.9 and _dice(refined, gt) > 0.9
    # The refinement brings back lesion voxels that thresholding misses (see the report
    # about the Dice difference on this phantom).
    assert _lesion_recall(refined, lesion) > _lesion_recall(initial, lesion)
