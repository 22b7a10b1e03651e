"""Stopping a command the way Slurm does, for the tests of SIGTERM handling."""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Callable

__all__ = ["sigterm_when"]


def sigterm_when(command: list[str], ready: Callable[[subprocess.Popen], bool], timeout: float = 120,
                 **popen) -> tuple[subprocess.Popen, str]:
    """Start ``command``, wait until ``ready(process)`` holds while it runs (it may read the
    process's stderr), send SIGTERM and wait for the end.

    Returns:
        The finished process and the rest of its stderr (what ``ready`` did not read).

    Raises:
        AssertionError: the process ended, or ``timeout`` seconds passed, before it was ready.
    """
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    try:
        deadline = time.monotonic() + timeout
        while not ready(process):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    return process, err
