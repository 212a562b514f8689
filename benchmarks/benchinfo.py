"""What every benchmark records beside its numbers: the device they came from."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def device_name(device: str) -> str:
    """The CPU model (and logical CPU count) or the GPU's name."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return platform.processor() or platform.machine()
