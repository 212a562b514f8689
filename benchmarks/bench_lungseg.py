"""Speed and memory of the lung-segmentation stage on a real 512 x 512 x 148 study (P001).

Run on purpose: ``make bench`` (pytest -m benchmark benchmarks) or
``python benchmarks/bench_lungseg.py [--grid native|1mm] [--threads N]``.

Each measurement runs in a fresh process so that its peak memory is its own: the
classical step alone, and the refined method (classical step + Algorithm 1).  Reported:
wall and CPU seconds of each step (CPU includes the refinement's worker processes), the
process' peak resident memory, and the peak increase over the memory held after reading
the CT (sampled, so the refinement's worker processes are not included).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
P001 = REPO.parent / "shared" / "real-ct" / "covid-ct-md" / "COVID-19 subjects" / "P001"


def _read(grid: str):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(P001), reader.GetGDCMSeriesIDs(str(P001))[0]))
    image = sitk.DICOMOrient(reader.Execute(), "LPS")
    if grid == "1mm":  # as the curation stage does by default
        size = [int(round(n * s)) for n, s in zip(image.GetSize(), image.GetSpacing())]
        image = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (1.0, 1.0, 1.0),
                              image.GetDirection(), -1024, sitk.sitkInt16)
    return image


class _PeakRSS:
    """Samples the process' resident memory every few ms (catches C++ allocations too)."""

    def __init__(self, interval: float = 0.01):
        import psutil

        self.process, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def _measure(grid: str, method: str, threads: int, queue) -> None:
    import resource

    import numpy as np
    import SimpleITK as sitk
    from threadpoolctl import threadpool_limits

    from covidmtl.lungseg.classical import array_spacing, classical_segmentation_labels
    from covidmtl.lungseg.refine import refine_labels

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    ct = _read(grid)
    arr = sitk.GetArrayViewFromImage(ct)
    baseline = _PeakRSS().process.memory_info().rss
    out = {"grid": grid, "method": method, "threads": threads, "size_xyz": list(ct.GetSize()),
           "spacing_mm": [round(s, 3) for s in ct.GetSpacing()]}
    def cpu() -> float:  # this process and its finished worker processes
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    with threadpool_limits(limits=threads), _PeakRSS() as peak:
        start, start_cpu = time.perf_counter(), cpu()
        result = classical_segmentation_labels(ct, subject="P001")
        out["classical_s"], out["classical_cpu_s"] = time.perf_counter() - start, cpu() - start_cpu
        if method == "refined":
            start, start_cpu = time.perf_counter(), cpu()
            refined = refine_labels(arr, result.labels, array_spacing(ct), threads=threads)
            out["refine_s"], out["refine_cpu_s"] = time.perf_counter() - start, cpu() - start_cpu
            out["refined_lung_ml"] = float((refined > 0).sum() * np.prod(ct.GetSpacing()) / 1000)
    out["total_s"] = out["classical_s"] + out.get("refine_s", 0.0)
    out["lung_ml"] = result.info["right_lung_ml"] + result.info["left_lung_ml"]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["peak_increase_mb"] = (peak.peak - baseline) / 2**20
    queue.put(out)


def measure(grid: str, method: str, threads: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(grid, method, threads, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


@pytest.mark.benchmark
@pytest.mark.parametrize("grid", ["native", "1mm"])
@pytest.mark.parametrize("method", ["classical", "refined"])
def test_lungseg_speed_and_memory(benchmark, grid, method):
    if not P001.is_dir():
        pytest.skip(f"real study P001 not present at {P001}")
    threads = int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1))
    result = benchmark.pedantic(measure, args=(grid, method, threads), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=["native", "1mm"], nargs="+", default=["native", "1mm"])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    for grid in args.grid:
        for method in ("classical", "refined"):
            print(json.dumps(measure(grid, method, args.threads)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
