"""``covidmtl twod-train``: one training command for every 2D variant (Amyar, MGA and baselines).

    covidmtl twod-train --variant amyar_mtl_binary --slices-index results/twod/slices/index.csv \
        --params '<json of config "twod">' --threads 4 --out-dir results/twod/amyar_mtl_binary
    covidmtl twod-train --variant mga --segmenter results/twod/mga_seg_hmsa/model.pt ...
    covidmtl twod-train --variant mga --train-fraction 0.25 ...      # MGA section 6.3 sweep

Every variant writes the same files to ``--out-dir``:

- ``model.pt``: best weights (early stopping) + what is needed to rebuild the model;
- ``history.csv``: per epoch: learning rate, training and validation losses per component
  (cls, seg, rec, mga, total), accuracy/AUC/Dice on validation, seconds per mini-batch;
- ``predictions.csv``: test split, one row per slice: ``slice_id, subject_id, task, model,
  y_true, y_pred, prob_0, prob_1[, prob_2]`` (header only for segmentation-only variants);
- ``predictions_patient.csv``: the same per subject (mean of its slices' probabilities), in
  the layout of the RF/LightGBM stage;
- ``seg_metrics.csv``: test split, per slice: TP, FP, FN, Dice, IoU, precision, recall
  (header only for classification-only variants);
- ``seg_examples.npz``: a few test slices with lesion (image, mask, predicted probability)
  for the segmentation figures;
- ``metrics.json``: summary (classification and segmentation metrics, epochs, timing).

``checkpoint.pt`` (per epoch; a rerun resumes from it) is written there too but is not a
result (do not declare it as a rule output). All input problems are reported before
training starts. ``covidmtl twod-train --list-variants`` prints the variants.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from covidmtl.deep.evaluate import predictions_frame
from covidmtl.deep.train import resolve_device, save_atomic, seed_everything
from covidmtl.errors import PipelineInputError
from covidmtl.twod.config import TwoDConfig
from covidmtl.twod.data import (CLASS_NAMES, STAGE, SliceDataset, SliceRecords, check_classes,
                                check_images, check_masks_present, ensure_split, read_slice_index, subsample_train)
from covidmtl.twod.metrics import classification_summary, segmentation_summary, slice_scores
from covidmtl.twod.train import TwoDFitSettings, fit_2d
from covidmtl.twod.variants import VARIANTS, VariantSpec, build_criterion, build_model, family_settings, get_variant

log = logging.getLogger(__name__)

MODEL_FORMAT = 1
TASK_NAMES = {"binary": "covid", "3class": "diagnosis3"}
N_EXAMPLES = 8
OUTPUT_FILES = ("model.pt", "history.csv", "predictions.csv", "predictions_patient.csv", "seg_metrics.csv",
                "seg_examples.npz", "metrics.json")
SEG_COLUMNS = ["slice_id", "subject_id", "model", "has_mask", "tp", "fp", "fn", "dice", "iou", "precision", "recall"]


# --------------------------------------------------------------------------- model files


def load_model_file(path: str | Path) -> dict[str, Any]:
    """A ``model.pt`` written by twod-train (``weights_only`` load)."""
    meta = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT or "state_dict" not in meta:
        raise ValueError("not a model.pt written by covidmtl twod-train")
    return meta


def rebuild_model(meta: dict[str, Any]) -> tuple[torch.nn.Module, VariantSpec, TwoDConfig]:
    spec = get_variant(meta["variant"])
    cfg = TwoDConfig.from_dict(meta["config"])
    model = build_model(spec, cfg)
    model.load_state_dict(meta["state_dict"])
    return model.eval(), spec, cfg


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- guide masks (MGA)


@torch.no_grad()
def predict_lesion_probability(model: torch.nn.Module, dataset: SliceDataset, batch_size: int = 8,
                               device: str = "auto") -> np.ndarray:
    """(N, S, S) lesion probabilities of a segmenting model over a slice dataset."""
    dev = resolve_device(device)
    model = model.to(dev).eval()
    out = []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        out.append(torch.sigmoid(model(image=batch["inputs"]["image"].to(dev))["seg"].float()).cpu())
    return torch.cat(out)[:, 0].numpy()


def guide_masks(df: pd.DataFrame, cfg: TwoDConfig, size: int, segmenter: Path | None,
                device: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Masks that supervise MGA's attention map, area-averaged to a quarter of the input size
    (the resolution of stage 1; later stages pool further). Returns (guides, valid, info)."""
    guide_size = max(1, math.ceil(size / 4))
    records = SliceRecords.from_frame(df, None)
    if cfg.mga.guide_source == "ground_truth":
        ds = SliceDataset(records, size, cache=False)
        masks = np.stack([ds.arrays(i)[1] for i in range(len(ds))]).astype(np.float32)
        valid = records.has_mask.astype(np.float32)
        info = {"guide_source": "ground_truth"}
    else:
        if segmenter is None:
            raise PipelineInputError(STAGE, "the MGA variants need the lesion segmenter's model (twod.mga.guide_source "
                                            "is 'predicted') but no --segmenter was given",
                                     hint="pass --segmenter <out-dir of mga_seg_hmsa>/model.pt, or set "
                                          "twod.mga.guide_source: ground_truth")
        if not Path(segmenter).is_file():
            raise PipelineInputError(STAGE, "the --segmenter model does not exist", path=segmenter,
                                     hint="train the mga_seg_hmsa variant first")
        try:
            meta = load_model_file(segmenter)
            seg_model, seg_spec, seg_cfg = rebuild_model(meta)
        except Exception as err:  # noqa: BLE001
            raise PipelineInputError(STAGE, f"cannot load the --segmenter model ({err})", path=segmenter,
                                     hint="retrain the segmenter; its model.pt is damaged or from another version") from err
        if not seg_spec.segments:
            raise PipelineInputError(STAGE, f"--segmenter holds variant {seg_spec.name}, which does not segment",
                                     path=segmenter, hint="use the model.pt of mga_seg_hmsa (or unet_seg/segnet_seg)")
        seg_size = seg_spec.input_size(seg_cfg)
        log.info("predicting lesion masks of %d slices with %s (%s, %dx%d)", len(records), segmenter, seg_spec.name,
                 seg_size, seg_size)
        prob = predict_lesion_probability(seg_model, SliceDataset(records, seg_size, cache=False), device=device)
        masks = (prob >= cfg.mga.guide_threshold).astype(np.float32)
        if seg_size != size:
            masks = F.interpolate(torch.from_numpy(masks)[:, None], size=(size, size), mode="nearest")[:, 0].numpy()
        valid = np.ones(len(records), dtype=np.float32)
        info = {"guide_source": "predicted", "segmenter": str(segmenter), "segmenter_variant": seg_spec.name,
                "segmenter_digest": _file_digest(Path(segmenter)),
                "guide_lesion_fraction": float(masks.mean())}
    guides = F.adaptive_avg_pool2d(torch.from_numpy(masks)[:, None], guide_size)[:, 0].numpy().astype(np.float16)
    return guides, valid, info


