"""Whole-scan inference of a trained DeepSC-COVID model (section V-A).

Segmentation: the preprocessed volume is tiled with non-overlapping patches (zero-padded at
the far ends), each patch is segmented, and the lesion probabilities are stitched back and
put into the full CT grid (zeros outside the lung box). Classification: the N-slice input.
Evidence masks (eq. 5) of the predicted class are resampled to the volume for display.
Every patch batch has ``batch_size`` patches (the last one filled with zero patches), so
that all scans run the same input shapes and an untimed warm-up scan covers cuDNN's
autotuning.
The time per scan covers both tasks from the preprocessed arrays to the outputs (the
paper's 2.2 s per scan on GPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from covidmtl.deepsc.data import Case, extract_patches, stitch_patches
from covidmtl.deepsc.networks import normalise_evidence


@dataclass
class ScanPrediction:
    subject_id: str
    lesion_prob: np.ndarray | None   # (z, y, x) of the preprocessed (cut) volume
    class_prob: np.ndarray | None    # (3,)
    evidence: list[np.ndarray] | None  # V_1..V_3 (normalised) on the cut volume's grid
    seconds: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def predict_case(model: nn.Module, case: Case, mode: str, tasks: tuple[str, ...], patch_size, batch_size: int,
                 device: torch.device, amp: bool = False, amp_dtype=torch.bfloat16,
                 with_evidence: bool = False) -> ScanPrediction:
    model.eval()
    t0 = time.perf_counter()
    autocast = torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp)
    lesion_prob = class_prob = None
    evidence = None
    if "seg" in tasks:
        patches, starts = extract_patches(case.image, patch_size)
        probs = []
        for i in range(0, len(patches), batch_size):
            batch = patches[i:i + batch_size]
            n = len(batch)
            # Zero patches fill the last batch: every batch of every scan has one shape, so cuDNN
            # autotunes once (in the warm-up) and not inside a timed scan. Samples are independent
            # in eval mode (group norm, batch norm with running statistics).
            if n < batch_size:
                batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]), batch.dtype)])
            x = torch.from_numpy(np.ascontiguousarray(batch))[:, None].to(device)
            with autocast:
                out = model(seg_image=x, mode="seg" if mode == "separate" else mode)
            probs.append(torch.sigmoid(out["seg_logits"][:n].float())[:, 0].cpu().numpy())
        lesion_prob = stitch_patches(np.concatenate(probs), starts, case.image.shape)
    if "cls" in tasks:
        x = torch.from_numpy(case.cls_input)[None, None].to(device)
        with autocast:
            out = model(cls_image=x, mode="cls" if mode == "separate" else mode)
        p = torch.softmax(out["cls_logits"].float(), 1)
        class_prob = p[0].cpu().numpy()
        if with_evidence and "cls_features" in out and hasattr(model, "evidence_masks"):
            maps = model.evidence_masks(out["cls_features"], p.argmax(1))
            evidence = [F.interpolate(normalise_evidence(v), size=case.image.shape, mode="trilinear",
                                      align_corners=False)[0, 0].cpu().numpy() for v in maps]
    _sync(device)
    return ScanPrediction(case.subject_id, lesion_prob, class_prob, evidence, time.perf_counter() - t0)


def full_volume(case: Case, cut: np.ndarray, fill=0) -> np.ndarray:
    """Put an array of the cut volume back into the full CT grid."""
    out = np.full(case.full_shape, fill, dtype=cut.dtype)
    out[case.box] = cut
    return out


def full_lesion_mask(case: Case) -> np.ndarray | None:
    return None if case.lesion is None else full_volume(case, case.lesion)
