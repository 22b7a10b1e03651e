"""A process pool with a watchdog: no single item can stall a run.

FFmpeg can hang inside C code on a bad file, where no Python timeout reaches it. So
every item runs in a worker process, one at a time, and a worker that takes longer than
the limit on an item, or dies, is killed and replaced; the item is reported as failed
and the run goes on. With one worker the same holds (one child process).

Workers are forked from a clean server process (multiprocessing's ``forkserver``), not
from the caller: a child forked from a process that has decoded video can hang in
FFmpeg (seen here in ``av.open``, after the parent had used frame threads). The server
imports the main module and the function's module once, so new workers start at once.

Usage::

    for index, outcome in supervised_map(decode, jobs, workers=2, timeout=60):
        if outcome.ok:
            use(outcome.value)
        else:
            print(jobs[index], outcome.reason)
"""

from __future__ import annotations

import multiprocessing
import signal
import time
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterator, Sequence

__all__ = ["Outcome", "supervised_map"]


@dataclass(frozen=True)
class Outcome:
    """What became of one item.

    Attributes:
        ok: the function returned.
        value: its result (None unless ``ok``).
        reason: why not, one sentence: ``"took longer than 60 s"``, ``"its worker died
            (exit status -9)"`` or ``"failed unexpectedly (KeyError: 'x')"``.
        traceback: the worker's traceback for an unexpected exception, else ``""``.
    """

    ok: bool
    value: Any = None
    reason: str = ""
    traceback: str = ""


def _serve(function: Callable, initializer: Callable | None, conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if initializer is not None:
        initializer()
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        index, item = message
        try:
            reply = (index, Outcome(True, function(item)))
        except Exception as error:  # reported per item; the worker stays usable
            reason = f"failed unexpectedly ({type(error).__name__}: {error})"
            reply = (index, Outcome(False, reason=reason, traceback=traceback.format_exc()))
        conn.send(reply)


class _Worker:
    """One child process, its pipe, and the item it holds (with its deadline)."""

    def __init__(self, context, function: Callable, initializer: Callable | None) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(function, initializer, child), daemon=True)
        self.process.start()
        child.close()
        self.index: int | None = None
        self.deadline = float("inf")

    def give(self, index: int, item: Any, timeout: float) -> None:
        self.index, self.deadline = index, time.monotonic() + timeout
        self.conn.send((index, item))

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.process.join(timeout=None if kill else 5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def supervised_map(
    function: Callable[[Any], Any],
    items: Sequence[Any],
    workers: int = 1,
    timeout: float = 60.0,
    initializer: Callable[[], None] | None = None,
) -> Iterator[tuple[int, Outcome]]:
    """Apply ``function`` to each item in worker processes, yielding results as they end.

    Items are handed out in order, one per worker at a time. A worker that holds an item
    longer than ``timeout`` seconds, or dies, is killed and replaced. Workers are fresh
    processes, so ``function``, ``initializer``, items and results must be picklable
    (module-level functions, ``functools.partial`` of them, dataclasses); what a worker
    needs loaded once (a model) is loaded by ``initializer``.

    Args:
        function: called on one item in a worker.
        items: the items.
        workers: number of worker processes (at least 1).
        timeout: seconds one item may take.
        initializer: called once in each new worker.

    Yields:
        ``(index into items, Outcome)``, in order of completion.
    """
    context = multiprocessing.get_context("forkserver")
    module = getattr(getattr(function, "func", function), "__module__", "__main__")
    context.set_forkserver_preload(["__main__", module])  # used when the server starts
    pool = [_Worker(context, function, initializer) for _ in range(min(workers, len(items)))]
    queue = deque(enumerate(items))
    busy: dict[Connection, _Worker] = {}
    try:
        for worker in pool:
            _hand_out(worker, queue, busy, timeout)
        while busy:
            now = time.monotonic()
            ready = wait(list(busy), timeout=max(0.0, min(w.deadline for w in busy.values()) - now))
            for conn in ready:
                worker = busy.pop(conn)
                try:
                    index, outcome = conn.recv()
                except (EOFError, OSError):
                    worker.process.join(timeout=5)
                    index = worker.index
                    outcome = Outcome(False, reason=f"its worker died (exit status {worker.process.exitcode})")
                    worker = _replace(worker, pool, queue, context, function, initializer)
                yield index, outcome
                _hand_out(worker, queue, busy, timeout)
            for conn, worker in list(busy.items()):
                if conn not in ready and time.monotonic() >= worker.deadline:
                    del busy[conn]
                    yield worker.index, Outcome(False, reason=f"took longer than {timeout:g} s")
                    _hand_out(_replace(worker, pool, queue, context, function, initializer), queue, busy, timeout)
    finally:
        for worker in pool:
            worker.stop(kill=worker.conn in busy)


def _hand_out(worker: _Worker | None, queue: deque, busy: dict, timeout: float) -> None:
    if worker is not None and queue:
        worker.give(*queue.popleft(), timeout)
        busy[worker.conn] = worker


def _replace(worker: _Worker, pool: list[_Worker], queue: deque, context, function, initializer) -> _Worker | None:
    """Kill a worker; start another in its place while items remain."""
    worker.stop(kill=True)
    pool.remove(worker)
    if not queue:
        return None
    fresh = _Worker(context, function, initializer)
    pool.append(fresh)
    return fresh