# --------------------------------------------------------------------------- run


def _split_frames(df: pd.DataFrame, spec: VariantSpec) -> dict[str, pd.DataFrame]:
    frames = {s: df[df["split"] == s].sort_values("slice_id").reset_index(drop=True) for s in ("train", "val", "test")}
    if spec.segments_only:
        # segmenters learn and are validated on slices with a lesion mask only
        frames["train"] = frames["train"][frames["train"]["has_mask"]].reset_index(drop=True)
        frames["val"] = frames["val"][frames["val"]["has_mask"]].reset_index(drop=True)
    return frames


def drop_binary_only(df: pd.DataFrame) -> pd.DataFrame:
    """The rows with a 3-class label, when only some have one (a binary-only dataset such as
    UCSD COVID-CT's non-COVID class, which mixes normal and other disease, merged with 3-class
    data); an index without any 3-class label is left for check_classes to report."""
    unlabelled = df["label_3class"].isna()
    if not unlabelled.any() or unlabelled.all():
        return df
    log.warning("%d slice(s) of %d patient(s) have only a binary label (datasets: %s); left out of this 3-class "
                "variant", int(unlabelled.sum()), df.loc[unlabelled, "patient_id"].nunique(),
                sorted(df.loc[unlabelled, "dataset"].unique()))
    return df[~unlabelled].reset_index(drop=True)


def fit_settings(spec: VariantSpec, cfg: TwoDConfig, seed: int) -> TwoDFitSettings:
    fam = family_settings(spec, cfg)
    t = cfg.train
    return TwoDFitSettings(epochs=t.max_epochs, batch_size=fam["batch_size"], lr_max=fam["lr"], lr_min=0.0,
                           weight_decay=t.weight_decay, num_workers=t.num_workers, amp=t.amp, amp_dtype=t.amp_dtype,
                           channels_last=t.channels_last, progress=t.progress, device=t.device, seed=seed,
                           scheduler=fam["scheduler"], patience=fam["patience"], min_delta=t.min_delta)


