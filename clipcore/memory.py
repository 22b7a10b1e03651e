"""How much memory a device has: the bound of the requests the inference APIs refuse
before they run out of it (a long mixture's stems, a large batch of generated clips)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["device_memory"]

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
