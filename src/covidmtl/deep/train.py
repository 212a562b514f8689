"""Generic training loop for the deep models (3D here; reusable by the 2D models).

Contract: a dataset item is ``{"inputs": {...}, "targets": {task: class}, "subject_id": str}``;
the model is called as ``model(**inputs)`` and returns ``{task: logits}``; the criterion
is called as ``criterion(logits, targets)`` and returns ``(total, {task: loss})``
(:class:`covidmtl.deep.losses.MultiTaskLoss`).

What it does (COVID-MTL training defaults in :class:`FitSettings`):

- SGD with Nesterov momentum and weight decay; learning rate on a cosine schedule from
  ``lr_max`` to ``lr_min`` over the epochs (``CosineAnnealingLR``, stepped per epoch);
  learnable loss parameters (uncertainty weighting) train without weight decay;
- CUDA with mixed precision (bfloat16, or float16 with a gradient scaler) and
  channels_last_3d when available, CPU otherwise;
- seeds fixed; the training order of epoch e is drawn from a generator seeded with
  (seed, e); datasets with ``set_epoch`` get the epoch for their augmentation seeds;
- a checkpoint after every epoch (``checkpoint.pt``: model, optimizer, scheduler, loss
  module, gradient scaler, RNG states of torch/CUDA/numpy/python, history), written
  atomically and loadable with ``torch.load(weights_only=True)``; a rerun with the same
  fingerprint resumes after the last finished epoch and ends with the same weights as an
  uninterrupted run (CPU);
- per-epoch losses (total and per task) and test metrics to ``history.csv``;
- a tqdm progress bar per epoch.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm import tqdm

from covidmtl.deep.evaluate import quick_metrics

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


@dataclass
class FitSettings:
    epochs: int = 80
    batch_size: int = 10
    lr_max: float = 0.005
    lr_min: float = 5e-5
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-5
    num_workers: int = 0
    grad_clip_norm: float | None = None
    amp: bool = True
    amp_dtype: str = "bfloat16"
    channels_last: bool = True
    eval_every: int = 1
    progress: bool = True
    device: str = "auto"
    seed: int = 0


@dataclass
class EvalResult:
    subject_ids: list[str]
    y_true: dict[str, np.ndarray]
    probs: dict[str, np.ndarray]
    losses: dict[str, float]
    total_loss: float


@dataclass
class FitResult:
    completed: bool
    epochs_done: int
    history: pd.DataFrame
    final_eval: EvalResult | None
    device: str
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("deep.train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(epoch), 7919]).generate_state(1)[0])


# ------------------------------------------------------------------ RNG state as plain types


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain types (so ``weights_only=True`` loads them)."""
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_cached)},
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": None if py_gauss is None else float(py_gauss)},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------ loop


def warn_skipped(skipped: int, where: str) -> None:
    if skipped:
        log.warning("%s: %d step(s) skipped for a non-finite float16 loss (left out of the epoch means)",
                    where, skipped)


def _to_device(tree: Any, device: torch.device, channels_last: bool) -> Any:
    if isinstance(tree, dict):
        return {k: _to_device(v, device, channels_last) for k, v in tree.items()}
    if isinstance(tree, torch.Tensor):
        t = tree.to(device, non_blocking=True)
        if channels_last and t.dim() == 5:
            t = t.contiguous(memory_format=torch.channels_last_3d)
        return t
    return tree


# Under float16 a forward overflow gives a non-finite loss; the gradient scaler skips such a
# step (and lowers its scale) as it skips one with overflowed gradients. Only this many
# skipped steps in a row mean the training has diverged.
MAX_CONSECUTIVE_SKIPPED_STEPS = 8


def resolve_amp(enabled: bool, dtype_name: str, device: torch.device) -> tuple[bool, torch.dtype]:
    """(autocast on?, its dtype): mixed precision only on CUDA; bfloat16 only where the GPU
    has it natively (pre-Ampere cards emulate it: slow, and some 3D convolutions lack
    kernels), float16 (with a gradient scaler) otherwise."""
    amp = bool(enabled and device.type == "cuda")
    dtype = torch.bfloat16 if dtype_name == "bfloat16" else torch.float16
    if amp and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported(including_emulation=False):
        dtype = torch.float16
    return amp, dtype


def _batch_size(batch: dict) -> int:
    return len(batch["subject_id"])


