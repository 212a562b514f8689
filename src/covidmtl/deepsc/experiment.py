"""``covidmtl deepsc-train``: one training command for every DeepSC-COVID variant.

    covidmtl deepsc-train --variant deepsc --manifest results/manifest.csv \
        --split results/split.csv --lungseg-dir results/lungseg \
        --params '<json of config "deepsc">' --threads 4 --out-dir results/deepsc/deepsc

Writes to ``--out-dir`` (every variant writes every file, empty tables where a task is not
trained, so rules can declare the same outputs for all):

- ``model.pt``          final weights + variant + config (``torch.load(weights_only=True)``)
- ``history.csv``       per epoch: stage, lr, train/test losses (total, seg, cls, ta), patch
                        Dice, accuracy, AUC, cross-stitch and eta weights, seconds
- ``predictions.csv``   test diagnosis, shared layout ``subject_id, task, model, y_true,
                        y_pred, prob_0, prob_1, prob_2`` (task ``diagnosis3``; classes
                        0 covid19, 1 cap, 2 normal)
- ``segmentation.csv``  per test scan with a lesion mask: whole-volume DSC, sensitivity,
                        specificity, NSD, RMS surface distance (mm), volumes
- ``metrics.json``      summary (Table II/III numbers, inference seconds per scan, stages)
- ``example.npz``       one axial slice of the most infected test scan: CT, reference,
                        lesion probability, evidence masks V_1..V_3 (Figures 8 and 10)
- ``checkpoint.pt``     per epoch; a rerun resumes from it (not an output to declare)

Validation: per-epoch test curves (fixed test patches and the test classification) are
logged for the figures only; there is no model selection, the last epoch is the model.
All input problems are reported before training. ``--list-variants`` prints the variants.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch

from covidmtl.deep.evaluate import predictions_frame
from covidmtl.deep.train import resolve_device, save_atomic, seed_everything
from covidmtl.deepsc.config import DeepSCConfig
from covidmtl.deepsc.data import (CLASSES, STAGE, CaseStore, DeepSCDataset, Subject, class_counts,
                                  prepare_subjects, read_lps)
from covidmtl.deepsc.inference import full_lesion_mask, full_volume, predict_case
from covidmtl.deepsc.losses import DeepSCLoss, class_weights
from covidmtl.deepsc.metrics import classification_metrics, segmentation_metrics, summarise_segmentation
from covidmtl.deepsc.train import amp_settings, fit_stages
from covidmtl.deepsc.variants import (VARIANTS, VariantSpec, build_model, data_mode, get_variant, inference_mode,
                                      phases)
from covidmtl.errors import PipelineInputError

log = logging.getLogger(__name__)

MODEL_FORMAT = 1
TASK = "diagnosis3"
SEG_COLUMNS = ["subject_id", "model", "diagnosis3", "dsc", "sensitivity", "specificity", "nsd", "rms_ssd_mm",
               "pred_volume_ml", "true_volume_ml"]
PRED_COLUMNS = ["subject_id", "task", "model", "y_true", "y_pred", "prob_0", "prob_1", "prob_2"]


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def training_config(cfg: DeepSCConfig) -> dict[str, Any]:
    """The knobs that change the trained weights (the resume fingerprint ignores the rest)."""
    d = cfg.to_dict()
    for key in ("evaluation", "findings"):
        d.pop(key)
    for key in ("progress", "num_workers"):
        d["train"].pop(key)
    d["preprocess"].pop("cache_in_memory")
    return d


def load_model_file(path: str | Path) -> dict[str, Any]:
    meta = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT or "state_dict" not in meta \
            or meta.get("kind") != "deepsc":
        raise ValueError("not a model.pt written by covidmtl deepsc-train")
    return meta


def rebuild_model(meta: dict[str, Any]) -> tuple[torch.nn.Module, VariantSpec, DeepSCConfig]:
    spec = get_variant(meta["variant"])
    cfg = DeepSCConfig.from_dict(meta["config"])
    model = build_model(spec, cfg)
    model.load_state_dict(meta["state_dict"])
    return model.eval(), spec, cfg


def load_init(paths: list[Path], model: torch.nn.Module) -> frozenset[str]:
    """Load matching weights of earlier runs; returns the parameter groups they cover fully."""
    merged: dict[str, torch.Tensor] = {}
    for path in paths:
        if not Path(path).is_file():
            raise PipelineInputError(STAGE, "the --init-from model does not exist", path=path,
                                     hint="train the variant it comes from first")
        try:
            meta = load_model_file(path)
        except Exception as err:  # noqa: BLE001 - any load failure is a bad file
            raise PipelineInputError(STAGE, f"cannot load the --init-from model ({err})", path=path,
                                     hint="retrain the variant it comes from; its model.pt is damaged") from err
        merged.update(meta["state_dict"])
    own = model.state_dict()
    wrong = [k for k, v in merged.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if wrong:
        raise PipelineInputError(STAGE, f"--init-from weights do not fit this variant's shapes (e.g. {wrong[0]})",
                                 path=paths[0], hint="use a model trained with the same deepsc model/width settings")
    loaded = {k: v for k, v in merged.items() if k in own}
    if not loaded:
        raise PipelineInputError(STAGE, "no weight of --init-from belongs to this variant's network", path=paths[0],
                                 hint="initialise from a DeepSC variant of the same architecture")
    groups = model.parameter_groups()
    partial = [g for g, names in groups.items() if 0 < sum(n in loaded for n in names) < len(names)]
    if partial:
        raise PipelineInputError(STAGE, f"--init-from holds only part of the {'/'.join(partial)} branch of this "
                                        f"variant (another architecture, e.g. with/without inception blocks)",
                                 path=paths[0], hint="initialise from a run of the same architecture (e.g. the "
                                                     "'pretrain' variant for the inception + cross-stitch models)")
    model.load_state_dict(loaded, strict=False)
    covered = frozenset(g for g, names in groups.items() if names and all(n in loaded for n in names))
    log.info("--init-from: %d tensors loaded; pre-trained parts: %s (their pre-training stage is skipped)",
             len(loaded), sorted(covered) or "none")
    return covered


def _example_subject(subjects: list[Subject]) -> str | None:
    """The test scan with the largest annotated lesion volume (the same for every variant)."""
    best, best_volume = None, 0
    for s in subjects:
        if not s.has_mask:
            continue
        volume = int(np.count_nonzero(sitk.GetArrayViewFromImage(sitk.ReadImage(str(s.lesion_path)))))
        if volume > best_volume:
            best, best_volume = s.subject_id, volume
    return best


def _example_arrays(case, subject: Subject, pred, threshold: float) -> dict[str, np.ndarray]:
    truth = full_lesion_mask(case)
    z = int(np.argmax(truth.reshape(truth.shape[0], -1).sum(1))) if truth is not None and truth.any() \
        else case.full_shape[0] // 2
    hu = read_lps(subject.ct_path)
    out: dict[str, np.ndarray] = {
        "subject_id": np.array(subject.subject_id), "slice_index": np.array(z),
        "spacing": np.asarray(hu.GetSpacing()[::-1], dtype=np.float32),
        "ct_hu": np.asarray(sitk.GetArrayFromImage(hu)[z], dtype=np.float32),
        "label": np.array(subject.label)}
    if truth is not None:
        out["truth"] = truth[z].astype(np.uint8)
    if pred.lesion_prob is not None:
        out["lesion_prob"] = full_volume(case, pred.lesion_prob.astype(np.float32))[z]
        out["threshold"] = np.array(threshold, dtype=np.float32)
    if pred.class_prob is not None:
        out["class_prob"] = pred.class_prob.astype(np.float32)
    if pred.evidence is not None:
        for i, v in enumerate(pred.evidence):
            out[f"evidence_{i + 1}"] = full_volume(case, v.astype(np.float32))[z]
    return out


def run(spec: VariantSpec, cfg: DeepSCConfig, manifest: Path, split: Path, lungseg_dir: Path, out_dir: Path,
        init_from: list[Path] | None = None, seed: int | None = None,
        stop_after_epoch: int | None = None) -> dict[str, Any] | None:
    """Validate inputs, train (or resume), evaluate on the test split and write the outputs;
    returns the metrics dict (None when stopped early by ``stop_after_epoch``)."""
    seed = cfg.seed if seed is None else int(seed)
    init_from = list(init_from or [])
    subjects = prepare_subjects(manifest, split, lungseg_dir, spec.tasks)
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint_src = {"variant": spec.name, "config": training_config(cfg), "seed": seed,
                       "train": [s.subject_id for s in subjects.train], "test": [s.subject_id for s in subjects.test],
                       "init_from": [_digest(Path(p)) for p in init_from if Path(p).is_file()]}
    if spec.architecture == "deepsc" and not spec.cross_stitch:
        # Checkpoints of earlier versions stored (and --init-from overwrote) the fixed identity
        # mixing; this key makes a rerun discard such a checkpoint instead of resuming it.
        fingerprint_src["cross_stitch"] = "fixed identity, not saved"
    fingerprint = hashlib.sha256(json.dumps(fingerprint_src, sort_keys=True).encode()).hexdigest()[:16]

    seed_everything(seed)
    model = build_model(spec, cfg)
    pretrained = load_init(init_from, model) if init_from else frozenset()
    stages = phases(spec, cfg, pretrained)
    if not stages:
        raise PipelineInputError(STAGE, f"variant {spec.name} has no training stage with epochs > 0",
                                 hint="set deepsc.train.*_epochs")
    counts = class_counts(subjects.train)
    weights = class_weights(counts, cfg.loss.class_weights)
    log.info("train classes %s = %s; cross-entropy weights %s", list(CLASSES), counts.tolist(),
             [round(w, 3) for w in weights.tolist()])
    criterion = DeepSCLoss(cfg, weights, spec.lambda_ta, spec.task_aware_scales)
    train_store, test_store = CaseStore(subjects.train, cfg), CaseStore(subjects.test, cfg)
    patches = cfg.segmentation.train_patches_per_subject
    train_sets = {s.mode: DeepSCDataset(subjects.train, train_store, s.mode, patches, seed) for s in stages}
    eval_set = DeepSCDataset(subjects.test, test_store, data_mode(spec), 1, seed, fixed=True)
    result = fit_stages(model, criterion, stages, train_sets, eval_set, cfg, seed, out_dir, fingerprint,
                        stop_after_epoch)
    if not result.completed:
        return None

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_atomic({"format": MODEL_FORMAT, "kind": "deepsc", "variant": spec.name, "tasks": list(spec.tasks),
                 "config": cfg.to_dict(), "seed": seed, "state_dict": state}, out_dir / "model.pt")

    # ---------------------------------------------------------------- final test evaluation
    device = resolve_device(cfg.train.device)
    amp, amp_dtype = amp_settings(cfg, device)
    model.to(device)
    mode = inference_mode(spec)
    example_id = _example_subject(subjects.test)
    ids, y_true, probs, seg_rows, seconds = [], [], [], [], []
    example = None
    for i, subject in enumerate(subjects.test):
        case = test_store(subject.subject_id)
        kwargs = dict(mode=mode, tasks=spec.tasks, patch_size=cfg.segmentation.patch_size,
                      batch_size=cfg.train.batch_size, device=device, amp=amp, amp_dtype=amp_dtype)
        if i == 0:  # warm-up (allocator, cuDNN autotuning) is not timed; predict_case feeds every
            predict_case(model, case, **kwargs)  # scan the same batch shapes, so one warm-up covers all
        times = []
        for _ in range(max(1, cfg.evaluation.timing_repeats)):
            pred = predict_case(model, case, **kwargs)
            times.append(pred.seconds)
        seconds.append(float(np.mean(times)))
        if subject.subject_id == example_id:  # evidence masks for the figure, outside the timing
            pred = predict_case(model, case, **kwargs, with_evidence=True)
        if pred.class_prob is not None:
            ids.append(subject.subject_id)
            y_true.append(subject.label)
            probs.append(pred.class_prob)
        if pred.lesion_prob is not None and case.has_mask:
            mask = full_volume(case, (pred.lesion_prob >= cfg.segmentation.threshold).astype(np.uint8))
            m = segmentation_metrics(mask, full_lesion_mask(case), case.spacing, cfg.evaluation.nsd_tolerance_mm)
            seg_rows.append({"subject_id": subject.subject_id, "model": spec.name,
                             "diagnosis3": CLASSES[subject.label], **m})
        if subject.subject_id == example_id:
            example = _example_arrays(case, subject, pred, cfg.segmentation.threshold)
    skipped = [s.subject_id for s in subjects.test if not s.has_mask]
    if "seg" in spec.tasks and skipped:
        log.info("segmentation metrics leave out %d test scan(s) without a lesion mask", len(skipped))

    if probs:
        pred_df = predictions_frame(ids, {TASK: np.asarray(y_true)}, {TASK: np.stack(probs)}, model=spec.name)
    else:
        pred_df = pd.DataFrame(columns=PRED_COLUMNS)
    pred_df.to_csv(out_dir / "predictions.csv", index=False)
    seg_df = pd.DataFrame(seg_rows, columns=SEG_COLUMNS)
    seg_df.to_csv(out_dir / "segmentation.csv", index=False)
    np.savez_compressed(out_dir / "example.npz", **(example or {"subject_id": np.array("")}))

    metrics = {
        "variant": spec.name, "label": spec.label, "architecture": spec.architecture, "tasks": list(spec.tasks),
        "inception": spec.inception if spec.architecture == "deepsc" else None,
        "cross_stitch": (spec.cross_stitch and spec.joint) if spec.architecture == "deepsc" else None,
        "lambda_ta": spec.effective_lambda_ta(cfg), "task_aware_scales": spec.effective_scales(cfg),
        "stages": [{"name": s.name, "mode": s.mode, "epochs": s.epochs, "lr": s.lr} for s in stages],
        "init_from": [str(p) for p in init_from], "epochs": result.epochs_done, "seed": seed,
        "device": str(device), "train_seconds": round(result.seconds, 1),
        "n_train": len(subjects.train), "n_test": len(subjects.test),
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "inference_seconds_per_scan": float(np.mean(seconds)) if seconds else None,
        "inference_seconds_sd": float(np.std(seconds, ddof=1)) if len(seconds) > 1 else None,
        "classification": classification_metrics(y_true, np.stack(probs)) if probs else None,
        "segmentation": summarise_segmentation(seg_df) if "seg" in spec.tasks else None,
        "example_subject": example_id,
        "config": cfg.to_dict(),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, allow_nan=True), encoding="utf-8")
    cls, seg = metrics["classification"] or {}, metrics["segmentation"] or {}
    log.info("%s: accuracy %s, AUC %s, DSC %s, NSD %s, %.2f s per scan on %s", spec.name,
             _fmt(cls.get("accuracy")), _fmt(cls.get("auc")), _fmt(seg.get("dsc")), _fmt(seg.get("nsd")),
             metrics["inference_seconds_per_scan"] or float("nan"), device)
    return metrics


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def _variant_help() -> str:
    return "\n".join(f"  {name:18s} {spec.description}" for name, spec in VARIANTS.items())


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="covidmtl deepsc-train", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="variants:\n" + _variant_help())
    ap.add_argument("--variant", choices=sorted(VARIANTS), metavar="NAME", help="which experiment (list below)")
    ap.add_argument("--manifest", type=Path, help="manifest CSV (subject_id, dataset, diagnosis3, ct_path, "
                                                  "lesion_mask_path, ...)")
    ap.add_argument("--split", type=Path, help="split CSV (subject_id, split = train/test)")
    ap.add_argument("--lungseg-dir", type=Path, help="folder with <dataset>/<subject>/lung_refined.nii.gz")
    ap.add_argument("--params", default="{}", help="JSON of the `deepsc` config section")
    ap.add_argument("--seed", type=int, default=None, help="overrides deepsc.seed (e.g. the workflow's global seed)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    ap.add_argument("--init-from", type=Path, nargs="+", default=None,
                    help="model.pt file(s) of earlier runs: matching weights are loaded and the pre-training "
                         "stage of every part they cover fully is skipped")
    ap.add_argument("--out-dir", type=Path, help="output folder")
    ap.add_argument("--stop-after-epoch", type=int, default=None,
                    help="stop after this (global) epoch, keeping checkpoint.pt (rerun to resume)")
    ap.add_argument("--list-variants", action="store_true", help="print the variants and exit")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.list_variants:
        print(_variant_help())
        return 0
    missing = [n for n in ("variant", "manifest", "split", "lungseg_dir", "out_dir") if getattr(args, n) is None]
    if missing:
        ap.error("missing " + ", ".join("--" + m.replace("_", "-") for m in missing))
    try:
        cfg = DeepSCConfig.from_json(args.params)
    except (ValueError, TypeError) as err:
        print(f"covidmtl deepsc-train: bad --params: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    run(get_variant(args.variant), cfg, args.manifest, args.split, args.lungseg_dir, args.out_dir, args.init_from,
        args.seed, args.stop_after_epoch)
    return 0


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
