"""``clipsep separate --devices N``: the input files shared out across N worker processes.

One worker per device: ``cuda:0`` ... ``cuda:N-1`` with ``--device cuda``, or N CPU
processes, each with an equal share of the CPU threads. Every worker loads its own
separator and takes the next file from one queue, so a long file does not hold back the
rest. Each file goes through :func:`clipsep.batch.process_file`, exactly as with
one process, with the query embeddings computed once by the main process; the workers
report progress and results to the main process, which keeps the one progress bar and
prints the one summary. A worker that dies fails only the file it was working on.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
from typing import Sequence

import torch

from clipcore.cli import UsageError
from clipsep.batch import FileJob, FileResult, OutputOptions, SeparatorSpec, internal_error, process_file

__all__ = ["worker_devices", "run_workers"]

POLL_SECONDS = 1.0


def worker_devices(device: str, count: int) -> list[str]:
    """The device of each of ``count`` workers (``device``: ``cpu`` or ``cuda``).

    Raises:
        UsageError: ``count`` below 1, or more than the CUDA devices available.
    """
    if count < 1:
        raise UsageError(f"--devices must be at least 1, got {count}.")
    if device.startswith("cuda") and count > 1:
        available = torch.cuda.device_count()
        if count > available:
            raise UsageError(f"--devices {count}: only {available} CUDA device(s) are available.")
        return [f"cuda:{index}" for index in range(count)]
    return [device] * count


def _worker(index: int, device: str, threads: int | None, spec: SeparatorSpec, jobs: list[FileJob],
            embeddings: torch.Tensor, options: OutputOptions, tasks, events) -> None:
    """Take file numbers from ``tasks`` until ``None``; report on ``events``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    if threads:
        torch.set_num_threads(threads)
    try:
        separator = spec.load(device)
    except Exception as error:  # noqa: BLE001 - reported as this worker's one-line reason
        events.put(("fatal", index, " ".join(str(error).split()) or type(error).__name__))
        return
    while (task := tasks.get()) is not None:
        events.put(("start", index, task))
        try:
            result = process_file(jobs[task], separator, embeddings, options,
                                  lambda seconds: events.put(("progress", index, seconds)))
        except Exception as error:  # noqa: BLE001 - an unforeseen failure fails this file, not the run
            result = FileResult(jobs[task].source, error=internal_error(error, jobs[task].source, options.error_log))
        events.put(("done", index, (task, result)))


def run_workers(jobs: Sequence[FileJob], durations: Sequence[float], spec: SeparatorSpec,
                embeddings: torch.Tensor, options: OutputOptions, devices: Sequence[str], bar) -> list[FileResult]:
    """Process ``jobs`` on one worker process per entry of ``devices``.

    Args:
        jobs: the planned files.
        durations: seconds of each file (the bar's share of it).
        spec: the separator (each worker loads its own from it).
        embeddings: ``[K, D]`` query embeddings, computed once.
        options: output options.
        devices: one device per worker.
        bar: the tqdm progress bar, advanced in seconds of audio.

    Returns:
        One :class:`FileResult` per job, in the order of ``jobs``.
    """
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    tasks, events = context.Queue(), context.Queue()
    for task in range(len(jobs)):
        tasks.put(task)
    for _ in devices:
        tasks.put(None)
    cpu = all(device == "cpu" for device in devices)
    threads = max(1, torch.get_num_threads() // len(devices)) if cpu else None
    embeddings = embeddings.detach().cpu()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the caller's separator is gone: leave its memory to worker 0
    workers = [
        context.Process(target=_worker, daemon=True,
                        args=(index, device, threads, spec, list(jobs), embeddings, options, tasks, events))
        for index, device in enumerate(devices)
    ]
    for worker in workers:
        worker.start()
    results: dict[int, FileResult] = {}
    current: dict[int, int] = {}  # worker -> file it works on
    done = [0.0] * len(jobs)  # seconds shown on the bar per file
    reasons: list[str] = []

    def advance(seconds: float) -> None:  # never past the total: files end out of order
        bar.update(max(0.0, min(seconds, bar.total - bar.n)))

    def finish(task: int, result: FileResult) -> None:
        results[task] = result
        advance(durations[task] - done[task])

    try:
        while len(results) < len(jobs):
            try:
                kind, index, payload = events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                _check_workers(workers, devices, jobs, current, results, reasons, finish)
                continue
            if kind == "start":
                current[index] = payload
            elif kind == "progress" and index in current:
                task = current[index]
                step = max(0.0, min(payload, durations[task] - done[task]))  # model-rate rounding
                done[task] += step
                advance(step)
            elif kind == "done":
                current.pop(index, None)
                finish(*payload)
            elif kind == "fatal":
                reasons.append(f"worker {index} ({devices[index]}) could not start: {payload}")
    except BaseException:  # Ctrl-C or a failure here: stop the workers now
        for worker in workers:
            worker.terminate()
        raise
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.terminate()
    return [results[task] for task in range(len(jobs))]


def _check_workers(workers, devices, jobs, current, results, reasons, finish) -> None:
    """After a quiet spell: fail the file of each worker that died, and every file left
    once no worker is alive (all their messages have been read by then)."""
    for index, worker in enumerate(workers):
        if not worker.is_alive() and index in current:
            task = current.pop(index)
            finish(task, FileResult(jobs[task].source, error=f"worker {index} ({devices[index]}) died "
                                                             f"(exit code {worker.exitcode}) while on this file."))
    if not any(worker.is_alive() for worker in workers):
        reason = "; ".join(reasons) or "all worker processes ended."
        for task in range(len(jobs)):
            if task not in results:
                finish(task, FileResult(jobs[task].source, error=reason))
