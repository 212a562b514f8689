"""Training throughput (volumes/s) and peak memory of the 3D deep models.

Run on purpose: ``make bench`` or ``pytest -m benchmark benchmarks/bench_deep.py -s``.

- CPU: one training step = forward + backward + SGD step on a batch of random volumes
  (default 64^3, batch 2, width 1.0 = the paper's channel counts). Each model runs in its
  own subprocess, so the peak resident memory (ru_maxrss) above the post-import baseline
  is that model's alone.
- CUDA (when present): the same with mixed precision (bfloat16), channels_last_3d and a
  DataLoader with worker processes and pinned memory feeding the GPU; peak memory is
  ``torch.cuda.max_memory_allocated``.

- Pipeline (the ``pipeline_epoch`` cases): one training epoch of the real ``deep-train`` path
  (``covidmtl.deep.experiment.run``): compressed NIfTI lung volumes read from disk, MONAI
  crop/noise/rotation/flip augmentation, DataLoader workers (BENCH_DEEP_WORKERS), the Trainer
  with its autocast / gradient scaler / channels_last_3d on CUDA. Volumes/s here includes
  loading and augmentation, i.e. whether the data pipeline keeps the device busy; compare
  with the step-only numbers above.

Results are printed and written to ``results/benchmarks/bench_deep.json`` with the device's
name. Sizes can be changed with BENCH_DEEP_SIZE, BENCH_DEEP_BATCH, BENCH_DEEP_WIDTH,
BENCH_DEEP_STEPS (and BENCH_DEEP_SUBJECTS for the pipeline epoch).
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
MODELS = {"ResNet3D-34": "resnet3d_ct", "SqueezeNet3D": "squeezenet3d_ct", "ShiftNet3D": "shiftnet3d_ct",
          "COVID-MTL (Shift3D + features)": "mtl_shift_features"}
SIZE = int(os.environ.get("BENCH_DEEP_SIZE", 64))
BATCH = int(os.environ.get("BENCH_DEEP_BATCH", 2))
WIDTH = float(os.environ.get("BENCH_DEEP_WIDTH", 1.0))
STEPS = int(os.environ.get("BENCH_DEEP_STEPS", 3))
N_FEATURES = 375
SUBJECTS = int(os.environ.get("BENCH_DEEP_SUBJECTS", 12))
WORKERS = int(os.environ.get("BENCH_DEEP_WORKERS", 2))


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
            "device_name": device_name(device),
            "parameters": sum(p.numel() for p in model.parameters()), "seconds_per_step": round(step, 4),
            "volumes_per_second": round(batch / step, 3), "peak_memory_mib": round(peak / 2**20, 1)}


def write_volume_cohort(root: Path, n: int, crop: int) -> dict[str, Path]:
    """``n`` lung volumes 25 % larger than the crop (so the random crop has room), a manifest,
    a split (all but two subjects train) and a feature table, as the workflow writes them."""
    import numpy as np
    import pandas as pd
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    shape = (int(crop * 1.25),) * 3
    rows, feats = [], []
    volumes = {}
    for i in range(n):
        sid = f"B{i:03d}"
        a = rng.normal(-800, 120, shape).astype(np.int16)
        path = root / "lungseg" / sid / "lung_volume.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.GetImageFromArray(a), str(path))
        volumes[sid] = path
        rows.append({"subject_id": sid, "patient_id": f"P{i}", "ct": i % 2, "nat": (i // 2) % 2, "severity": i % 3})
        feats.append({"subject_id": sid, **{f"original_firstorder_F{k}": float(v)
                                        for k, v in enumerate(rng.normal(size=N_FEATURES))}})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    pd.DataFrame({"subject_id": [r["subject_id"] for r in rows],
                  "split": ["train"] * (n - 4) + ["test"] * 4}).to_csv(root / "split.csv", index=False)
    pd.DataFrame(feats).to_csv(root / "features.csv", index=False)
    return volumes


def measure_pipeline_epoch(variant: str, device: str, size: int, batch: int, width: float, n_subjects: int,
                           workers: int, threads: int) -> dict:
    """Seconds of the second training epoch of ``deep-train`` (the first warms up), from disk."""
    import resource
    import tempfile

    import pandas as pd
    import psutil
    import torch

    from covidmtl.deep.config import DeepConfig
    from covidmtl.deep.experiment import run
    from covidmtl.deep.variants import get_variant

    torch.set_num_threads(threads)
    baseline_rss = psutil.Process().memory_info().rss
    cfg = DeepConfig.from_dict({"width_multiplier": width, "input": {"crop_size": [size] * 3},
                                "train": {"epochs": 3, "batch_size": batch, "eval_every": 1000, "progress": False,
                                          "num_workers": workers, "device": device}})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        volumes = write_volume_cohort(root, n_subjects, size)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        run(get_variant(variant), cfg, volumes, root / "manifest.csv", root / "split.csv", root / "features.csv",
            root / "out", seed=0)
        history = pd.read_csv(root / "out" / "history.csv")
    seconds = float(history.loc[1, "seconds"])  # epoch 2: no evaluation, nothing left to warm up
    n_train = n_subjects - 4
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline_rss)
    return {"variant": variant, "device": device, "device_name": device_name(device), "size": size, "batch": batch,
            "width": width, "threads": threads, "workers": workers, "n_train": n_train,
            "seconds_per_epoch": round(seconds, 3), "volumes_per_second": round(n_train / seconds, 3),
            "peak_memory_mib": round(peak / 2**20, 1)}


def _run_isolated(variant: str, device: str, threads: int, pipeline: bool = False) -> dict:
    call = (f"b.measure_pipeline_epoch({variant!r}, {device!r}, {SIZE}, {BATCH}, {WIDTH}, {SUBJECTS}, {WORKERS}, "
            f"{threads})" if pipeline else
            f"b.measure({variant!r}, {device!r}, {SIZE}, {BATCH}, {WIDTH}, {STEPS}, {threads})")
    code = (f"import json,sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_deep as b; "
            f"print(json.dumps({call}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _report(rows: list[dict], name: str) -> None:
    print(f"\n{name}: {SIZE}^3 volumes, batch {BATCH}, width {WIDTH}, on {rows[0][1]['device_name']}")
    per_step = "seconds_per_step" in rows[0][1]
    print(f"{'model':32s} {'params':>11s} {'s/step' if per_step else 's/epoch':>8s} {'vol/s':>8s} {'peak MiB':>9s}")
    for label, r in rows:
        params = r["parameters"] if per_step else ""
        seconds = r["seconds_per_step"] if per_step else r["seconds_per_epoch"]
        print(f"{label:32s} {params:>11} {seconds:8.3f} {r['volumes_per_second']:8.3f} {r['peak_memory_mib']:9.1f}")
    out = REPO / "results" / "benchmarks" / "bench_deep.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(out.read_text()) if out.exists() else {}
    existing[name] = [{"model": label, **r} for label, r in rows]
    out.write_text(json.dumps(existing, indent=1))


@pytest.mark.benchmark
@pytest.mark.parametrize("pipeline", [False, True], ids=["step", "pipeline_epoch"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_training_throughput(device, pipeline):
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    threads = int(os.environ.get("BENCH_DEEP_THREADS", min(4, os.cpu_count() or 1))) if device == "cpu" else 4
    rows = [(label, _run_isolated(variant, device, threads, pipeline)) for label, variant in MODELS.items()]
    _report(rows, f"pipeline_{device}" if pipeline else device)
    assert all(r["volumes_per_second"] > 0 for _, r in rows)
