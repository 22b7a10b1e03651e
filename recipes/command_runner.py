"""Run the commands of a recipe as a user would type them: printed, logged, timed, in lanes.

The quick start and the experiments are sequences of the project's own commands
(``recipes/*.py``, ``clipsep``, ``clipsonic``). :class:`Runner` prints each one as
``$ ...``, writes its output to ``OUT/logs/<name>.log``, times it, and runs independent
commands side by side: in fixed lanes (one per core), or from a pool from which each core,
when free, takes the next command whose inputs are ready.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["StepFailed", "Runner", "tool", "recipe", "fresh_run_folder"]


class StepFailed(RuntimeError):
    """A command of the quick start failed; the message names it and its log."""

_PRINTING = threading.Lock()


def _say(line: str) -> None:
    """Print a whole line at once: the lanes of :meth:`Runner.lanes` print from threads,
    and ``print`` writes the text and its newline apart."""
    with _PRINTING:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Runner:
    """Runs commands, prints them, logs their output, and times the steps."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.seconds: dict[str, float] = {}

    def command(self, name: str, args: list[str], threads: int = 1) -> None:
        """Run one command to completion (output in ``logs/<name>.log``)."""
        shown = " ".join(_quote(_show(a)) for a in args)
        _say(f"  $ {shown}")
        log = self.logs / f"{name}.log"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": _pythonpath(),
               "TQDM_MININTERVAL": "5"}  # progress bars in log files: a line every 5 s
        start = time.perf_counter()
        with open(log, "w") as handle:
            handle.write(f"$ {shown}\n")
            handle.flush()
            status = subprocess.run(args, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
        self.seconds[name] = round(time.perf_counter() - start, 1)
        if status != 0:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
            raise StepFailed(f"{name} failed (exit status {status}); the end of {log}:\n{tail}")
        _say(f"    {name}: done in {self.seconds[name]:.0f} s")

    def call(self, name: str, function: Callable[[], Any]) -> Any:
        """Run a function of this process, timed."""
        _say(f"  > {name}")
        start = time.perf_counter()
        value = function()
        self.seconds[name] = round(time.perf_counter() - start, 1)
        _say(f"    {name}: done in {self.seconds[name]:.0f} s")
        return value

    def lanes(self, *lanes: list[tuple]) -> dict[str, Any]:
        """Run lanes side by side. Each lane is a list of ``(name, args)`` commands and
        ``(name, function)`` calls of this process, run in order; an item may name the
        work of other lanes it needs as a third element, ``(name, work, ("other",))``, and
        then starts once that is done. Returns what each call returned, by name."""
        items = []
        for lane in lanes:
            previous: tuple[str, ...] = ()
            for name, work, *needs in lane:
                items.append((name, work, (*previous, *(needs[0] if needs else ()))))
                previous = (name,)
        return self.pool(items, workers=len(lanes))

    def pool(self, items: list[tuple], workers: int = 2) -> dict[str, Any]:
        """Run ``(name, work)`` or ``(name, work, needs)`` items (commands or calls, as in
        :meth:`lanes`) on ``workers`` threads: each thread, when free, takes the first item
        in list order whose ``needs`` (names of other items) are done, so work goes to
        whichever core frees first. Returns what each call returned, by name.

        Raises:
            ValueError: an item needs a name that no item has.
            StepFailed: a command failed (no further item starts).
        """
        items = [(name, work, tuple(needs[0]) if needs else ()) for name, work, *needs in items]
        unknown = {need for _, _, needs in items for need in needs} - {name for name, _, _ in items}
        if unknown:
            raise ValueError(f"no item is called {', '.join(sorted(unknown))}.")
        values: dict[str, Any] = {}
        pending, done, failed = list(items), set(), []
        running = 0
        state = threading.Condition()
        threads = 1 if workers > 1 else 2

        def take() -> tuple | None:
            nonlocal running
            with state:
                while pending and not failed:
                    ready = next((item for item in pending if all(need in done for need in item[2])), None)
                    if ready is not None:
                        pending.remove(ready)
                        running += 1
                        return ready
                    if running == 0:
                        failed.append("")  # the other threads stop waiting too
                        state.notify_all()
                        raise ValueError(f"{', '.join(item[0] for item in pending)} need each other.")
                    state.wait()
                return None

        def work_through() -> None:
            nonlocal running
            while (item := take()) is not None:
                name, work, _ = item
                try:
                    if callable(work):
                        values[name] = self.call(name, work)
                    else:
                        self.command(name, work, threads=threads)
                except BaseException:
                    failed.append(name)  # no item starts after a failure
                    raise
                finally:
                    with state:
                        running -= 1
                        done.add(name)
                        state.notify_all()

        with ThreadPoolExecutor(workers) as executor:
            for future in [executor.submit(work_through) for _ in range(workers)]:
                future.result()
        return values

    def step(self, title: str):
        """A context that prints the step's title and records its wall time."""
        return _Step(self, title)


class _Step:
    def __init__(self, runner: Runner, title: str) -> None:
        self.runner, self.title = runner, title

    def __enter__(self):
        print(f"\n== {self.title}", flush=True)
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        seconds = round(time.perf_counter() - self.start, 1)
        self.runner.seconds[f"step: {self.title}"] = seconds
        if exc[0] is None:
            print(f"   ({seconds:.0f} s)", flush=True)


def _show(arg: str) -> str:
    """An argument as a user would type it: ``python``, tool names, relative paths."""
    if arg == sys.executable:
        return "python"
    if Path(arg).parent == Path(sys.executable).parent:
        return Path(arg).name
    path = Path(arg)
    return str(path.relative_to(Path.cwd())) if path.is_absolute() and path.is_relative_to(Path.cwd()) else arg


def _quote(arg: str) -> str:
    """Shell quoting that reads well: double quotes where they are enough."""
    if shlex.quote(arg) == arg or any(c in arg for c in '"$`\\!'):
        return shlex.quote(arg)
    return f'"{arg}"'


def _pythonpath() -> str:
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


def tool(name: str) -> list[str]:
    """The console script of a project CLI (``clipsep``, ``clipsonic``)."""
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.exists() else [sys.executable, "-m", f"{name}.cli"]


def recipe(name: str) -> list[str]:
    """The command that runs ``recipes/<name>`` with this interpreter."""
    return [sys.executable, str(ROOT / "recipes" / name)]


def fresh_run_folder(given: Path, marker: str, kind: str, note: str) -> Path:
    """An empty run folder at ``given`` (resolved): created, or emptied when it holds an
    earlier run of the same recipe (``marker`` file inside; ``note`` is written to it).

    Raises:
        UsageError: ``given`` is a file, lies below one, or holds files and is not such a
            folder (``kind`` names the recipe's folders).
    """
    from clipcore.errors import UsageError
    from clipcore.files import check_output_folder

    check_output_folder(given, "--out")
    out = given.resolve()
    if out.exists() and any(out.iterdir()):
        if not (out / marker).exists():
            raise UsageError(f"{given} is not empty and not a {kind} folder; choose another --out.")
        print(f"{kind}: replacing the previous run in {given}", flush=True)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / marker).write_text(note)
    return out
