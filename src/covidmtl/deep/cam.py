"""``covidmtl deep-cam``: COVID-MTL Figure 7, class activation maps of an infected and a
normal case.

Grad-CAM (Selvaraju et al. 2017) from the last convolutional block of the trained model
(captum's ``LayerGradCam``): channel weights = spatially averaged gradients of the class
logit, map = ReLU(weighted sum of the block's feature maps), upsampled trilinearly to
the input crop and normalised to [0, 1]. The class explained is the one the model
predicts. Slices through the CAM maximum are overlaid on the (normalised) input.

    covidmtl deep-cam --model results/deep/mtl_shift_features/model.pt \
        --volumes-dir results/lungseg --manifest results/manifest.csv --split results/split.csv \
        --features results/features/features.parquet \
        --predictions results/deep/mtl_shift_features/predictions.csv --task ct \
        --out-dir results/deep/report

Cases: ``--subjects INFECTED NORMAL``, else the most confidently correct positive and
negative test subjects in ``--predictions``, else the first positive / negative test
subjects of the manifest.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from covidmtl.deep.data import STAGE, VolumeLoader, build_transform, discover_volumes, prepare_inputs
from covidmtl.deep.experiment import load_model_file, rebuild_model
from covidmtl.deep.figures import figure7_cam
from covidmtl.errors import PipelineInputError

log = logging.getLogger(__name__)


def grad_cam(model: torch.nn.Module, image: torch.Tensor, task: str, features: torch.Tensor | None = None,
             target: int | None = None) -> tuple[np.ndarray, int, np.ndarray]:
    """Grad-CAM of ``task`` for one (1, 1, z, y, x) input: (cam in [0, 1] at input size,
    explained class, class probabilities)."""
    from captum.attr import LayerAttribution, LayerGradCam

    model.eval()

    def forward(x: torch.Tensor, feats: torch.Tensor | None = None) -> torch.Tensor:
        return model(x, feats)[task]

    with torch.no_grad():
        prob = torch.softmax(forward(image, features).float(), dim=1)[0].numpy()
    target = int(prob.argmax()) if target is None else int(target)
    cam = LayerGradCam(forward, model.cam_layer).attribute(
        image, target=target, additional_forward_args=(features,), relu_attributions=True)
    cam = LayerAttribution.interpolate(cam.detach().float(), tuple(image.shape[2:]), interpolate_mode="trilinear")
    cam = cam[0, 0].numpy()
    peak = float(cam.max())
    return (cam / peak if peak > 0 else cam), target, prob


def cam_center(cam: np.ndarray) -> tuple[int, int, int]:
    """Slice position through the activation: centre of mass of cam^2 (the volume centre when
    the map is empty)."""
    weight = cam.astype(np.float64) ** 2
    if weight.sum() <= 0:
        return tuple(s // 2 for s in cam.shape)
    grids = np.indices(cam.shape)
    return tuple(int(round(float((g * weight).sum() / weight.sum()))) for g in grids)


def pick_cases(task: str, test_ids: list[str], y_true: np.ndarray, predictions: Path | None) -> tuple[str, str]:
    """(infected, normal) subject ids of the test split."""
    positive = 2 if task == "severity" else 1
    if predictions is not None:
        pred = pd.read_csv(predictions, dtype={"subject_id": str})
        pred = pred[(pred["task"] == task) & pred["subject_id"].isin(test_ids)]
        pos = pred[pred["y_true"] == positive].sort_values(f"prob_{positive}", ascending=False)
        neg = pred[pred["y_true"] == 0].sort_values("prob_0", ascending=False)
        if len(pos) and len(neg):
            return str(pos["subject_id"].iloc[0]), str(neg["subject_id"].iloc[0])
    ids = np.asarray(test_ids)
    pos, neg = ids[y_true == positive], ids[y_true == 0]
    if not len(pos) or not len(neg):
        raise PipelineInputError(STAGE, f"the test split needs a positive and a negative case of task {task} for "
                                        f"Figure 7", hint="pass --subjects INFECTED NORMAL")
    return str(pos[0]), str(neg[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="covidmtl deep-cam", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="model.pt written by deep-train")
    vol = ap.add_mutually_exclusive_group(required=True)
    vol.add_argument("--volumes-dir", type=Path)
    vol.add_argument("--volume-files", type=Path, nargs="+")
    vol.add_argument("--volumes", type=Path)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--features", type=Path, default=None)
    ap.add_argument("--predictions", type=Path, default=None, help="predictions.csv of the same run (picks cases)")
    ap.add_argument("--task", default=None, help="task whose class is explained (default: ct if trained, else the first)")
    ap.add_argument("--subjects", nargs=2, metavar=("INFECTED", "NORMAL"), default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-dir", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))

    try:
        meta = load_model_file(args.model)
    except Exception as err:  # noqa: BLE001
        raise PipelineInputError("deep-cam", f"cannot load the model ({err})", path=args.model,
                                 hint="rerun covidmtl deep-train for this variant") from err
    model, spec, cfg = rebuild_model(meta)
    task = args.task or ("ct" if "ct" in spec.tasks else spec.tasks[0])
    if task not in spec.tasks:
        raise PipelineInputError("deep-cam", f"the model was not trained for task {task} (tasks {list(spec.tasks)})",
                                 path=args.model, hint="choose --task among the model's tasks")
    volumes = discover_volumes(args.volumes_dir, args.volume_files, args.volumes)
    data = prepare_inputs(spec.task_classes, cfg, volumes, args.manifest, args.split, args.features,
                          use_features=spec.features, check_volumes=False)
    test = data.test
    if args.subjects:
        missing = [s for s in args.subjects if s not in test.subject_ids]
        if missing:
            raise PipelineInputError("deep-cam", f"subject(s) {missing} are not in the test split", subject=missing[0],
                                     path=args.split, hint="choose test-split subjects")
        cases = tuple(args.subjects)
    else:
        cases = pick_cases(task, test.subject_ids, test.targets[task], args.predictions)

    mean, std = meta["intensity"]
    loader = VolumeLoader(cfg.input.clip_hu, cfg.input.input_size)
    transform = build_transform(cfg, train=False, mean=mean, std=std)
    panels, rows = [], []
    for role, sid in zip(("infected", "normal"), cases):
        i = test.subject_ids.index(sid)
        image = transform(torch.from_numpy(loader(test.paths[i], sid).copy())[None])
        image = torch.as_tensor(image.as_tensor() if hasattr(image, "as_tensor") else image).float()[None]
        feats = torch.from_numpy(test.features[i])[None] if test.features is not None else None
        cam, cls, prob = grad_cam(model, image, task, feats)
        arr = image[0, 0].numpy()
        center = cam_center(cam)
        label = int(test.targets[task][i])
        panels.append({"name": f"{role}: {sid} ({task} label {label}, predicted {cls}, p={prob[cls]:.2f})",
                       "image": arr, "cam": cam, "center": center})
        rows.append({"role": role, "subject_id": sid, "task": task, "y_true": label, "explained_class": cls,
                     **{f"prob_{k}": float(p) for k, p in enumerate(prob)}})
    args.out_dir.mkdir(parents=True, exist_ok=True)
    figure7_cam(panels, args.out_dir / "figure7_cam",
                f"Figure 7: Grad-CAM of {spec.label}, task {task} (last convolutional block)")
    pd.DataFrame(rows).to_csv(args.out_dir / "figure7_cases.csv", index=False)
    log.info("Figure 7: %s", ", ".join(f"{r['role']}={r['subject_id']}" for r in rows))
    return 0
