"""How much memory a device has, and the bound of the requests the inference APIs refuse
before they run out of it (a long mixture's stems, a large batch of generated clips): half
of it, leaving the rest to the model, its working buffers and everything else running."""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["device_memory", "memory_exceeded"]

CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
"""Where a Linux container states its memory limit (cgroup v2, then v1)."""


def device_memory(device: torch.device | str) -> int | None:
    """Bytes of memory on ``device``: a GPU's own; for the CPU (and devices that share its
    memory), the machine's physical memory, or its container's limit when lower.

    Returns:
        The bytes, or ``None`` where this system does not tell (Windows).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no such query here
        return None
    for limit in CGROUP_LIMITS:
        try:
            memory = min(memory, int(Path(limit).read_text()))
        except (OSError, ValueError):  # no such file, or "max"
            pass
    return memory


def memory_exceeded(need: int, device: torch.device | str) -> int | None:
    """The memory of ``device`` (bytes) when ``need`` bytes would take more than half of it
    (a request refused up front), else ``None`` (also where the system does not tell)."""
    memory = device_memory(device)
    return memory if memory is not None and need > memory / 2 else None