class Trainer:
    def __init__(self, model: nn.Module, criterion: nn.Module, settings: FitSettings, tasks: dict[str, int]) -> None:
        self.settings = settings
        self.tasks = dict(tasks)
        self.device = resolve_device(settings.device)
        cuda = self.device.type == "cuda"
        self.amp, self.amp_dtype = resolve_amp(settings.amp, settings.amp_dtype, self.device)
        self.skipped_in_a_row = 0
        self.channels_last = bool(settings.channels_last and cuda)
        if cuda:
            torch.backends.cudnn.benchmark = True
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        self.criterion = criterion.to(self.device)
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad],
                   "weight_decay": settings.weight_decay}]
        loss_params = [p for p in self.criterion.parameters() if p.requires_grad]
        if loss_params:
            groups.append({"params": loss_params, "weight_decay": 0.0})
        self.optimizer = torch.optim.SGD(groups, lr=settings.lr_max, momentum=settings.momentum,
                                         nesterov=settings.nesterov)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=settings.epochs,
                                                                    eta_min=settings.lr_min)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp and self.amp_dtype == torch.float16 else None

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.amp)

    def loader(self, dataset: Dataset, train: bool, epoch: int = 0) -> DataLoader:
        s = self.settings
        sampler = None
        drop_last = False
        if train:
            sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(epoch_seed(s.seed, epoch)))
            # A last batch of one sample breaks batch norm on 1x1x1 maps; drop it.
            drop_last = len(dataset) % s.batch_size == 1 and len(dataset) > 1
        # Not persistent: worker processes hold copies of the dataset, and the per-epoch
        # augmentation seed (dataset.set_epoch) must reach them; restarting them costs seconds
        # per epoch against minutes of training at the paper's sizes.
        return DataLoader(dataset, batch_size=s.batch_size, sampler=sampler, shuffle=False, drop_last=drop_last,
                          num_workers=s.num_workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=False)

    def train_epoch(self, dataset: Dataset, epoch: int) -> dict[str, float]:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        self.model.train()
        self.criterion.train()
        sums = {"total": 0.0, **{t: 0.0 for t in self.tasks}}
        correct = {t: 0 for t in self.tasks}
        n = skipped = 0
        loader = self.loader(dataset, train=True, epoch=epoch)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.settings.epochs} train", leave=False,
                   disable=not self.settings.progress, mininterval=1.0, dynamic_ncols=True)
        for batch in bar:
            inputs = _to_device(batch["inputs"], self.device, self.channels_last)
            targets = _to_device(batch["targets"], self.device, False)
            with self.autocast():
                logits = self.model(**inputs)
                total, per_task = self.criterion(logits, targets)
            if not self.optimizer_step(total, f"in epoch {epoch + 1}"):
                skipped += 1
                continue
            b = _batch_size(batch)
            n += b
            sums["total"] += float(total.detach()) * b
            for t in self.tasks:
                sums[t] += float(per_task[t].detach()) * b
                correct[t] += int((logits[t].detach().argmax(1) == targets[t]).sum())
            bar.set_postfix(loss=f"{sums['total'] / n:.4f}")
        bar.close()
        warn_skipped(skipped, f"epoch {epoch + 1}")
        out = {"train_loss_total": sums["total"] / max(n, 1)}
        for t in self.tasks:
            out[f"train_loss_{t}"] = sums[t] / max(n, 1)
            out[f"train_acc_{t}"] = correct[t] / max(n, 1)
        return out

    def optimizer_step(self, total: torch.Tensor, where: str) -> bool:
        """Backward pass and optimiser step for one batch's loss; False when the step was skipped
        (float16 only: the gradient scaler skips a step whose loss or gradients overflowed).
        Without a scaler a non-finite loss is an error at once, as are
        MAX_CONSECUTIVE_SKIPPED_STEPS skipped steps in a row."""
        finite = bool(torch.isfinite(total))
        if not finite and self.scaler is None:
            raise FloatingPointError(f"training loss is {total.item()} {where}; lower the learning rate or check "
                                     f"the inputs")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            if self.settings.grad_clip_norm:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
                self._clip_gradients()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            total.backward()
            if self.settings.grad_clip_norm:
                self._clip_gradients()
            self.optimizer.step()
        if finite:
            self.skipped_in_a_row = 0
            return True
        self.skipped_in_a_row += 1
        if self.skipped_in_a_row >= MAX_CONSECUTIVE_SKIPPED_STEPS:
            raise FloatingPointError(f"training loss is {total.item()} in {self.skipped_in_a_row} batches in a row "
                                     f"{where} under float16 mixed precision; set amp_dtype to bfloat16 (or amp to "
                                     f"false), lower the learning rate or check the inputs")
        return False

    def _clip_gradients(self) -> None:
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_norm=float(self.settings.grad_clip_norm))

    @torch.no_grad()
    def evaluate(self, dataset: Dataset, desc: str = "test") -> EvalResult:
        self.model.eval()
        self.criterion.eval()
        ids: list[str] = []
        y = {t: [] for t in self.tasks}
        probs = {t: [] for t in self.tasks}
        sums = {"total": 0.0, **{t: 0.0 for t in self.tasks}}
        n = 0
        bar = tqdm(self.loader(dataset, train=False), desc=desc, leave=False, disable=not self.settings.progress,
                   mininterval=1.0, dynamic_ncols=True)
        for batch in bar:
            inputs = _to_device(batch["inputs"], self.device, self.channels_last)
            targets = _to_device(batch["targets"], self.device, False)
            with self.autocast():
                logits = self.model(**inputs)
                total, per_task = self.criterion(logits, targets)
            b = _batch_size(batch)
            n += b
            sums["total"] += float(total) * b
            ids.extend(batch["subject_id"])
            for t in self.tasks:
                sums[t] += float(per_task[t]) * b
                probs[t].append(torch.softmax(logits[t].float(), dim=1).cpu().numpy())
                y[t].append(targets[t].cpu().numpy())
        bar.close()
        return EvalResult(
            subject_ids=ids,
            y_true={t: np.concatenate(v) for t, v in y.items()},
            probs={t: np.concatenate(v) for t, v in probs.items()},
            losses={t: sums[t] / max(n, 1) for t in self.tasks},
            total_loss=sums["total"] / max(n, 1),
        )

    def state(self, epoch: int, history: list[dict], fingerprint: str, extra: dict) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": fingerprint,
            "epoch": int(epoch),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "criterion": self.criterion.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(),
            "history": history,
            "extra": extra,
        }

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.criterion.load_state_dict(ckpt["criterion"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])


