"""The processes of ``clipsep separate``: this one, ``--devices N`` local workers, or the
ranks of a distributed launcher, all sharing the files through claims.

Every process runs :func:`clipsep.batch.run_jobs` over the same list of inputs and takes
them one claim at a time (:mod:`clipsep.claims`), so there is one code path:

- one process: :func:`run_here`;
- ``--devices N``: :func:`run_workers` starts N worker processes (``cuda:0`` ...
  ``cuda:N-1``, or N CPU processes with an equal share of the threads); each loads its
  own separator and runs the same loop; this process keeps the one progress bar and the
  one summary. A worker that dies fails only the file it was on (its claim is taken over
  by a rerun);
- ``torchrun`` or ``srun``: every rank runs the command as one process (or with
  ``--devices``) and prints its own summary; :func:`launcher_process` reads which rank
  it is (for its device and its share of the CPU) from the launcher's environment.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from typing import Iterator, Sequence

import torch

from clipcore.cli import UsageError, return_large_buffers_to_the_system, stop_on_sigterm
from clipsep.batch import FileJob, FileResult, OutputOptions, SeparatorSpec, internal_error, run_jobs

__all__ = ["LauncherProcess", "launcher_process", "worker_devices", "Tally", "run_here", "run_workers"]

POLL_SECONDS = 1.0


@dataclass(frozen=True)
class LauncherProcess:
    """Where this process stands in a distributed launch (0, 1, 0, 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.world_size}"


def launcher_process(environ: dict[str, str] | None = None) -> LauncherProcess:
    """This process's rank from ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``LOCAL_WORLD_SIZE``) or ``srun`` (``SLURM_PROCID``, ``SLURM_NTASKS``,
    ``SLURM_LOCALID``, ``SLURM_NTASKS_PER_NODE``), else a single process.

    Raises:
        UsageError: values that are not whole numbers.
    """
    env = os.environ if environ is None else environ
    names = (("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE") if "WORLD_SIZE" in env else
             ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE") if "SLURM_NTASKS" in env
             else None)
    if names is None:
        return LauncherProcess()
    values = []
    for name, default in zip(names, ("0", "1", "0", "1")):
        text = env.get(name, default).split("(")[0].split(",")[0]  # SLURM writes "4(x2)" for 2 nodes of 4 tasks
        if not text.isdigit():
            raise UsageError(f"the launcher's {name}={env.get(name)!r} is not a whole number.")
        values.append(int(text))
    return LauncherProcess(*values)


def worker_devices(device: str, count: int, local_rank: int = 0) -> list[str]:
    """The device of each of ``count`` workers (``device``: ``cpu`` or ``cuda``). A
    launcher's process (``local_rank``, with ``count`` 1) takes ``cuda:<local rank>``, or
    ``cuda:<local rank mod devices seen>`` when it sees fewer (``--gpus-per-task 1``).

    Raises:
        UsageError: ``count`` below 1, or more than the CUDA devices available.
    """
    if count < 1:
        raise UsageError(f"--devices must be at least 1, got {count}.")
    if device.startswith("cuda") and (count > 1 or local_rank > 0):
        available = torch.cuda.device_count()
        if count > available:
            raise UsageError(f"--devices {count}: only {available} CUDA device(s) are available.")
        if count == 1:
            return [f"cuda:{local_rank % available}"]
        return [f"cuda:{index}" for index in range(count)]
    return [device] * count


class Tally:
    """What the processes of this run report (the ``report`` of
    :func:`clipsep.batch.run_jobs`): results, skipped inputs, and the progress bar.

    Args:
        jobs: the planned files.
        durations: seconds of each (the bar's share of it).
        bar: a tqdm bar over the seconds of all files.
    """

    def __init__(self, jobs: Sequence[FileJob], durations: Sequence[float], bar):
        self.jobs, self.durations, self.bar = jobs, durations, bar
        self.results: dict[int, FileResult] = {}
        self.shown = [0.0] * len(jobs)

    def __call__(self, kind: str, index: int, payload) -> None:
        if kind == "progress":
            self._advance(index, payload)
        elif kind == "done":
            self.results[index] = payload
            self._advance(index, self.durations[index])
        elif kind == "skip" and payload == "finished" and index not in self.results:
            self.results[index] = FileResult(self.jobs[index].source, skipped=True)
            self._advance(index, self.durations[index])

    def _advance(self, index: int, seconds: float) -> None:
        step = max(0.0, min(seconds, self.durations[index] - self.shown[index]))  # model-rate rounding
        self.shown[index] += step
        self.bar.update(max(0.0, min(step, self.bar.total - self.bar.n)))  # never past the total

    def finish(self) -> tuple[list[FileResult], int]:
        """The results in the order of the jobs, and how many inputs other processes did."""
        elsewhere = [index for index in range(len(self.jobs)) if index not in self.results]
        for index in elsewhere:
            self._advance(index, self.durations[index])
        return [self.results[index] for index in sorted(self.results)], len(elsewhere)


def run_here(jobs: Sequence[FileJob], separator, embeddings: torch.Tensor, options: OutputOptions,
             tally: Tally) -> None:
    """Do the jobs in this process."""
    run_jobs(list(jobs), separator, embeddings, options, tally)


STARTUP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
"""Held from a worker's first instruction until it can take them (see :func:`_start_quietly`)."""


