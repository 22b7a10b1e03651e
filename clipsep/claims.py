"""Claims: processes that share one output folder take its inputs one at a time.

Every process of a run (one, ``--devices N`` local workers, or the ranks of ``torchrun``
or ``srun`` on many nodes) goes through the same list of inputs and, before separating
one, claims it with a marker ``OUT/.claims/<input name>.claim`` created with
``O_CREAT | O_EXCL`` (atomic, also on NFS v3 and later and Lustre): the one process whose
create succeeds does the input, the others go on to the next one. A long file thus holds
back only the process that does it.

The marker holds JSON ``{"host", "pid", "time", "input"}`` and its modification time is renewed
while the input is being separated (:meth:`Claim.refresh`). It is removed when the input's
stems and ``separation.json`` are written; after a failure it records the reason
(``"failed"``) and stays, so that no other process of the same run tries the input again.

A rerun (after preemption, a crash or Ctrl-C) takes over a claim that is stale:

- its holder is a process of this host, from an earlier run, that no longer exists (a
  process of this run that died on an input, maybe because of it, is reported as failed
  by its parent and not retried before the next run);
- or it has not been renewed for ``stale_after`` seconds (a holder on another host that
  died, or a node that was preempted);
- or it records a failure from before the run started (a new run retries failures).

A claim taken over from a dead holder lets the new holder replace the stems that holder
may have left (its run was interrupted after some stems were renamed into place) and
remove its hidden temporary files; a recorded failure gives no such leave (it may have been
"that file already exists"). A claim held for another input (two commands writing one
output folder, each with its own ``song.wav``) is a conflict, not work done elsewhere.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from clipcore.errors import UsageError

__all__ = ["CLAIMS_DIR", "STALE_SECONDS", "Claim", "claim", "tidy"]

CLAIMS_DIR = ".claims"
STALE_SECONDS = 900.0
"""Default: a claim not renewed for this long is taken over."""
REFRESH_SECONDS = 30.0
HOST = socket.gethostname()


@dataclass
class Claim:
    """A claim held by this process.

    Attributes:
        marker: the marker file.
        taken_over: the claim was taken over from a holder that died at work (the input's
            folder may hold what it left).
    """

    marker: Path
    taken_over: bool = False
    _renewed: float = 0.0

    def refresh(self) -> None:
        """Renew the claim (at most every 30 s; call it as often as convenient)."""
        now = time.time()
        if now - self._renewed >= REFRESH_SECONDS:
            os.utime(self.marker)
            self._renewed = now

    def release(self) -> None:
        """The input is done: remove the marker."""
        self.marker.unlink(missing_ok=True)

    def fail(self, reason: str) -> None:
        """The input failed: keep the marker, recording why (a new run retries it)."""
        holder = _holder(self.marker) or {}
        _write(self.marker, {**holder, "host": HOST, "pid": os.getpid(), "time": time.time(), "failed": reason})


def _write(marker: Path, holder: dict) -> None:
    tmp = marker.with_name(f".{marker.name}.{HOST}.{os.getpid()}")
    tmp.write_text(json.dumps(holder))
    os.replace(tmp, marker)


def _holder(marker: Path) -> dict | None:
    """The marker's content, or None if it is gone; ``{}`` if unreadable (being written)."""
    try:
        text = marker.read_text()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(marker: Path, holder: dict, stale_after: float, run_started: float) -> bool:
    if "failed" in holder:
        return float(holder.get("time", 0)) < run_started
    earlier = float(holder.get("time", 0)) < run_started
    if earlier and holder.get("host") == HOST and isinstance(holder.get("pid"), int) and holder["pid"] != os.getpid():
        if not _alive(holder["pid"]):
            return True
    try:
        return time.time() - marker.stat().st_mtime > stale_after
    except FileNotFoundError:
        return False


def claim(folder: Path, name: str, run_started: float, stale_after: float = STALE_SECONDS,
          source: str | None = None) -> Claim | None:
    """Claim the input whose outputs go to ``folder/name``.

    Args:
        folder: the output folder.
        name: the input's name there.
        run_started: when the run started (time.time()): failures recorded before it
            are retried.
        stale_after: seconds after which a claim that was not renewed is taken over.
        source: the input's resolved path, recorded in the marker.

    Returns:
        The claim, or None if another process holds it for the same input (or it failed
        in this run).

    Raises:
        UsageError: another process holds it for another input.
    """
    marker = folder / CLAIMS_DIR / f"{name}.claim"
    taken_over = False
    for _ in range(3):
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            handle = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileNotFoundError:  # another process removed the empty folder meanwhile
            continue
        except FileExistsError:
            holder = _holder(marker)
            if holder is None:  # released meanwhile: try again
                continue
            stale = _stale(marker, holder, stale_after, run_started)
            if not stale and source is not None and holder.get("input", source) != source:
                raise UsageError(f"{folder / name}/ is being written for {holder['input']} by another process "
                                 f"(pid {holder.get('pid')} on {holder.get('host')}); separate this input into "
                                 "another folder with -o.")
            if not stale or not _take_over(marker, holder):
                return None
            taken_over = "failed" not in holder
            continue
        with os.fdopen(handle, "w") as out:
            out.write(json.dumps({"host": HOST, "pid": os.getpid(), "time": time.time(), "input": source}))
        return Claim(marker, taken_over, time.time())
    return None


def _take_over(marker: Path, holder: dict) -> bool:
    """Move a stale marker aside (one process wins the rename); put it back if it changed
    between reading and moving (it was renewed or taken over by another process)."""
    aside = marker.with_name(f".{marker.name}.stale.{HOST}.{os.getpid()}")
    try:
        os.rename(marker, aside)
    except FileNotFoundError:
        return False
    if _holder(aside) != holder:
        try:
            os.link(aside, marker)  # never over a newer claim
        except FileExistsError:
            pass
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True


def tidy(folder: Path) -> None:
    """Remove the claims folder of ``folder`` if it is empty (no claim held or failed)."""
    try:
        (folder / CLAIMS_DIR).rmdir()
    except OSError:
        pass