def run(spec: VariantSpec, cfg: TwoDConfig, index_path: Path, out_dir: Path, segmenter: Path | None = None,
        train_fraction: float = 1.0, seed: int | None = None, stop_after_epoch: int | None = None
        ) -> dict[str, Any] | None:
    """Check inputs, train (or resume) and write the outputs; returns metrics.json's content
    (None when stopped early by ``stop_after_epoch``)."""
    seed = cfg.seed if seed is None else int(seed)
    task = spec.resolved_task(cfg)
    size = spec.input_size(cfg)
    df = ensure_split(read_slice_index(index_path), cfg.split.fractions, cfg.seed, index_path)
    if task == "3class":
        df = drop_binary_only(df)
    if train_fraction < 1:
        df = subsample_train(df, train_fraction, seed, task or "binary")
    splits = ("train", "val", "test") if (df["split"] == "val").any() else ("train", "test")
    if spec.classifies:
        check_classes(df, task, index_path, splits)
    if spec.segments:
        # segmentation-only variants early-stop on the validation slices with a mask
        mask_splits = splits if spec.segments_only else ("train", "test")
        check_masks_present(df, index_path, mask_splits, variant=spec.name)
    frames = _split_frames(df, spec)
    used = pd.concat([frames[s] for s in splits], ignore_index=True)
    check_images(used)
    out_dir.mkdir(parents=True, exist_ok=True)

    guides = valid = None
    guide_info: dict[str, Any] = {}
    if "mga" in spec.tasks:
        guides, valid, guide_info = guide_masks(used, cfg, size, segmenter, cfg.train.device)

    fingerprint_src = {"variant": spec.name, "config": cfg.to_dict(), "seed": seed, "train_fraction": train_fraction,
                       "slices": {s: frames[s]["slice_id"].tolist() for s in splits},
                       "guides": guide_info.get("segmenter_digest") or guide_info.get("guide_source")}
    fingerprint = hashlib.sha256(json.dumps(fingerprint_src, sort_keys=True).encode()).hexdigest()[:16]

    offsets = np.cumsum([0] + [len(frames[s]) for s in splits])
    datasets = {}
    for i, s in enumerate(splits):
        sl = slice(offsets[i], offsets[i + 1])
        datasets[s] = SliceDataset(SliceRecords.from_frame(frames[s], task), size, cfg.train.cache_images,
                                   guides[sl] if guides is not None else None, valid[sl] if valid is not None else None)

    seed_everything(seed)
    model = build_model(spec, cfg)
    criterion = build_criterion(spec, cfg)
    settings = fit_settings(spec, cfg, seed)
    result, trainer = fit_2d(model, criterion, datasets["train"], datasets.get("val"), settings, out_dir, fingerprint,
                             stop_after_epoch)
    if not result.completed:
        return None

    ev = trainer.evaluate(datasets["test"], "test", keep_examples=N_EXAMPLES)
    test = frames["test"]
    classes = list(CLASS_NAMES[task]) if task else []
    save_atomic({"format": MODEL_FORMAT, "variant": spec.name, "config": cfg.to_dict(), "seed": seed, "task": task,
                 "class_names": classes, "input_size": size,
                 "state_dict": {k: v.detach().cpu().contiguous() for k, v in trainer.model.state_dict().items()}},
                out_dir / "model.pt")
    metrics: dict[str, Any] = {
        "variant": spec.name, "label": spec.label, "family": spec.family, "architecture": spec.architecture,
        "tasks": list(spec.tasks), "task": task, "class_names": classes, "input_size": size,
        "mga_stage": spec.resolved_stage(cfg), "train_fraction": train_fraction, "seed": seed,
        "epochs": result.epochs_done, "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
        "device": result.device, "seconds": round(result.seconds, 2), "sec_per_batch": result.sec_per_batch,
        "batch_size": settings.batch_size,
        "n_slices": {s: len(frames[s]) for s in splits},
        "n_patients": {s: int(frames[s]["patient_id"].nunique()) for s in splits},
        "n_parameters": int(sum(p.numel() for p in trainer.model.parameters())),
        "test_loss": ev.losses, **guide_info,
    }
    _write_classification(ev, test, spec, task, out_dir, metrics)
    _write_segmentation(ev, test, spec, out_dir, metrics)
    metrics["config"] = cfg.to_dict()
    (out_dir / "metrics.json").write_text(json.dumps(_finite(metrics), indent=1))
    log.info("%s: %s", spec.name, {k: {m: round(v, 3) for m, v in metrics[k].items()
                                        if m in {"accuracy", "auc", "dice", "iou"} and isinstance(v, float)}
                                    for k in ("classification", "segmentation") if k in metrics})
    return metrics


