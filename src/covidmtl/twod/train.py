"""Training loop of the 2D models: a thin adapter of the shared loop (:mod:`covidmtl.deep.train`).

Reused from the shared loop: device selection and mixed precision (:class:`Trainer`: bfloat16
or float16 with a gradient scaler on CUDA), the seeded per-epoch sampling
(:meth:`Trainer.loader`), the checkpoint layout with model/optimizer/scheduler/loss/scaler
and RNG states (:meth:`Trainer.state` / :meth:`Trainer.load_state`, :func:`save_atomic`,
:func:`load_checkpoint`), ``history.csv`` (:func:`write_history`) and the tqdm progress bars.

Added here, because the shared loop is built for COVID-MTL (SGD, a cosine schedule, test
evaluation every epoch, class targets only):

- Adam (both 2D papers), with a constant learning rate (Amyar) or cosine annealing (MGA);
- outputs other than logits (segmentation, reconstruction, attention maps) and their loss
  components in the per-epoch log;
- a validation split and early stopping on the validation loss (patience from the config;
  both papers): the best weights are kept in the checkpoint (``extra.best_state``) together
  with the early-stopping state, so a resumed run stops at the same epoch, and are restored
  at the end;
- the mean wall time of a training step (forward + backward + update) per mini-batch
  (MGA Table 4 column).

A rerun with the same fingerprint resumes after the last finished epoch (checkpoint.pt).
"""

from __future__ import annotations

import dataclasses
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
from covidmtl.deep.train import (CHECKPOINT_FORMAT, FitSettings, Trainer, load_checkpoint, save_atomic,
                                 warn_skipped, write_history)
from covidmtl.twod.metrics import confusion_counts, segmentation_summary

log = logging.getLogger(__name__)


@dataclass
class TwoDFitSettings(FitSettings):
    scheduler: str = "constant"
    """'constant' (Amyar) or 'cosine' (MGA): cosine annealing from lr_max to lr_min over ``epochs``."""
    patience: int = 10
    """Early stopping: stop after this many epochs without improvement of the monitored loss."""
    min_delta: float = 0.0
    """Improvement must exceed this."""
    seg_threshold: float = 0.5
    """Probability threshold of predicted lesion masks."""


@dataclass
class EvalOutput:
    slice_ids: list[str]
    losses: dict[str, float]
    y_true: np.ndarray | None = None
    probs: np.ndarray | None = None
    seg_counts: np.ndarray | None = None     # (N, 3): TP, FP, FN per slice
    has_mask: np.ndarray | None = None
    examples: dict[str, Any] = field(default_factory=dict)


@dataclass
class TwoDFitResult:
    completed: bool
    epochs_done: int
    best_epoch: int
    stopped_early: bool
    history: pd.DataFrame
    device: str
    seconds: float
    sec_per_batch: float


def _constant(_: int) -> float:
    return 1.0


