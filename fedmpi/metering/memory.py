"""Peak memory of this rank: the CUDA allocator's peak on GPU, else max RSS."""
from __future__ import annotations

import resource
import sys

import torch


def peak_memory_bytes(device: torch.device | None = None) -> int:
    if device is not None and device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)
