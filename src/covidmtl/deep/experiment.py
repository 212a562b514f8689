"""``covidmtl deep-train``: one training command for every 3D deep-model variant.

    covidmtl deep-train --variant mtl_shift_features \
        --volumes-dir results/lungseg --manifest results/manifest.csv --split results/split.csv \
        --features results/features/features.parquet --params '<json of config "deep">' \
        --threads 4 --out-dir results/deep/mtl_shift_features

Writes to ``--out-dir``: ``model.pt`` (final weights + what is needed to rebuild the
model), ``checkpoint.pt`` (per epoch; a rerun resumes from it), ``history.csv`` (per-epoch
train/test losses per task, total loss, accuracy, AUC), ``predictions.csv`` (test split, the
layout of the RF/LightGBM stage) and ``metrics.json``. All input problems are reported
before training starts. ``covidmtl deep-train --list-variants`` prints the variants.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from covidmtl.deep.config import DeepConfig
from covidmtl.deep.data import (STAGE, VolumeDataset, VolumeLoader, build_transform, discover_volumes,
                                intensity_stats, prepare_inputs)
from covidmtl.deep.evaluate import metrics_from_frame, predictions_frame
from covidmtl.deep.losses import MultiTaskLoss
from covidmtl.deep.train import FitSettings, fit, save_atomic, seed_everything
from covidmtl.deep.variants import VARIANTS, VariantSpec, build_model, get_variant, loss_type, prepare_transfer
from covidmtl.errors import PipelineInputError

log = logging.getLogger(__name__)

MODEL_FORMAT = 1


def fit_settings(spec: VariantSpec, cfg: DeepConfig, seed: int) -> FitSettings:
    t = cfg.train
    epochs, lr_max, lr_min = t.epochs, t.lr_max, t.lr_min
    if spec.is_transfer:
        epochs, lr_max, lr_min = cfg.transfer.epochs, cfg.transfer.lr_max, cfg.transfer.lr_min
    return FitSettings(epochs=epochs, batch_size=t.batch_size, lr_max=lr_max, lr_min=lr_min, momentum=t.momentum,
                       nesterov=t.nesterov, weight_decay=t.weight_decay, num_workers=t.num_workers,
                       grad_clip_norm=t.grad_clip_norm, amp=t.amp,
                       amp_dtype=t.amp_dtype, channels_last=t.channels_last, eval_every=t.eval_every,
                       progress=t.progress, device=t.device, seed=seed)


def load_model_file(path: str | Path) -> dict[str, Any]:
    """A ``model.pt`` written by deep-train (``weights_only`` load)."""
    meta = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT or "state_dict" not in meta:
        raise ValueError("not a model.pt written by covidmtl deep-train")
    return meta


def rebuild_model(meta: dict[str, Any]) -> tuple[torch.nn.Module, VariantSpec, DeepConfig]:
    """The trained model of a ``model.pt`` (weights loaded, eval mode)."""
    spec = get_variant(meta["variant"])
    cfg = DeepConfig.from_dict(meta["config"])
    model = build_model(spec, cfg, int(meta.get("n_features", 0)))
    if spec.is_transfer:
        prepare_transfer(model, spec, cfg)
    model.load_state_dict(meta["state_dict"])
    return model.eval(), spec, cfg


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _load_source(spec: VariantSpec, init_from: Path | None) -> dict[str, Any]:
    if init_from is None:
        raise PipelineInputError(STAGE, f"variant {spec.name} starts from a two-task model but no --init-from was "
                                        f"given", hint="pass --init-from <out-dir of mtl2_shift or mtl2_noshift>/model.pt")
    if not Path(init_from).is_file():
        raise PipelineInputError(STAGE, "the --init-from model does not exist", path=init_from,
                                 hint="train the two-task variant (mtl2_shift / mtl2_noshift) first")
    try:
        meta = load_model_file(init_from)
    except Exception as err:  # noqa: BLE001
        raise PipelineInputError(STAGE, f"cannot load the --init-from model ({err})", path=init_from,
                                 hint="retrain the two-task variant; its model.pt is damaged") from err
    if tuple(meta["tasks"]) != tuple(spec.transfer_from) or meta.get("n_features", 0):
        raise PipelineInputError(STAGE, f"--init-from holds a model of tasks {list(meta['tasks'])} (variant "
                                        f"{meta['variant']}); {spec.name} needs the two-task model "
                                        f"{list(spec.transfer_from)} without features", path=init_from,
                                 hint="use the model.pt of mtl2_shift or mtl2_noshift")
    return meta


def run(spec: VariantSpec, cfg: DeepConfig, volumes: dict[str, Path], manifest: Path, split: Path,
        features: Path | None, out_dir: Path, init_from: Path | None = None, seed: int | None = None,
        stop_after_epoch: int | None = None) -> dict[str, Any] | None:
    """Validate inputs, train (or resume), and write the outputs; returns the metrics dict
    (None when stopped early by ``stop_after_epoch``)."""
    seed = cfg.seed if seed is None else int(seed)
    source = _load_source(spec, init_from) if spec.is_transfer else None
    data = prepare_inputs(spec.task_classes, cfg, volumes, manifest, split, features, use_features=spec.features)
    out_dir.mkdir(parents=True, exist_ok=True)

    fingerprint_src = {"variant": spec.name, "config": cfg.to_dict(), "seed": seed,
                       "train": data.train.subject_ids, "test": data.test.subject_ids,
                       "features": data.feature_columns,
                       "init_from": _file_digest(Path(init_from)) if source is not None else None}
    fingerprint = hashlib.sha256(json.dumps(fingerprint_src, sort_keys=True).encode()).hexdigest()[:16]

    loader = VolumeLoader(cfg.input.clip_hu, cfg.input.input_size, cache=cfg.input.cache_in_memory)
    if source is not None:
        mean, std = source["intensity"]  # the frozen trunk expects the source model's normalisation
    elif cfg.input.intensity_mean_std is not None:
        mean, std = cfg.input.intensity_mean_std
    else:
        mean, std = _cached_intensity(out_dir, fingerprint, data, loader, cfg.train.num_workers)
    log.info("intensity normalisation: mean %.2f, sd %.2f HU", mean, std)

    seed_everything(seed)
    model = build_model(spec, cfg, data.n_features)
    if source is not None:
        try:
            model.load_state_dict(source["state_dict"])
        except RuntimeError as err:
            raise PipelineInputError(STAGE, f"the --init-from weights do not fit this configuration ({err})",
                                     path=init_from, hint="use the same deep config (width, squeezenet knobs) "
                                                          "as for the two-task model") from err
        prepare_transfer(model, spec, cfg)
    criterion = MultiTaskLoss(list(spec.tasks), loss_type(spec, cfg), cfg.loss.n_draws, cfg.loss.dirichlet_alpha)
    train_set = VolumeDataset(data.train, loader, build_transform(cfg, True, mean, std) if cfg.augment.enabled
                              else build_transform(cfg, False, mean, std), seed=seed)
    test_set = VolumeDataset(data.test, loader, build_transform(cfg, False, mean, std), seed=seed)
    settings = fit_settings(spec, cfg, seed)
    result = fit(model, criterion, train_set, test_set, settings, out_dir, spec.task_classes, fingerprint,
                 stop_after_epoch=stop_after_epoch)
    if not result.completed:
        return None

    trained = result_model(model)
    save_atomic({"format": MODEL_FORMAT, "variant": spec.name, "tasks": list(spec.tasks),
                 "n_features": data.n_features, "feature_columns": list(data.feature_columns),
                 "config": cfg.to_dict(), "seed": seed, "intensity": [float(mean), float(std)],
                 "state_dict": trained}, out_dir / "model.pt")
    ev = result.final_eval
    pred = predictions_frame(ev.subject_ids, ev.y_true, ev.probs, model=spec.name)
    pred.to_csv(out_dir / "predictions.csv", index=False)
    metrics = {
        "variant": spec.name, "label": spec.label, "architecture": spec.architecture, "tasks": list(spec.tasks),
        "shift3d": spec.shift3d, "features": spec.features, "loss": loss_type(spec, cfg),
        "transfer_from": list(spec.transfer_from) if spec.transfer_from else None,
        "init_from": str(init_from) if init_from else None, "epochs": result.epochs_done, "seed": seed,
        "device": result.device, "seconds": round(result.seconds, 1), "n_train": len(data.train),
        "n_test": len(data.test), "n_features": data.n_features,
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "test_loss": {"total": ev.total_loss, **ev.losses},
        "metrics": metrics_from_frame(pred),
        "config": cfg.to_dict(),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, allow_nan=True), encoding="utf-8")
    log.info("%s: %s", spec.name, {t: {k: round(v, 3) for k, v in m.items() if k in {"auc", "accuracy"}}
                                   for t, m in metrics["metrics"].items()})
    return metrics


def result_model(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _cached_intensity(out_dir: Path, fingerprint: str, data, loader: VolumeLoader, workers: int) -> tuple[float, float]:
    path = out_dir / "intensity.json"
    if path.exists():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("fingerprint") == fingerprint:
            return float(cached["mean"]), float(cached["std"])
    log.info("computing intensity statistics of %d training volumes", len(data.train))
    mean, std = intensity_stats(data.train, loader, workers)
    path.write_text(json.dumps({"fingerprint": fingerprint, "mean": mean, "std": std}), encoding="utf-8")
    return mean, std


def _variant_help() -> str:
    return "\n".join(f"  {name:28s} {spec.description}" for name, spec in VARIANTS.items())


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="covidmtl deep-train", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="variants:\n" + _variant_help())
    ap.add_argument("--variant", choices=sorted(VARIANTS), metavar="NAME",
                    help="which model/experiment to train (see the list below)")
    vol = ap.add_mutually_exclusive_group()
    vol.add_argument("--volumes-dir", type=Path, help="folder with <subject_id>/lung_volume.nii.gz below it")
    vol.add_argument("--volume-files", type=Path, nargs="+", help="lung volume files (subject id = folder name)")
    vol.add_argument("--volumes", type=Path, help="text file: one volume path per line, or subject_id,path lines")
    ap.add_argument("--manifest", type=Path, help="manifest CSV (subject_id, ct, nat, severity, ...)")
    ap.add_argument("--split", type=Path, help="split CSV (subject_id, split = train/test)")
    ap.add_argument("--features", type=Path, default=None, help="radiomics feature table (Parquet/CSV); "
                                                                "needed by *_features variants")
    ap.add_argument("--params", default="{}", help="JSON of the `deep` config section")
    ap.add_argument("--seed", type=int, default=None, help="overrides deep.seed (e.g. the workflow's global seed)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    ap.add_argument("--init-from", type=Path, default=None, help="model.pt of the two-task model (transfer variants)")
    ap.add_argument("--out-dir", type=Path, help="output folder")
    ap.add_argument("--stop-after-epoch", type=int, default=None,
                    help="stop after this epoch, keeping checkpoint.pt (rerun to resume); for time-limited jobs")
    ap.add_argument("--list-variants", action="store_true", help="print the variants and exit")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.list_variants:
        print(_variant_help())
        return 0
    missing = [n for n in ("variant", "manifest", "split", "out_dir") if getattr(args, n) is None]
    if missing or not (args.volumes_dir or args.volume_files or args.volumes):
        ap.error("needs --variant, one of --volumes-dir/--volume-files/--volumes, --manifest, --split, --out-dir"
                 + (f" (missing: {', '.join('--' + m.replace('_', '-') for m in missing)})" if missing else ""))
    try:
        cfg = DeepConfig.from_json(args.params)
    except (ValueError, TypeError) as err:
        print(f"covidmtl deep-train: bad --params: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    spec = get_variant(args.variant)
    volumes = discover_volumes(args.volumes_dir, args.volume_files, args.volumes)
    run(spec, cfg, volumes, args.manifest, args.split, args.features, args.out_dir, args.init_from, args.seed,
        args.stop_after_epoch)
    return 0


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