class TwoDTrainer(Trainer):
    """The shared Trainer with Adam, a 2D memory layout and multi-output batches."""

    def __init__(self, model: nn.Module, criterion: nn.Module, settings: TwoDFitSettings) -> None:
        # the shared Trainer would use the 3D channels_last layout; 2D layout is applied below
        super().__init__(model, criterion, dataclasses.replace(settings, channels_last=False), tasks={})
        self.settings = settings
        self.channels_last = bool(settings.channels_last and self.device.type == "cuda")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad],
                   "weight_decay": settings.weight_decay}]
        loss_params = [p for p in self.criterion.parameters() if p.requires_grad]
        if loss_params:
            groups.append({"params": loss_params, "weight_decay": 0.0})
        self.optimizer = torch.optim.Adam(groups, lr=settings.lr_max)
        if settings.scheduler == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=settings.epochs,
                                                                        eta_min=settings.lr_min)
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _constant)

    def move(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = batch["inputs"]["image"].to(self.device, non_blocking=True)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        targets = {k: v.to(self.device, non_blocking=True) for k, v in batch["targets"].items()}
        targets["image"] = image  # reconstruction target
        return image, targets

    def step_timer(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def train_epoch(self, dataset: Dataset, epoch: int) -> dict[str, float]:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        self.model.train()
        self.criterion.train()
        sums: dict[str, float] = {}
        n = correct = skipped = 0
        step_times = []
        bar = tqdm(self.loader(dataset, train=True, epoch=epoch), desc=f"epoch {epoch + 1}/{self.settings.epochs} train",
                   leave=False, disable=not self.settings.progress, mininterval=1.0, dynamic_ncols=True)
        for batch in bar:
            image, targets = self.move(batch)
            t0 = self.step_timer()
            with self.autocast():
                out = self.model(image=image)
                total, parts = self.criterion(out, targets)
            if not self.optimizer_step(total, f"in epoch {epoch + 1}"):
                skipped += 1
                continue
            step_times.append(self.step_timer() - t0)
            b = image.shape[0]
            n += b
            for k, v in {"total": total, **parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * b
            if "label" in out:
                correct += int((out["label"].detach().argmax(1) == targets["label"]).sum())
            bar.set_postfix(loss=f"{sums['total'] / n:.4f}")
        bar.close()
        warn_skipped(skipped, f"epoch {epoch + 1}")
        row = {f"train_loss_{k}": v / max(n, 1) for k, v in sums.items()}
        if "cls" in sums:
            row["train_acc"] = correct / max(n, 1)
        # the first step includes one-off allocations; leave it out when there are others
        times = step_times[1:] if len(step_times) > 1 else step_times
        row["sec_per_batch"] = float(np.mean(times)) if times else float("nan")
        return row

    @torch.no_grad()
    def evaluate(self, dataset: Dataset, desc: str = "validation", keep_examples: int = 0) -> EvalOutput:
        self.model.eval()
        self.criterion.eval()
        ids: list[str] = []
        sums: dict[str, float] = {}
        n = 0
        ys, probs, counts, has_mask = [], [], [], []
        examples: dict[str, list] = {"slice_id": [], "image": [], "mask": [], "prob": []}
        bar = tqdm(self.loader(dataset, train=False), desc=desc, leave=False, disable=not self.settings.progress,
                   mininterval=1.0, dynamic_ncols=True)
        for batch in bar:
            image, targets = self.move(batch)
            with self.autocast():
                out = self.model(image=image)
                total, parts = self.criterion(out, targets)
            b = image.shape[0]
            n += b
            for k, v in {"total": total, **parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v) * b
            ids.extend(batch["subject_id"])
            if "label" in out:
                probs.append(torch.softmax(out["label"].float(), dim=1).cpu().numpy())
                ys.append(targets["label"].cpu().numpy())
            if "seg" in out:
                prob = torch.sigmoid(out["seg"].float()).cpu().numpy()[:, 0]
                true = targets["mask"].cpu().numpy()[:, 0] > 0.5
                pred = prob >= self.settings.seg_threshold
                counts.extend(confusion_counts(p, t) for p, t in zip(pred, true))
                has_mask.append(targets["has_mask"].cpu().numpy() > 0.5)
                for i in range(b):
                    if len(examples["slice_id"]) < keep_examples and true[i].any():
                        examples["slice_id"].append(batch["subject_id"][i])
                        examples["image"].append(image[i, 0].float().cpu().numpy())
                        examples["mask"].append(true[i])
                        examples["prob"].append(prob[i])
        bar.close()
        result = EvalOutput(ids, {k: v / max(n, 1) for k, v in sums.items()})
        if probs:
            result.probs, result.y_true = np.concatenate(probs), np.concatenate(ys)
        if counts:
            result.seg_counts = np.asarray(counts, dtype=np.int64).reshape(-1, 3)
            result.has_mask = np.concatenate(has_mask)
        if examples["slice_id"]:
            result.examples = {"slice_id": np.asarray(examples["slice_id"]),
                               **{k: np.stack(examples[k]) for k in ("image", "mask", "prob")}}
        return result


def eval_row(ev: EvalOutput, prefix: str) -> dict[str, float]:
    row = {f"{prefix}_loss_{k}": v for k, v in ev.losses.items()}
    if ev.probs is not None:
        m = quick_metrics(ev.y_true, ev.probs)
        row[f"{prefix}_acc"], row[f"{prefix}_auc"] = m["acc"], m["auc"]
    if ev.seg_counts is not None:
        valid = ev.has_mask
        s = segmentation_summary(*ev.seg_counts[valid].T) if valid.any() else {"dice": float("nan")}
        row[f"{prefix}_dice"] = s["dice"]
    return row


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def fit_2d(model: nn.Module, criterion: nn.Module, train_set: Dataset, val_set: Dataset | None,
           settings: TwoDFitSettings, out_dir: str | Path, fingerprint: str = "",
           stop_after_epoch: int | None = None) -> tuple[TwoDFitResult, TwoDTrainer]:
    """Train with early stopping on the validation loss (training loss without a validation
    set); the model ends with the best weights. Resumes from ``out_dir/checkpoint.pt``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    started = time.perf_counter()
    trainer = TwoDTrainer(model, criterion, settings)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    es = {"best_value": math.inf, "best_epoch": 0, "bad_epochs": 0, "stopped": False}
    best_state: dict[str, torch.Tensor] | None = None
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        if ckpt.get("format") == CHECKPOINT_FORMAT and ckpt.get("fingerprint") == fingerprint:
            trainer.load_state(ckpt)
            history = list(ckpt["history"])
            start_epoch = int(ckpt["epoch"])
            es = dict(ckpt["extra"]["early_stopping"])
            best_state = ckpt["extra"].get("best_state")
            log.info("resuming from %s after epoch %d (best epoch %d)", ckpt_path, start_epoch, es["best_epoch"])
        else:
            log.warning("%s belongs to another configuration; training from scratch", ckpt_path)
    if val_set is None:
        log.warning("no validation split: early stopping monitors the training loss")
    log.info("training on %s%s: %d train / %d validation slices, %d parameters, batch %d, lr %.2g (%s), "
             "patience %d", trainer.device, f" (AMP {trainer.amp_dtype})" if trainer.amp else "", len(train_set),
             len(val_set) if val_set is not None else 0,
             sum(p.numel() for p in model.parameters() if p.requires_grad), settings.batch_size, settings.lr_max,
             settings.scheduler, settings.patience)

    for epoch in range(start_epoch, settings.epochs):
        if es["stopped"]:
            break
        t0 = time.perf_counter()
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": trainer.optimizer.param_groups[0]["lr"]}
        row.update(trainer.train_epoch(train_set, epoch))
        trainer.scheduler.step()
        if val_set is not None:
            row.update(eval_row(trainer.evaluate(val_set), "val"))
            value = row["val_loss_total"]
        else:
            value = row["train_loss_total"]
        if getattr(criterion, "log_vars", None) is not None:
            names = getattr(criterion, "components", None) or range(criterion.log_vars.numel())
            for name, s in zip(names, criterion.log_vars.detach().cpu().tolist()):
                row[f"log_var_{name}"] = s
        if value < es["best_value"] - settings.min_delta:
            es.update(best_value=float(value), best_epoch=epoch + 1, bad_epochs=0)
            best_state = _cpu_state(trainer.model)
        else:
            es["bad_epochs"] += 1
            es["stopped"] = es["bad_epochs"] >= settings.patience
        row["best_epoch"] = es["best_epoch"]
        row["seconds"] = time.perf_counter() - t0
        history.append({k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in row.items()})
        save_atomic(trainer.state(epoch + 1, history, fingerprint, {"early_stopping": es, "best_state": best_state}),
                    ckpt_path)
        write_history(history, out_dir / "history.csv")
        log.info("epoch %d/%d: %s", epoch + 1, settings.epochs,
                 ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float) and not math.isnan(v)
                           and k.startswith(("train_loss_total", "val_loss_total", "val_acc", "val_auc", "val_dice"))))
        if es["stopped"]:
            log.info("early stopping after epoch %d: no improvement for %d epochs (best epoch %d)", epoch + 1,
                     settings.patience, es["best_epoch"])
            break
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < settings.epochs:
            log.info("stopping after epoch %d as asked; rerun to resume", epoch + 1)
            return TwoDFitResult(False, epoch + 1, es["best_epoch"], False, pd.DataFrame(history),
                                 str(trainer.device), time.perf_counter() - started, math.nan), trainer

    if best_state is not None:
        trainer.model.load_state_dict(best_state)
    hist = pd.DataFrame(history)
    spb = float(hist["sec_per_batch"].median()) if "sec_per_batch" in hist and len(hist) else math.nan
    write_history(history, out_dir / "history.csv")
    return TwoDFitResult(True, len(history), es["best_epoch"], bool(es["stopped"]), hist, str(trainer.device),
                         time.perf_counter() - started, spb), trainer
