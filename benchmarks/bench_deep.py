"""Training throughput (volumes/s) and peak memory of the 3D deep models.

Run on purpose: ``make bench`` or ``pytest -m benchmark benchmarks/bench_deep.py -s``.

- CPU: one training step = forward + backward + SGD step on a batch of random volumes
  (default 64^3, batch 2, width 1.0 = the paper's channel counts). Each model runs in its
  own subprocess, so the peak resident memory (ru_maxrss) above the post-import baseline
  is that model's alone.
- CUDA (when present): the same with mixed precision (bfloat16), channels_last_3d and a
  DataLoader with worker processes and pinned memory feeding the GPU; peak memory is
  ``torch.cuda.max_memory_allocated``.

Results are printed and written to ``results/benchmarks/bench_deep.json``. Sizes can be
changed with BENCH_DEEP_SIZE, BENCH_DEEP_BATCH, BENCH_DEEP_WIDTH, BENCH_DEEP_STEPS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODELS = {"ResNet3D-34": "resnet3d_ct", "SqueezeNet3D": "squeezenet3d_ct", "ShiftNet3D": "shiftnet3d_ct",
          "COVID-MTL (Shift3D + features)": "mtl_shift_features"}
SIZE = int(os.environ.get("BENCH_DEEP_SIZE", 64))
BATCH = int(os.environ.get("BENCH_DEEP_BATCH", 2))
WIDTH = float(os.environ.get("BENCH_DEEP_WIDTH", 1.0))
STEPS = int(os.environ.get("BENCH_DEEP_STEPS", 3))
N_FEATURES = 375


def measure(variant: str, device: str, size: int, batch: int, width: float, steps: int, threads: int) -> dict:
    """Train ``steps`` timed steps (after one warm-up step) and report throughput and peak memory."""
    import resource
    import time

    import psutil
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from covidmtl.deep.config import DeepConfig
    from covidmtl.deep.losses import MultiTaskLoss
    from covidmtl.deep.variants import build_model, get_variant

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    baseline_rss = psutil.Process().memory_info().rss
    spec = get_variant(variant)
    cfg = DeepConfig.from_dict({"width_multiplier": width, "input": {"crop_size": [size] * 3}})
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    model = build_model(spec, cfg, N_FEATURES).to(dev)
    if cuda:
        model = model.to(memory_format=torch.channels_last_3d)
        torch.backends.cudnn.benchmark = True
    criterion = MultiTaskLoss(list(spec.tasks), "random_weighted")
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9, nesterov=True, weight_decay=5e-5)
    n = batch * (steps + 1)
    data = TensorDataset(torch.randn(n, 1, size, size, size), torch.randn(n, N_FEATURES),
                         *[torch.randint(0, k, (n,)) for k in spec.task_classes.values()])
    loader = DataLoader(data, batch_size=batch, num_workers=4 if cuda else 0, pin_memory=cuda)
    model.train()
    times = []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for i, (image, feats, *labels) in enumerate(loader):
        t0 = time.perf_counter()
        image = image.to(dev, non_blocking=True)
        if cuda:
            image = image.contiguous(memory_format=torch.channels_last_3d)
        feats = feats.to(dev, non_blocking=True)
        targets = {t: y.to(dev, non_blocking=True) for t, y in zip(spec.tasks, labels)}
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=cuda):
            total, _ = criterion(model(image, feats), targets)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        if i > 0:  # first step = warm-up (allocations, cudnn autotuning)
            times.append(time.perf_counter() - t0)
    step = sum(times) / len(times)
    peak = (torch.cuda.max_memory_allocated() if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline_rss)
    return {"variant": variant, "device": device, "size": size, "batch": batch, "width": width, "threads": threads,
            "parameters": sum(p.numel() for p in model.parameters()), "seconds_per_step": round(step, 4),
            "volumes_per_second": round(batch / step, 3), "peak_memory_mib": round(peak / 2**20, 1)}


def _run_isolated(variant: str, device: str, threads: int) -> dict:
    code = (f"import json,sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_deep as b; "
            f"print(json.dumps(b.measure({variant!r}, {device!r}, {SIZE}, {BATCH}, {WIDTH}, {STEPS}, {threads})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _report(rows: list[dict], name: str) -> None:
    print(f"\n{name}: {SIZE}^3 volumes, batch {BATCH}, width {WIDTH}")
    print(f"{'model':32s} {'params':>11s} {'s/step':>8s} {'vol/s':>8s} {'peak MiB':>9s}")
    for label, r in rows:
        print(f"{label:32s} {r['parameters']:11d} {r['seconds_per_step']:8.3f} {r['volumes_per_second']:8.3f} "
              f"{r['peak_memory_mib']:9.1f}")
    out = REPO / "results" / "benchmarks" / "bench_deep.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(out.read_text()) if out.exists() else {}
    existing[name] = [{"model": label, **r} for label, r in rows]
    out.write_text(json.dumps(existing, indent=1))


@pytest.mark.benchmark
def test_training_throughput_cpu():
    threads = int(os.environ.get("BENCH_DEEP_THREADS", min(4, os.cpu_count() or 1)))
    rows = [(label, _run_isolated(variant, "cpu", threads)) for label, variant in MODELS.items()]
    _report(rows, "cpu")
    assert all(r["volumes_per_second"] > 0 for _, r in rows)


@pytest.mark.benchmark
def test_training_throughput_cuda():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rows = [(label, _run_isolated(variant, "cuda", 4)) for label, variant in MODELS.items()]
    _report(rows, "cuda")
    assert all(r["volumes_per_second"] > 0 for _, r in rows)
