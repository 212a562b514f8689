"""DeepSC-COVID: training step time, peak memory and inference seconds per scan.

Run on purpose: ``pytest -m benchmark benchmarks/bench_deepsc.py -s``.

- Training step (CPU, and CUDA with bfloat16 autocast when present): forward + backward +
  Adam step of one mini-batch in each training mode (segmentation pre-training,
  classification pre-training, joint fine-tuning with the task-aware loss) and of the two
  baselines, at the smoke size by default (width 0.125, 8x32x32 patches, N = 8 slices of
  32x32, batch 4). Each measurement runs in its own subprocess, so the peak resident memory
  (ru_maxrss) above the post-import baseline is that model's alone; on CUDA the peak is
  ``torch.cuda.max_memory_allocated``.
- Inference: whole-scan prediction (both tasks, patches stitched) of the trained-size
  model on a toy chest of 40x70x90 voxels (the smoke cohort at 2 mm), seconds per scan.

The CUDA run uses the paper's sizes (width 1, 24x256x256 patches, N = 48 of 256x256,
batch 2; a 1 mm chest of 300x320x400 voxels for inference); ``BENCH_DEEPSC_SIZE`` (smoke |
paper) overrides the size of both runs.
``BENCH_DEEPSC_STEPS`` (default 3 timed steps after one warm-up), ``BENCH_DEEPSC_THREADS``.
Results are printed and written to ``results/benchmarks/bench_deepsc.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from benchinfo import device_name

REPO = Path(__file__).resolve().parents[1]
# CPU: the smoke size; CUDA: the paper's (inference seconds per scan at full size)
PRESET_CPU = os.environ.get("BENCH_DEEPSC_SIZE", "smoke")
PRESET_CUDA = os.environ.get("BENCH_DEEPSC_SIZE", "paper")
SIZES = {
    "smoke": {"params": {"width_multiplier": 0.125, "segmentation": {"patch_size": [8, 32, 32]},
                         "classification": {"n_slices": 8, "slice_size": [32, 32]},
                         "preprocess": {"crop_to_lung": True}},
              "batch": 4, "scan": (40, 70, 90)},
    "paper": {"params": {"preprocess": {"crop_to_lung": True}}, "batch": 2, "scan": (300, 320, 400)},
}
STEPS = int(os.environ.get("BENCH_DEEPSC_STEPS", 3))
# (label, variant, training mode)
CASES = [("DeepSC-COVID, segmentation pre-training", "deepsc", "seg"),
         ("DeepSC-COVID, classification pre-training", "deepsc", "cls"),
         ("DeepSC-COVID, joint fine-tuning", "deepsc", "joint"),
         ("3D ResNet-50 (baseline)", "resnet50_cls", "cls"),
         ("3D U-Net (baseline)", "unet3d_seg", "seg")]


def measure_step(variant: str, mode: str, device: str, preset: str, steps: int, threads: int) -> dict:
    import resource
    import time

    import psutil
    import torch

    from covidmtl.deepsc.config import DeepSCConfig
    from covidmtl.deepsc.losses import DeepSCLoss
    from covidmtl.deepsc.variants import build_model, get_variant

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    baseline_rss = psutil.Process().memory_info().rss
    size = SIZES[preset]
    cfg = DeepSCConfig.from_dict(size["params"])
    batch = size["batch"]
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    model = build_model(get_variant(variant), cfg).to(dev)
    criterion = DeepSCLoss(cfg).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    patch = tuple(cfg.segmentation.patch_size)
    cls_shape = (cfg.classification.n_slices, *cfg.classification.slice_size)
    model.train()
    times = []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        torch.backends.cudnn.benchmark = True
    for i in range(steps + 1):
        inputs = {}
        if mode in ("seg", "joint"):
            inputs["seg_image"] = torch.rand(batch, 1, *patch, device=dev)
        if mode in ("cls", "joint"):
            inputs["cls_image"] = torch.rand(batch, 1, *cls_shape, device=dev)
        targets = {"label": torch.randint(0, 3, (batch,), device=dev),
                   "lesion": (torch.rand(batch, 1, *patch, device=dev) > 0.95).float(),
                   "has_mask": torch.ones(batch, dtype=torch.bool, device=dev),
                   "box": torch.tensor([[-1.0, 0.0, -0.5, 0.5, -0.5, 0.5]] * batch, device=dev)}
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=cuda):
            out = model(**inputs, mode=mode)
            total, _ = criterion(out, targets, mode, model)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        if i > 0:  # first step = warm-up
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline_rss)
    return {"variant": variant, "mode": mode, "device": device, "preset": preset, "batch": batch,
            "threads": threads, "parameters": sum(p.numel() for p in model.parameters()),
            "seconds_per_step": round(sum(times) / len(times), 4), "peak_memory_mib": round(peak / 2**20, 1)}


def measure_inference(device: str, preset: str, threads: int, repeats: int = 2) -> dict:
    """Seconds per scan of the whole-scan prediction (both tasks) on a toy chest."""
    import numpy as np
    import torch

    from covidmtl.deepsc.config import DeepSCConfig
    from covidmtl.deepsc.data import Case, classification_input, lung_box, scale_hu
    from covidmtl.deepsc.inference import predict_case
    from covidmtl.deepsc.toydata import toy_volume
    from covidmtl.deepsc.variants import build_model, get_variant

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    size = SIZES[preset]
    cfg = DeepSCConfig.from_dict(size["params"])
    dev = torch.device(device)
    ct, lungs, lesion = toy_volume(size["scan"], "covid19", np.random.default_rng(0))
    lung = lungs > 0
    box = lung_box(lung, [2, 2, 2])
    image = (scale_hu(ct, cfg.preprocess.hu_window) * lung)[box]
    case = Case("bench", 0, image, lesion[box], lung[box], (2.0, 2.0, 2.0), ct.shape, box)
    case.cls_input = classification_input(image, cfg.classification.n_slices, cfg.classification.slice_size)
    model = build_model(get_variant("deepsc"), cfg).to(dev).eval()
    kwargs = dict(mode="joint", tasks=("seg", "cls"), patch_size=cfg.segmentation.patch_size,
                  batch_size=SIZES[preset]["batch"], device=dev, amp=dev.type == "cuda")
    predict_case(model, case, **kwargs)  # warm-up
    seconds = [predict_case(model, case, **kwargs).seconds for _ in range(repeats)]
    return {"device": device, "preset": preset, "threads": threads, "scan_voxels": list(size["scan"]),
            "cut_to_lung": list(image.shape), "seconds_per_scan": round(float(np.mean(seconds)), 3)}


def _isolated(call: str) -> dict:
    code = (f"import json,sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_deepsc as b; "
            f"print(json.dumps(b.{call}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _save(key: str, value) -> None:
    out = REPO / "results" / "benchmarks" / "bench_deepsc.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(out.read_text()) if out.exists() else {}
    existing[key] = value
    out.write_text(json.dumps(existing, indent=1))


def _run(device: str, threads: int, preset: str) -> None:
    rows = [(label, _isolated(f"measure_step({v!r}, {m!r}, {device!r}, {preset!r}, {STEPS}, {threads})"))
            for label, v, m in CASES]
    inference = _isolated(f"measure_inference({device!r}, {preset!r}, {threads})")
    inference["device_name"] = device_name(device)
    print(f"\n{device} ({inference['device_name']}), {preset} size, {threads} thread(s)")
    print(f"{'training step':44s} {'params':>9s} {'s/step':>8s} {'peak MiB':>9s}")
    for label, r in rows:
        print(f"{label:44s} {r['parameters']:9d} {r['seconds_per_step']:8.3f} {r['peak_memory_mib']:9.1f}")
    print(f"inference (both tasks) on a {inference['scan_voxels']} chest (cut to {inference['cut_to_lung']}): "
          f"{inference['seconds_per_scan']:.3f} s per scan")
    _save(f"{device}_{preset}", {"training": [{"case": label, **r} for label, r in rows], "inference": inference})
    assert all(r["seconds_per_step"] > 0 for _, r in rows) and inference["seconds_per_scan"] > 0


@pytest.mark.benchmark
def test_deepsc_cpu():
    _run("cpu", int(os.environ.get("BENCH_DEEPSC_THREADS", min(2, os.cpu_count() or 1))), PRESET_CPU)


@pytest.mark.benchmark
def test_deepsc_cuda():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    _run("cuda", 4, PRESET_CUDA)
