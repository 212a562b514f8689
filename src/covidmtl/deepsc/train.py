"""Staged training of DeepSC-COVID on top of the shared loop :mod:`covidmtl.deep.train`.

Reused from the shared loop: device selection, mixed precision (bfloat16/float16 with a
gradient scaler), channels_last_3d, the epoch-seeded sampler, the checkpoint contents
(model, optimizer, scheduler, loss, scaler, RNG states, history) and atomic writes,
``history.csv``. Different here, because DeepSC-COVID needs it:

- Adam with a learning rate decayed linearly over each stage (section V-A) instead of SGD
  with a cosine schedule (:class:`StageTrainer` replaces the optimizer and scheduler);
- several stages (pre-train segmentation, pre-train classification, fine-tune all), each
  with its own optimizer; ``checkpoint.pt`` records the stage and the epoch within it, and
  a rerun resumes there (a finished stage is never repeated);
- outputs that are not class logits (lesion maps, evidence masks) and losses that need the
  model (task-aware loss), so the epoch loops are DeepSC's own (the backward pass and
  optimiser step, incl. float16 step skipping, are the shared ``Trainer.optimizer_step``).

The shared :func:`covidmtl.deep.train.fit` builds its SGD ``Trainer`` internally and runs a
single stage, which is why it is not called directly (see the report for the small
generalisation that would allow it).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from covidmtl.deep.evaluate import quick_metrics
from covidmtl.deep.train import (CHECKPOINT_FORMAT, FitSettings, Trainer, _to_device, load_checkpoint, resolve_amp,
                                 save_atomic, set_rng_state, warn_skipped, write_history)
from covidmtl.deepsc.config import DeepSCConfig
from covidmtl.deepsc.variants import Phase

log = logging.getLogger(__name__)


def amp_settings(cfg: DeepSCConfig, device: torch.device) -> tuple[bool, torch.dtype]:
    """(autocast on?, its dtype) for inference on ``device``, chosen as the training loop does."""
    return resolve_amp(cfg.train.amp, cfg.train.amp_dtype, device)


def fit_settings(cfg: DeepSCConfig, phase: Phase, seed: int) -> FitSettings:
    t = cfg.train
    return FitSettings(epochs=max(phase.epochs, 1), batch_size=t.batch_size, lr_max=phase.lr, lr_min=0.0,
                       weight_decay=t.weight_decay, num_workers=t.num_workers, amp=t.amp, amp_dtype=t.amp_dtype,
                       channels_last=t.channels_last, eval_every=t.eval_every, progress=t.progress, device=t.device,
                       seed=seed)


def hard_dice(logits: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """(2 |P and T|, |P| + |T|) of a batch, for a running Dice."""
    pred = logits.detach() > 0
    truth = target > 0.5
    return float(2 * (pred & truth).sum()), float(pred.sum() + truth.sum())


class StageTrainer(Trainer):
    """The shared Trainer with Adam and a linear learning-rate decay over one stage."""

    def __init__(self, model: nn.Module, criterion: nn.Module, settings: FitSettings, phase: Phase,
                 lr_end_factor: float = 0.0) -> None:
        super().__init__(model, criterion, settings, tasks={})
        self.phase = phase
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=phase.lr, weight_decay=settings.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LinearLR(self.optimizer, start_factor=1.0,
                                                           end_factor=float(lr_end_factor),
                                                           total_iters=max(phase.epochs, 1))

    def _step(self, batch: dict, train: bool) -> tuple[torch.Tensor, dict, dict, dict]:
        inputs = _to_device(batch["inputs"], self.device, self.channels_last)
        targets = _to_device(batch["targets"], self.device, False)
        with self.autocast():
            out = self.model(**inputs, mode=self.phase.mode)
            total, parts = self.criterion(out, targets, self.phase.mode, self.model)
        return total, parts, out, targets

    def run_epoch(self, dataset: Dataset, epoch: int, total_epochs: int) -> dict[str, float]:
        """One training epoch (``epoch`` = global epoch, seeds the order and the patches)."""
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        self.model.train()
        self.criterion.train()
        sums: dict[str, float] = {}
        dice_num = dice_den = 0.0
        correct = n = 0
        saw_cls = False
        skipped = 0
        bar = tqdm(self.loader(dataset, train=True, epoch=epoch), leave=False, mininterval=1.0, dynamic_ncols=True,
                   desc=f"epoch {epoch + 1}/{total_epochs} {self.phase.name}", disable=not self.settings.progress)
        for batch in bar:
            total, parts, out, targets = self._step(batch, train=True)
            if not self.optimizer_step(total, f"in epoch {epoch + 1} ({self.phase.name})"):
                skipped += 1
                continue
            b = len(batch["subject_id"])
            n += b
            sums["total"] = sums.get("total", 0.0) + float(total.detach()) * b
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * b
            if "seg_logits" in out and targets["has_mask"].any():
                keep = targets["has_mask"]
                a, d = hard_dice(out["seg_logits"][keep], targets["lesion"][keep])
                dice_num, dice_den = dice_num + a, dice_den + d
            if "cls_logits" in out:
                saw_cls = True
                correct += int((out["cls_logits"].detach().argmax(1) == targets["label"]).sum())
            bar.set_postfix(loss=f"{sums['total'] / n:.4f}")
        bar.close()
        warn_skipped(skipped, f"epoch {epoch + 1} ({self.phase.name})")
        row = {f"train_loss_{k}": v / max(n, 1) for k, v in sums.items()}
        if dice_den:
            row["train_dice_patch"] = dice_num / dice_den
        if saw_cls:
            row["train_acc"] = correct / max(n, 1)
        return row

    @torch.no_grad()
    def evaluate_patches(self, dataset: Dataset) -> dict[str, float]:
        """Per-epoch test curves: losses, patch Dice on fixed test patches, accuracy and AUC."""
        self.model.eval()
        self.criterion.eval()
        sums: dict[str, float] = {}
        dice_num = dice_den = 0.0
        y, probs = [], []
        n = 0
        for batch in self.loader(dataset, train=False):
            total, parts, out, targets = self._step(batch, train=False)
            b = len(batch["subject_id"])
            n += b
            sums["total"] = sums.get("total", 0.0) + float(total) * b
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v) * b
            if "seg_logits" in out:
                keep = targets["has_mask"]
                if keep.any():
                    a, d = hard_dice(out["seg_logits"][keep], targets["lesion"][keep])
                    dice_num, dice_den = dice_num + a, dice_den + d
            if "cls_logits" in out:
                probs.append(torch.softmax(out["cls_logits"].float(), 1).cpu().numpy())
                y.append(targets["label"].cpu().numpy())
        row = {f"test_loss_{k}": v / max(n, 1) for k, v in sums.items()}
        if dice_den:
            row["test_dice_patch"] = dice_num / dice_den
        if probs:
            m = quick_metrics(np.concatenate(y), np.concatenate(probs))
            row["test_acc"], row["test_auc"] = m["acc"], m["auc"]
        return row


@dataclass
class StagedResult:
    completed: bool
    epochs_done: int
    history: pd.DataFrame
    device: str
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def fit_stages(model: nn.Module, criterion: nn.Module, stages: list[Phase], train_sets: dict[str, Dataset],
               eval_set: Dataset | None, cfg: DeepSCConfig, seed: int, out_dir: str | Path, fingerprint: str,
               stop_after_epoch: int | None = None) -> StagedResult:
    """Train the stages in order, resuming from ``out_dir/checkpoint.pt`` when its fingerprint
    matches. ``train_sets`` maps a stage mode ('seg', 'cls', 'joint') to its dataset."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    started = time.perf_counter()
    total_epochs = sum(s.epochs for s in stages)
    offsets = np.cumsum([0] + [s.epochs for s in stages]).tolist()
    history: list[dict[str, Any]] = []
    ckpt = None
    start_stage, start_epoch = 0, 0
    if ckpt_path.exists():
        loaded = load_checkpoint(ckpt_path)
        if loaded.get("format") == CHECKPOINT_FORMAT and loaded.get("fingerprint") == fingerprint:
            ckpt = loaded
            start_stage = int(loaded["extra"]["stage_index"])
            start_epoch = int(loaded["epoch"])
            history = list(loaded["history"])
            log.info("resuming from %s: stage %s after epoch %d of %d", ckpt_path, loaded["extra"]["stage"],
                     start_epoch, stages[start_stage].epochs)
        else:
            log.warning("%s belongs to another configuration (fingerprint %s != %s); training from scratch",
                        ckpt_path, loaded.get("fingerprint"), fingerprint)
    device = "cpu"
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    for si, stage in enumerate(stages):
        if si < start_stage:
            continue
        settings = fit_settings(cfg, stage, seed)
        trainer = StageTrainer(model, criterion, settings, stage, cfg.train.lr_end_factor)
        device = str(trainer.device)
        first = 0
        if ckpt is not None:
            if start_epoch >= stage.epochs:  # stage finished before the interruption: take its weights
                model.load_state_dict(ckpt["model"])
                set_rng_state(ckpt["rng"])
                ckpt = None
                continue
            trainer.load_state(ckpt)
            first, ckpt = start_epoch, None
        log.info("stage %s (%s): %d epochs, Adam lr %.2g decaying linearly, %s%s, %d parameters", stage.name,
                 stage.mode, stage.epochs, stage.lr, trainer.device,
                 f" (AMP {trainer.amp_dtype})" if trainer.amp else "", n_params)
        train_set = train_sets[stage.mode]
        for e in range(first, stage.epochs):
            g = offsets[si] + e
            t0 = time.perf_counter()
            row: dict[str, Any] = {"epoch": g + 1, "stage": stage.name, "stage_epoch": e + 1,
                                   "lr": trainer.optimizer.param_groups[0]["lr"]}
            row.update(trainer.run_epoch(train_set, g, total_epochs))
            trainer.scheduler.step()
            last_of_all = g + 1 == total_epochs
            if eval_set is not None and (last_of_all or e + 1 == stage.epochs
                                         or (g + 1) % max(cfg.train.eval_every, 1) == 0):
                row.update(trainer.evaluate_patches(eval_set))
            alpha = getattr(getattr(model, "cross_stitch", None), "alpha", None)
            if alpha is not None:
                for (i, j), name in zip([(0, 0), (0, 1), (1, 0), (1, 1)], ["ss", "sc", "cs", "cc"]):
                    row[f"alpha_{name}"] = float(alpha[i, j].detach())
            eta = getattr(getattr(model, "lesion", None), "eta", None)
            if eta is not None:
                for i, v in enumerate(eta.detach().cpu().tolist()):
                    row[f"eta_{i + 1}"] = v
            row["seconds"] = time.perf_counter() - t0
            history.append({k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in row.items()})
            save_atomic(trainer.state(e + 1, history, fingerprint, {"stage_index": si, "stage": stage.name}), ckpt_path)
            write_history(history, out_dir / "history.csv")
            log.info("epoch %d/%d (%s): %s", g + 1, total_epochs, stage.name,
                     ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float) and not math.isnan(v)
                               and k.startswith(("train_loss", "test_loss", "test_dice", "test_acc", "test_auc"))))
            if stop_after_epoch is not None and g + 1 >= stop_after_epoch and not last_of_all:
                log.info("stopping after epoch %d as asked; rerun to resume", g + 1)
                return StagedResult(False, g + 1, pd.DataFrame(history), device, time.perf_counter() - started)
    if ckpt is not None:  # every stage had finished before the rerun
        model.load_state_dict(ckpt["model"])
    write_history(history, out_dir / "history.csv")
    return StagedResult(True, total_epochs, pd.DataFrame(history), device, time.perf_counter() - started)
