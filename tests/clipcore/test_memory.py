"""A device's memory: the machine's, or a container's limit when lower."""

import os

from clipcore import memory
from clipcore.memory import device_memory, memory_exceeded


def test_the_cpu_has_the_machines_memory_or_a_lower_container_limit(tmp_path, monkeypatch):
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < device_memory("cpu") <= physical
    (tmp_path / "v2").write_text("max\n")  # cgroup v2 without a limit
    (tmp_path / "v1").write_text(f"{2**30}\n")
    monkeypatch.setattr(memory, "CGROUP_LIMITS", (str(tmp_path / "v2"), str(tmp_path / "none"), str(tmp_path / "v1")))
    assert device_memory("cpu") == min(physical, 2**30)
    monkeypatch.setattr(memory, "CGROUP_LIMITS", (str(tmp_path / "v2"),))
    assert device_memory("cpu") == physical


def test_a_request_is_refused_beyond_half_the_memory():
    memory = device_memory("cpu")
    assert memory_exceeded(memory // 2, "cpu") is None
    assert memory_exceeded(memory // 2 + 1, "cpu") == memory
