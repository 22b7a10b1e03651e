"""A process pool with a watchdog: no single item can stall a run.

FFmpeg can hang inside C code on a bad file, where no Python timeout reaches it. So
every item runs in a worker process, one at a time, and a worker that takes longer than
the limit on an item, or dies, is killed and replaced; the item is reported as failed
and the run goes on. With one worker the same holds (one child process).

Workers are fresh processes (multiprocessing's ``forkserver``), not forks of the caller:
a child forked from a process that has decoded video can hang in FFmpeg (seen here in
``av.open``, after the parent had used frame threads). Each new worker imports the main
module, so a pool is made once per run and serves every stage of it.

Usage::

    with SupervisedPool(workers=2, timeout=60, initializer=load_model) as pool:
        for index, outcome in pool.map(decode, jobs):
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

__all__ = ["Outcome", "SupervisedPool", "supervised_map"]

STARTUP_LIMIT = 600.0
"""Seconds a new worker may take to import and initialise before the run stops."""
_READY = "ready"


@dataclass(frozen=True)
class Outcome:
    """What became of one item.

    Attributes:
        ok: the function returned.
        value: its result (None unless ``ok``).
        reason: why not, a predicate: ``"took longer than 60 s"``, ``"killed its worker
            (exit status -9)"`` or ``"failed unexpectedly (KeyError: 'x')"``.
        traceback: the worker's traceback for an unexpected exception, else ``""``.
    """

    ok: bool
    value: Any = None
    reason: str = ""
    traceback: str = ""


def _serve(initializer: Callable | None, conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        if initializer is not None:
            initializer()
    except Exception:
        _send_quietly(conn, traceback.format_exc())
        return
    if not _send_quietly(conn, _READY):
        return
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        function, index, item = message
        try:
            reply = (index, Outcome(True, function(item)))
        except Exception as error:  # reported per item; the worker stays usable
            reason = f"failed unexpectedly ({type(error).__name__}: {error})"
            reply = (index, Outcome(False, reason=reason, traceback=traceback.format_exc()))
        if not _send_quietly(conn, reply):
            return


def _send_quietly(conn, message) -> bool:
    """Send ``message`` to the parent; False (and no traceback) if the parent is gone."""
    try:
        conn.send(message)
    except OSError:  # BrokenPipeError and its kind: SIGTERM, or the parent killed
        return False
    return True


class _Worker:
    """One child process, its pipe, and the item it holds (with its deadline)."""

    def __init__(self, context, initializer: Callable | None) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(initializer, child), daemon=True)
        self.process.start()
        child.close()
        self.index: int | None = None
        self.deadline = float("inf")

    def wait_ready(self) -> None:
        """Block until the worker has initialised; time spent here counts against no item.

        Raises:
            RuntimeError: the worker failed, died or hung while starting.
        """
        try:
            message = self.conn.recv() if self.conn.poll(STARTUP_LIMIT) else None
        except EOFError:
            message = None
        if message != _READY:
            self.stop(kill=True)
            detail = message or f"no answer within {STARTUP_LIMIT:g} s (exit status {self.process.exitcode})"
            raise RuntimeError(f"a worker process could not start: {detail}")

    def give(self, function: Callable, index: int, item: Any, timeout: float) -> None:
        self.index, self.deadline = index, time.monotonic() + timeout
        self.conn.send((function, index, item))

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


class SupervisedPool:
    """Worker processes that apply functions to items under a per-item time limit.

    Items are handed out in order, one per worker at a time. A worker that holds an item
    longer than ``timeout`` seconds, or dies, is killed and replaced. Functions,
    ``initializer``, items and results travel between processes, so they must be
    picklable (module-level functions, ``functools.partial`` of them, dataclasses); what a
    worker needs loaded once (a model) is loaded by ``initializer``.

    Args:
        workers: number of worker processes (at least 1).
        timeout: seconds one item may take.
        initializer: called once in each new worker.
    """

    def __init__(self, workers: int = 1, timeout: float = 60.0, initializer: Callable[[], None] | None = None) -> None:
        self.timeout, self.initializer = timeout, initializer
        self.context = multiprocessing.get_context("forkserver")
        self.workers = [_Worker(self.context, initializer) for _ in range(workers)]
        for worker in self.workers:
            worker.wait_ready()

    def __enter__(self) -> "SupervisedPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop every worker."""
        for worker in self.workers:
            worker.stop(kill=worker.index is not None)
        self.workers = []

    def map(self, function: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Outcome]]:
        """Apply ``function`` to each item, yielding results as they end.

        Yields:
            ``(index into items, Outcome)``, in order of completion.
        """
        queue = deque(enumerate(items))
        busy: dict[Connection, _Worker] = {}
        for worker in list(self.workers):
            self._hand_out(worker, function, queue, busy)
        while busy:
            wait_for = max(0.0, min(w.deadline for w in busy.values()) - time.monotonic())
            ready = wait(list(busy), timeout=wait_for)
            for conn in ready:
                worker = busy.pop(conn)
                try:
                    index, outcome = conn.recv()
                    worker.index = None
                except (EOFError, OSError):
                    worker.process.join(timeout=5)
                    index = worker.index
                    outcome = Outcome(False, reason=f"killed its worker (exit status {worker.process.exitcode})")
                    worker = self._replace(worker)
                yield index, outcome
                self._hand_out(worker, function, queue, busy)
            for conn, worker in list(busy.items()):
                if conn not in ready and time.monotonic() >= worker.deadline:
                    del busy[conn]
                    yield worker.index, Outcome(False, reason=f"took longer than {self.timeout:g} s")
                    self._hand_out(self._replace(worker), function, queue, busy)

    def _hand_out(self, worker: _Worker, function: Callable, queue: deque, busy: dict) -> None:
        if queue:
            index, item = queue.popleft()
            worker.give(function, index, item, self.timeout)
            busy[worker.conn] = worker

    def _replace(self, worker: _Worker) -> _Worker:
        """Kill a worker and start another in its place."""
        worker.stop(kill=True)
        fresh = _Worker(self.context, self.initializer)
        self.workers[self.workers.index(worker)] = fresh
        fresh.wait_ready()
        return fresh


def supervised_map(
    function: Callable[[Any], Any],
    items: Sequence[Any],
    workers: int = 1,
    timeout: float = 60.0,
    initializer: Callable[[], None] | None = None,
) -> Iterator[tuple[int, Outcome]]:
    """One :meth:`SupervisedPool.map` on a pool of at most ``len(items)`` workers, closed after.

    Yields:
        ``(index into items, Outcome)``, in order of completion.
    """
    if not items:
        return
    with SupervisedPool(min(workers, len(items)), timeout, initializer) as pool:
        yield from pool.map(function, items)