@contextmanager
def _start_quietly() -> Iterator[None]:
    """Worker processes started in this block begin with Ctrl-C and SIGTERM held (the
    calling thread's signal mask, which they inherit), so that neither interrupts their
    imports with a traceback (Ctrl-C reaches the whole process group). This process's
    other threads take its own signals meanwhile."""
    resource_tracker.ensure_running()  # first: starting, it unblocks both signals (of this thread)
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STARTUP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _worker(device: str, threads: int | None, spec: SeparatorSpec, jobs: list[FileJob], embeddings: torch.Tensor,
            options: OutputOptions, channel: Connection) -> None:
    """Run the claim loop; report on ``channel`` (this worker's own pipe: a send is written
    before it returns, so a worker killed on a file has said which file it took, and a
    worker killed while sending spoils no other worker's reports). Ctrl-C is the main
    process's to handle; SIGTERM (the main process stopping the run) ends it quietly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # and a Ctrl-C held since the start is dropped
    stop_on_sigterm()
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STARTUP_SIGNALS)  # a SIGTERM held since the start arrives here
        _work(device, threads, spec, jobs, embeddings, options, channel)
    except KeyboardInterrupt:
        return


def _work(device: str, threads: int | None, spec: SeparatorSpec, jobs: list[FileJob], embeddings: torch.Tensor,
          options: OutputOptions, channel: Connection) -> None:
    """A worker's separator loaded, then the claim loop (see :func:`_worker`)."""
    return_large_buffers_to_the_system()
    if threads:
        torch.set_num_threads(threads)
    try:
        separator = spec.load(device)
    except Exception as error:  # noqa: BLE001 - reported as this worker's one-line reason
        channel.send(("fatal", " ".join(str(error).split()) or type(error).__name__))
        return
    current = None

    def report(kind: str, task: int, payload) -> None:
        nonlocal current
        current = task if kind == "start" else None if kind == "done" else current
        channel.send((kind, (task, payload)))

    try:
        run_jobs(jobs, separator, embeddings, options, report)
    except Exception as error:  # noqa: BLE001 - an unforeseen failure fails this file, not the run
        if current is not None:
            reason = internal_error(error, jobs[current].source, options.error_log)
            channel.send(("done", (current, FileResult(jobs[current].source, error=reason))))


def run_workers(jobs: Sequence[FileJob], spec: SeparatorSpec, embeddings: torch.Tensor, options: OutputOptions,
                devices: Sequence[str], tally: Tally) -> None:
    """Do the jobs on one worker process per entry of ``devices``.

    Each worker reports on its own pipe. When a pipe ends (its worker is gone), the file
    that worker had started and not finished fails, naming the exit code; when all have
    ended, every file that no worker took, nor saw taken by another process of the run,
    fails with the reason (the workers could not start, or died).

    Args:
        jobs: the planned files.
        spec: the separator (each worker loads its own from it).
        embeddings: ``[K, D]`` query embeddings, computed once.
        options: output options.
        devices: one device per worker.
        tally: receives the workers' reports.
    """
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    cpu = all(device == "cpu" for device in devices)
    threads = max(1, torch.get_num_threads() // len(devices)) if cpu else None
    embeddings = embeddings.detach().cpu()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the caller's separator is gone: leave its memory to worker 0
    workers, channels = [], {}
    for index, device in enumerate(devices):
        reader, writer = context.Pipe(duplex=False)
        workers.append(context.Process(target=_worker, daemon=True,
                                       args=(device, threads, spec, list(jobs), embeddings, options, writer)))
        with _start_quietly():
            workers[-1].start()
        writer.close()  # the worker holds the only writing end: the pipe ends when the worker does
        channels[reader] = index
    current: dict[int, int] = {}  # worker -> the file it started and has not finished
    elsewhere: set[int] = set()  # files a worker saw taken (by a sibling, or another process of the run)
    reasons: list[str] = []
    try:
        while channels:
            for reader in wait(list(channels), timeout=POLL_SECONDS):
                index = channels[reader]
                try:
                    kind, payload = reader.recv()
                except (EOFError, OSError, pickle.UnpicklingError):  # the worker is gone
                    del channels[reader]
                    _ended(index, workers[index], devices[index], jobs, current, tally)
                    continue
                if kind == "fatal":
                    reasons.append(f"worker {index} ({devices[index]}) could not start: {payload}")
                    continue
                task, value = payload
                if kind == "start":
                    current[index] = task
                elif kind == "done":
                    current.pop(index, None)
                elif kind == "skip" and value == "elsewhere":
                    elsewhere.add(task)
                tally(kind, task, value)
    except BaseException:  # Ctrl-C or a failure here: stop the workers now
        for worker in workers:
            worker.terminate()
        raise
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.terminate()
    reason = "; ".join(reasons) or "the worker processes ended (exit codes " + ", ".join(
        str(worker.exitcode) for worker in workers) + ") before taking this file."
    for task in range(len(jobs)):
        if task not in tally.results and task not in elsewhere:
            tally("done", task, FileResult(jobs[task].source, error=reason))


def _ended(index: int, worker, device: str, jobs: Sequence[FileJob], current: dict[int, int], tally: Tally) -> None:
    """Worker ``index`` is gone: fail the file it was on, if any."""
    worker.join(timeout=30)
    if index in current:
        task = current.pop(index)
        tally("done", task, FileResult(jobs[task].source, error=f"worker {index} ({device}) died "
                                                               f"(exit code {worker.exitcode}) while on this file."))