def _eval_row(result: EvalResult, tasks: dict[str, int]) -> dict[str, float]:
    row = {"test_loss_total": result.total_loss,
           "test_loss_mean": float(np.mean([result.losses[t] for t in tasks]))}
    for t in tasks:
        row[f"test_loss_{t}"] = result.losses[t]
        m = quick_metrics(result.y_true[t], result.probs[t])
        row[f"test_acc_{t}"] = m["acc"]
        row[f"test_auc_{t}"] = m["auc"]
    return row


def fit(model: nn.Module, criterion: nn.Module, train_set: Dataset, test_set: Dataset | None,
        settings: FitSettings, out_dir: str | Path, tasks: dict[str, int], fingerprint: str = "",
        stop_after_epoch: int | None = None, extra: dict[str, Any] | None = None) -> FitResult:
    """Train (resuming from ``out_dir/checkpoint.pt`` when its fingerprint matches)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    started = time.perf_counter()
    trainer = Trainer(model, criterion, settings, tasks)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    extra = dict(extra or {})
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        if ckpt.get("format") == CHECKPOINT_FORMAT and ckpt.get("fingerprint") == fingerprint:
            trainer.load_state(ckpt)
            history = list(ckpt["history"])
            start_epoch = int(ckpt["epoch"])
            log.info("resuming from %s after epoch %d of %d", ckpt_path, start_epoch, settings.epochs)
        else:
            log.warning("%s belongs to another configuration (fingerprint %s != %s); training from scratch",
                        ckpt_path, ckpt.get("fingerprint"), fingerprint)
    log.info("training on %s%s: %d train / %d test subjects, %d parameters", trainer.device,
             f" (AMP {trainer.amp_dtype})" if trainer.amp else "", len(train_set),
             len(test_set) if test_set is not None else 0,
             sum(p.numel() for p in model.parameters() if p.requires_grad))

    final_eval: EvalResult | None = None
    for epoch in range(start_epoch, settings.epochs):
        t0 = time.perf_counter()
        lr = trainer.optimizer.param_groups[0]["lr"]
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr}
        row.update(trainer.train_epoch(train_set, epoch))
        trainer.scheduler.step()
        last = epoch + 1 == settings.epochs
        if test_set is not None and (last or (epoch + 1) % max(settings.eval_every, 1) == 0):
            result = trainer.evaluate(test_set)
            row.update(_eval_row(result, tasks))
            if last:
                final_eval = result
        if getattr(criterion, "log_vars", None) is not None:
            for t, s in zip(tasks, criterion.log_vars.detach().cpu().tolist()):
                row[f"log_var_{t}"] = s
        row["seconds"] = time.perf_counter() - t0
        history.append({k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in row.items()})
        save_atomic(trainer.state(epoch + 1, history, fingerprint, extra), ckpt_path)
        write_history(history, out_dir / "history.csv")
        log.info("epoch %d/%d: %s", epoch + 1, settings.epochs,
                 ", ".join(f"{k}={v:.4g}" for k, v in row.items()
                           if isinstance(v, float) and not math.isnan(v) and k not in {"lr", "seconds"}
                           and ("total" in k or "auc" in k)))
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and not last:
            log.info("stopping after epoch %d as asked; rerun to resume", epoch + 1)
            return FitResult(False, epoch + 1, pd.DataFrame(history), None, str(trainer.device),
                             time.perf_counter() - started, extra)

    if final_eval is None and test_set is not None:
        final_eval = trainer.evaluate(test_set)
    write_history(history, out_dir / "history.csv")
    return FitResult(True, settings.epochs, pd.DataFrame(history), final_eval, str(trainer.device),
                     time.perf_counter() - started, extra)


def write_history(history: list[dict[str, Any]], path: Path) -> None:
    pd.DataFrame(history).to_csv(path, index=False)
