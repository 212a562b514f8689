"""Training and inference throughput (images/s) and peak memory of the 2D models.

Run on purpose: ``pytest -m benchmark benchmarks/bench_twod.py -s``.

Each model runs in its own subprocess (so the peak resident memory above the post-import
baseline, ``ru_maxrss``, is that model's alone) on random images at the smoke size
(default 64 x 64, width 1/16) with its paper's batch size (Amyar family 4, segmenters 8,
MGA-table classifiers 32):

- training step = forward + loss + backward + Adam update, the loss of the variant
  (MGA: cross-entropy + attention MSE with uncertainty weighting);
- inference = forward in eval mode under ``torch.no_grad`` (the multi-scale segmenter runs
  its three inference scales).

MGA's training time per mini-batch is also reported relative to ResNet18 and DenseNet121
measured in the same run (MGA Table 4 reports MGA faster than DenseNet121).

On CUDA (when present) the same runs at the papers' size (256 x 256, full width) under
bfloat16 autocast with the channels_last layout, timed with ``torch.cuda.synchronize``;
peak memory is ``torch.cuda.max_memory_allocated``.

Results are printed and written to ``results/benchmarks/bench_twod.json`` with the device's
name. Knobs: BENCH_TWOD_SIZE, BENCH_TWOD_WIDTH (CPU run), BENCH_TWOD_GPU_SIZE,
BENCH_TWOD_GPU_WIDTH (CUDA run), BENCH_TWOD_STEPS, BENCH_TWOD_THREADS.
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
MODELS = {
    "Amyar MTL (binary)": "amyar_mtl_binary",
    "Amyar MTL (binary), 2x input": "amyar_mtl_binary_512",
    "8-layer CNN": "cnn8_binary",
    "U-Net": "unet_seg",
    "SegNet": "segnet_seg",
    "Multi-scale attention segmenter": "mga_seg_hmsa",
    "ResNet18": "resnet18",
    "ResNet18 + CBAM": "resnet18_cbam",
    "ResNet50": "resnet50",
    "DenseNet121": "densenet121",
    "MGA (stage 2)": "mga",
}
SIZE = int(os.environ.get("BENCH_TWOD_SIZE", 64))
WIDTH = float(os.environ.get("BENCH_TWOD_WIDTH", 1 / 16))
STEPS = int(os.environ.get("BENCH_TWOD_STEPS", 5))
THREADS = int(os.environ.get("BENCH_TWOD_THREADS", 1))
GPU_SIZE = int(os.environ.get("BENCH_TWOD_GPU_SIZE", 256))
GPU_WIDTH = float(os.environ.get("BENCH_TWOD_GPU_WIDTH", 1.0))


def measure(variant: str, size: int, width: float, steps: int, threads: int, device: str = "cpu") -> dict:
    """``steps`` timed training steps and inference passes (after one warm-up each)."""
    import resource
    import time

    import psutil
    import torch

    from covidmtl.twod.config import TwoDConfig
    from covidmtl.twod.variants import build_criterion, build_model, family_settings, get_variant, n_classes

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    baseline_rss = psutil.Process().memory_info().rss
    cfg = TwoDConfig.from_dict({"width_multiplier": width, "input_size": size, "amyar": {"large_input_size": 2 * size}})
    spec = get_variant(variant)
    s = spec.input_size(cfg)
    batch = family_settings(spec, cfg)["batch_size"]
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    model, criterion = build_model(spec, cfg).to(dev), build_criterion(spec, cfg).to(dev)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats()
    opt = torch.optim.Adam([*model.parameters(), *criterion.parameters()], lr=1e-4)
    k = max(2, n_classes(spec, cfg))

    def batch_data():
        image = torch.rand(batch, 1, s, s, device=dev)
        if cuda:
            image = image.contiguous(memory_format=torch.channels_last)
        return image, {"label": torch.randint(0, k, (batch,), device=dev),
                       "mask": (torch.rand(batch, 1, s, s, device=dev) > 0.9).float(),
                       "has_mask": torch.ones(batch, device=dev), "image": image,
                       "guide": (torch.rand(batch, 1, s // 4, s // 4, device=dev) > 0.9).float(),
                       "guide_valid": torch.ones(batch, device=dev)}

    def clock() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def autocast():
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=cuda)

    model.train()
    train_times = []
    for i in range(steps + 1):
        image, targets = batch_data()
        t0 = clock()
        with autocast():
            total, _ = criterion(model(image=image), targets)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        if i > 0:
            train_times.append(clock() - t0)
    model.eval()
    infer_times = []
    with torch.no_grad():
        for i in range(steps + 1):
            image, _ = batch_data()
            t0 = clock()
            with autocast():
                model(image=image)
            if i > 0:
                infer_times.append(clock() - t0)
    train_step = sorted(train_times)[len(train_times) // 2]  # median: robust on a shared machine
    infer_step = sorted(infer_times)[len(infer_times) // 2]
    peak = (torch.cuda.max_memory_allocated() if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline_rss)
    return {"variant": variant, "device": device, "device_name": device_name(device), "size": s, "batch": batch, "width": width, "threads": threads,
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds_per_batch": round(train_step, 4), "train_images_per_second": round(batch / train_step, 1),
            "infer_seconds_per_batch": round(infer_step, 4), "infer_images_per_second": round(batch / infer_step, 1),
            "peak_memory_mib": round(peak / 2**20, 1)}


def _run_isolated(variant: str, device: str = "cpu") -> dict:
    size, width = (GPU_SIZE, GPU_WIDTH) if device == "cuda" else (SIZE, WIDTH)
    code = (f"import json,sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_twod as b; "
            f"print(json.dumps(b.measure({variant!r}, {size}, {width}, {STEPS}, {THREADS}, {device!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run(device: str) -> None:
    rows = [(label, _run_isolated(variant, device)) for label, variant in MODELS.items()]
    by_variant = {r["variant"]: r for _, r in rows}
    mga = by_variant["mga"]["train_seconds_per_batch"]
    ratios = {"mga_vs_resnet18": round(mga / by_variant["resnet18"]["train_seconds_per_batch"], 2),
              "mga_vs_densenet121": round(mga / by_variant["densenet121"]["train_seconds_per_batch"], 2),
              "mga_vs_resnet18_cbam": round(mga / by_variant["resnet18_cbam"]["train_seconds_per_batch"], 2)}
    first = rows[0][1]
    print(f"\n{device} ({first['device_name']}), {first['size']}x{first['size']} images, width {first['width']:g}, "
          f"{THREADS} thread(s), median of {STEPS} steps")
    print(f"{'model':34s} {'params':>9s} {'batch':>5s} {'train s/batch':>13s} {'train img/s':>11s} "
          f"{'infer img/s':>11s} {'peak MiB':>9s}")
    for label, r in rows:
        print(f"{label:34s} {r['parameters']:9d} {r['batch']:5d} {r['train_seconds_per_batch']:13.4f} "
              f"{r['train_images_per_second']:11.1f} {r['infer_images_per_second']:11.1f} {r['peak_memory_mib']:9.1f}")
    print("MGA training time per mini-batch relative to:", ratios)
    out = REPO / "results" / "benchmarks" / "bench_twod.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(out.read_text()) if out.exists() else {}
    existing[device] = {"models": [{"model": label, **r} for label, r in rows], "mga_time_ratios": ratios}
    out.write_text(json.dumps(existing, indent=1))
    assert all(r["train_images_per_second"] > 0 and r["infer_images_per_second"] > 0 for _, r in rows)


@pytest.mark.benchmark
def test_twod_throughput_cpu():
    _run("cpu")


@pytest.mark.benchmark
def test_twod_throughput_cuda():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    _run("cuda")