def _write_classification(ev, test: pd.DataFrame, spec: VariantSpec, task: str | None, out_dir: Path,
                          metrics: dict) -> None:
    n_prob = {"binary": 2, "3class": 3}.get(task, 2)
    columns = ["slice_id", "subject_id", "task", "model", "y_true", "y_pred"] + [f"prob_{k}" for k in range(n_prob)]
    patient_columns = [c for c in columns if c != "slice_id"]
    if ev.probs is None:
        pd.DataFrame(columns=columns).to_csv(out_dir / "predictions.csv", index=False)
        pd.DataFrame(columns=patient_columns).to_csv(out_dir / "predictions_patient.csv", index=False)
        return
    subject_of = dict(zip(test["slice_id"], test["subject_id"]))
    task_name = TASK_NAMES[task]
    pred = predictions_frame(ev.slice_ids, {task_name: ev.y_true}, {task_name: ev.probs}, spec.name, n_prob)
    pred = pred.rename(columns={"subject_id": "slice_id"})
    pred.insert(1, "subject_id", pred["slice_id"].map(subject_of))
    pred.to_csv(out_dir / "predictions.csv", index=False)
    prob_cols = [f"prob_{k}" for k in range(n_prob)]
    per_subject = pred.groupby("subject_id", sort=True).agg({"y_true": "first", **{c: "mean" for c in prob_cols}})
    patient = predictions_frame(per_subject.index.tolist(), {task_name: per_subject["y_true"].to_numpy()},
                                {task_name: per_subject[prob_cols].to_numpy()}, spec.name, n_prob)
    patient.to_csv(out_dir / "predictions_patient.csv", index=False)
    metrics["classification"] = classification_summary(ev.y_true, ev.probs)
    metrics["classification_patient"] = classification_summary(per_subject["y_true"].to_numpy(),
                                                               per_subject[prob_cols].to_numpy())


def _write_segmentation(ev, test: pd.DataFrame, spec: VariantSpec, out_dir: Path, metrics: dict) -> None:
    if ev.seg_counts is None:
        pd.DataFrame(columns=SEG_COLUMNS).to_csv(out_dir / "seg_metrics.csv", index=False)
        np.savez_compressed(out_dir / "seg_examples.npz", slice_id=np.array([], dtype=str))
        return
    subject_of = dict(zip(test["slice_id"], test["subject_id"]))
    tp, fp, fn = ev.seg_counts.T
    seg = pd.DataFrame({"slice_id": ev.slice_ids, "subject_id": [subject_of[s] for s in ev.slice_ids],
                        "model": spec.name, "has_mask": ev.has_mask, "tp": tp, "fp": fp, "fn": fn,
                        **slice_scores(tp, fp, fn)})
    seg.to_csv(out_dir / "seg_metrics.csv", index=False)
    with_mask = seg[seg["has_mask"]]
    metrics["segmentation"] = segmentation_summary(with_mask["tp"], with_mask["fp"], with_mask["fn"])
    np.savez_compressed(out_dir / "seg_examples.npz", **(ev.examples or {"slice_id": np.array([], dtype=str)}))


def _finite(obj: Any) -> Any:
    """JSON without NaN (null instead)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# --------------------------------------------------------------------------- CLI


def _variant_help() -> str:
    return "\n".join(f"  {name:24s} {spec.description}" for name, spec in VARIANTS.items())


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="covidmtl twod-train", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="variants:\n" + _variant_help())
    ap.add_argument("--variant", choices=sorted(VARIANTS), metavar="NAME", help="model/experiment (list below)")
    ap.add_argument("--slices-index", type=Path, help="index.csv of twod-slices, or the CSV of a 2D dataset")
    ap.add_argument("--params", default="{}", help="JSON of the `twod` config section")
    ap.add_argument("--seed", type=int, default=None, help="overrides twod.seed for initialisation and sampling")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    ap.add_argument("--segmenter", type=Path, default=None,
                    help="model.pt of the lesion segmenter (mga_seg_hmsa) for the mga* variants")
    ap.add_argument("--train-fraction", type=float, default=1.0,
                    help="keep this fraction of the training patients per class (MGA section 6.3 sweep)")
    ap.add_argument("--out-dir", type=Path, help="output folder")
    ap.add_argument("--stop-after-epoch", type=int, default=None,
                    help="stop after this epoch keeping checkpoint.pt (rerun to resume); for time-limited jobs")
    ap.add_argument("--list-variants", action="store_true", help="print the variants and exit")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.list_variants:
        print(_variant_help())
        return 0
    missing = [n for n in ("variant", "slices_index", "out_dir") if getattr(args, n) is None]
    if missing:
        ap.error("needs " + ", ".join("--" + m.replace("_", "-") for m in missing))
    if not 0 < args.train_fraction <= 1:
        ap.error("--train-fraction must be in (0, 1]")
    try:
        cfg = TwoDConfig.from_json(args.params)
    except (ValueError, TypeError) as err:
        print(f"covidmtl twod-train: bad --params: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    run(get_variant(args.variant), cfg, args.slices_index, args.out_dir, args.segmenter, args.train_fraction,
        args.seed, args.stop_after_epoch)
    return 0
