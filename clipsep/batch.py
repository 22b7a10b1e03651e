"""Batch separation: audio files planned as picklable jobs and separated one by one.

Argparse-free, so that the ``clipsep separate`` command, its worker processes
(:mod:`clipsep.batch_workers`) and a distributed launcher all take the same plain
descriptions::

    spec = SeparatorSpec("runs/x/pretrained/best")
    separator = spec.load("cuda")
    sources, failures = discover(["mixes/"], exclude=Path("separated"))
    jobs = plan(sources, Path("separated"), ["violin"], OutputOptions(), noise_heads=0)
    results = [process_file(job, separator, separator.encode_queries(["violin"]), OutputOptions())
               for job in jobs]

Each input becomes one :class:`FileJob` (``OUT/<input name>/<stem>.<format>``), done by
:func:`process_file`, which returns a :class:`FileResult`; the jobs are independent, so
they can be shared out across processes. :func:`run_jobs` is the loop every process of a
run goes through (one process, ``--devices N`` local workers, the ranks of ``torchrun``
or ``srun``): it skips finished inputs and takes the others one claim at a time
(:mod:`clipsep.claims`).
"""

from __future__ import annotations

import glob
import re
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import soundfile as sf
import torch

from clipcore.audio import AUDIO_EXTENSIONS
from clipcore.audio_blocks import SPOOL_SUFFIX
from clipcore.errors import ClipAudioError, UsageError
from clipcore.files import interrupts_held, remove_files
from clipcore.naming import safe_filename, short_hash, unique_names
from clipsep.claims import STALE_SECONDS, claim, tidy
from clipsep.separation_record import (
    RECORD_NAME,
    input_facts,
    recorded_elsewhere,
    recorded_input,
    recorded_otherwise,
    recorded_stem_files,
    write_record,
)
from clipsep.stem_files import RESIDUAL, FileLevels, output_files, separate_to_files

if TYPE_CHECKING:
    from clipsep.separate import Separator

__all__ = [
    "SeparatorSpec",
    "OutputOptions",
    "FileJob",
    "FileResult",
    "discover",
    "plan",
    "input_seconds",
    "process_file",
    "run_jobs",
    "internal_error",
    "ERROR_LOG",
]

ERROR_LOG = "clipsep-errors.log"
"""Under the output folder: the tracebacks of internal errors (written only when one happens)."""


@dataclass(frozen=True)
class SeparatorSpec:
    """Everything needed to load the same separator in any process (picklable).

    Attributes:
        checkpoint: a project checkpoint folder or the official CLIPSep checkpoint file.
        query_encoder: query encoder spec, or None for the checkpoint's own.
        segment: segment length in seconds, or None for the model's training segment.
        overlap: overlap of consecutive segments, 0 to 0.5.
        batch_size: segments per network pass.
        binary: binary masks instead of soft masks.
        templates: text prompt templates with ``{}``, or None for the default.
        prior: a diffusion prior folder that maps text queries to image embeddings, or None.
        prior_seed: seed of the prior's sampling.
        gap: a modality-gap file that text queries are carried across, or None.
        mask_power: the soft masks raised to this power (1: as the network gives them).
    """

    checkpoint: str
    query_encoder: str | None = None
    segment: float | None = None
    overlap: float = 0.25
    batch_size: int = 4
    binary: bool = False
    templates: tuple[str, ...] | None = None
    prior: str | None = None
    prior_seed: int = 0
    gap: str | None = None
    mask_power: float = 1.0

    def load(self, device: str) -> "Separator":
        """The separator this spec describes, on ``device``."""
        from clipsep.separate import Separator  # here: open_clip is slow to import for --help

        return Separator.load(
            self.checkpoint, self.query_encoder, device=device, segment=self.segment, overlap=self.overlap,
            batch_size=self.batch_size, binary=self.binary,
            templates=list(self.templates) if self.templates is not None else None, prior=self.prior,
            prior_seed=self.prior_seed, gap=self.gap, mask_power=self.mask_power,
        )


@dataclass(frozen=True)
class OutputOptions:
    """How outputs are written (``format``: wav or flac; ``bit_depth``: 16, 24 or 32f;
    ``clip``: a mode of :data:`clipcore.audio.CLIP_MODES`; ``overwrite``: redo finished
    inputs and replace existing files; ``claim_timeout``: seconds after which a claim
    that is not renewed is taken over; ``started``: when the run started (``time.time()``;
    None: when :func:`run_jobs` starts), failures recorded before it are retried;
    ``error_log``: where the tracebacks of internal
    errors go; ``provenance``: the run's part of ``separation.json``
    (:func:`clipsep.separation_record.run_record`), written beside each input's stems; None
    writes none)."""

    format: str = "wav"
    bit_depth: str = "16"
    clip: str = "rescale"
    residual: bool = False
    noise: bool = False
    mono: bool = False
    overwrite: bool = False
    claim_timeout: float = STALE_SECONDS
    started: float | None = None
    error_log: Path | None = None
    provenance: dict | None = field(default=None, compare=False)


@dataclass(frozen=True)
class FileJob:
    """One input file and the files it becomes (stem name -> path, in writing order)."""

    source: Path
    outputs: dict[str, Path]

    @property
    def folder(self) -> Path:
        """The folder of the input's outputs (``OUT/<input name>``)."""
        return next(iter(self.outputs.values())).parent

    def finished(self, run: dict | None) -> bool:
        """All outputs and ``separation.json`` are there (written last, so the input is
        done), and the record names this input, unchanged since, and what ``run`` (a
        :func:`clipsep.separation_record.run_record`) would make of it."""
        return ((self.folder / RECORD_NAME).is_file() and all(path.is_file() for path in self.outputs.values())
                and recorded_elsewhere(self.folder, self.source) is None
                and recorded_otherwise(self.folder, run, self.depends_on_all_queries) is None)

    @property
    def depends_on_all_queries(self) -> bool:
        """Whether an output depends on every query: the residual, or a noise stem."""
        return any(name == RESIDUAL or name.startswith("noise-") for name in self.outputs)


@dataclass
class FileResult:
    """What became of one input: the files written, or why it failed; ``skipped``: it was
    finished by an earlier run."""

    source: Path
    written: list[Path] = field(default_factory=list)
    error: str | None = None
    skipped: bool = False


def discover(specs: list[str], exclude: Path | None = None) -> tuple[list[Path], list[FileResult]]:
    """Input files from files, folders (searched recursively) and glob patterns.

    Folders and globs yield audio files (:data:`clipcore.audio.AUDIO_EXTENSIONS`), hidden
    files and anything under ``exclude`` (the output folder) left out; a file named
    explicitly is taken whatever its extension. Duplicates are dropped.

    Returns:
        ``(files, failures)``: failures name inputs that gave nothing.
    """
    files: dict[Path, Path] = {}
    failures = []
    exclude = exclude.resolve() if exclude is not None else None
    for spec in specs:
        path = Path(spec)
        if path.is_file():
            found = [path]
        elif path.is_dir() and exclude is not None and path.resolve().is_relative_to(exclude):
            failures.append(FileResult(path, error=f"the folder is, or lies inside, the output folder {exclude}, "
                                                   "which is not searched for inputs; choose another -o."))
            continue
        elif path.is_dir() or re.search(r"[*?[]", spec):
            roots = [path] if path.is_dir() else [Path(p) for p in sorted(glob.glob(spec, recursive=True))]
            found = [f for root in roots for f in _audio_files(root, exclude)]
            if not found:
                kind = "folder" if path.is_dir() else "pattern"
                failures.append(FileResult(path, error=f"the {kind} holds no audio files ({', '.join(AUDIO_EXTENSIONS)})."))
        else:
            failures.append(FileResult(path, error="no such file or folder."))
            continue
        for file in found:
            files.setdefault(file.resolve(), file)
    return list(files.values()), failures


def _audio_files(root: Path, exclude: Path | None) -> list[Path]:
    """The audio files of a folder (searched recursively) or a glob's match, but those
    under ``exclude``."""
    files = [root] if root.is_file() else sorted(root.rglob("*"))
    found = []
    for file in files:
        relative = file.relative_to(root).parts if file != root else ()
        if file.suffix.lower() not in AUDIO_EXTENSIONS or any(part.startswith(".") for part in relative):
            continue
        if exclude is not None and file.resolve().is_relative_to(exclude):
            continue
        if file.is_file():
            found.append(file)
    return found


def input_seconds(path: Path) -> float:
    """The length of an input in seconds (for progress bars), or 0 when it cannot be read:
    it then fails, with its reason, when it is separated."""
    try:
        return sf.info(str(path)).duration
    except Exception:
        return 0.0


def plan(sources: list[Path], out: Path, stems: list[str], options: OutputOptions, noise_heads: int) -> list[FileJob]:
    """One :class:`FileJob` per source: ``out/<input name>/<stem>.<format>``. Input names
    are the file names without extension, made safe; sources sharing one get a hash of
    their path, but the one whose stems a folder of that name holds already (by its
    ``separation.json``); and an input alone under its name whose stems an earlier run put
    in its hashed folder keeps that one. So an input keeps its folder from run to run,
    whatever else each run takes in."""
    plain = [safe_filename(s.stem) for s in sources]
    keys = [str(s.resolve()) for s in sources]
    shared = Counter(name.lower() for name in plain)  # the sources are distinct files
    holders = {name.lower(): holder for name in sorted(set(plain))
               if shared[name.lower()] > 1 and (holder := recorded_input(out / name)) is not None}
    names = unique_names(plain, keys, holders=holders)
    for index, (name, key) in enumerate(zip(plain, keys)):
        hashed = f"{name}-{short_hash(key)}"
        if shared[name.lower()] == 1 and recorded_input(out / hashed) == key:
            names[index] = hashed
    noise = noise_heads if options.noise else 0
    return [FileJob(source, output_files(out / name, stems, options.format, options.residual, noise))
            for source, name in zip(sources, names)]


def process_file(
    job: FileJob,
    separator: Separator,
    embeddings: torch.Tensor,
    options: OutputOptions,
    progress: Callable[[float], None] | None = None,
    leftovers: bool = False,
) -> FileResult:
    """Separate one file and write its stems; every failure becomes the result's
    one-sentence ``error`` (nothing is raised, the input is only read). Failures that are
    not the input's (a bug) are reported as internal errors, with the traceback appended
    to ``options.error_log``. ``leftovers``: stems already there were left by an
    interrupted process doing this input, and are replaced.

    The stems and ``separation.json`` appear together, once every stem is converted (an
    interruption or failure before leaves the folder as it was). A folder holds one
    separation, all of whose stems its record lists: stems of an earlier one that this one
    would not write, or made with other queries or settings, fail the input, and
    ``options.overwrite`` replaces them with the new record (with no
    ``options.provenance``, no record is written and nothing is removed).
    """
    result = FileResult(job.source)
    try:
        if not options.overwrite and (elsewhere := recorded_elsewhere(job.folder, job.source)):
            raise UsageError(elsewhere)
        earlier = [name for name in recorded_stem_files(job.folder) if name not in {p.name for p in job.outputs.values()}]
        if earlier and not options.overwrite:  # the record will list this run's stems: none may be left unlisted
            raise UsageError(f"{job.folder}/ holds stems of an earlier separation that this one would not write "
                             f"({', '.join(earlier)}: other queries or another format); pass --overwrite to replace "
                             "them, or separate into another folder with -o.")
        if not options.overwrite and (otherwise := recorded_otherwise(job.folder, options.provenance,
                                                                      job.depends_on_all_queries)):
            raise UsageError(otherwise)
        for path in job.outputs.values():
            if path.is_dir():
                raise UsageError(f"output {path} is a folder; the stem cannot be written there.")
            if path.exists() and not (options.overwrite or leftovers):
                raise UsageError(f"{path} already exists (pass --overwrite to replace it).")
        started = time.perf_counter()
        on_commit = None
        if options.provenance is not None:
            run = options.provenance
            run = {**run, "settings": {**run["settings"], "device": str(separator.device)}}
            source = input_facts(job.source)

            def on_commit(levels: FileLevels) -> None:  # with interrupts held, before the stems are put in place
                write_record(source, job.outputs, levels, time.perf_counter() - started, run)
                remove_files(job.folder / name for name in earlier)  # --overwrite replaced them with the rest

        separate_to_files(separator, job.source, job.outputs, embeddings, residual=options.residual,
                          noise=options.noise, mono=options.mono, format=options.format, bit_depth=options.bit_depth,
                          clip=options.clip, progress=progress, on_commit=on_commit)
        result.written = list(job.outputs.values())
    except (ClipAudioError, OSError, MemoryError, torch.OutOfMemoryError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        result.error = message.removeprefix(f"{job.source}: ")
    except Exception as error:  # noqa: BLE001 - a bug fails this file, not the run, and is logged
        result.error = internal_error(error, job.source, options.error_log)
    return result


def internal_error(error: Exception, source: Path, log: Path | None) -> str:
    """The one-line reason of an unforeseen failure on ``source``; its traceback (of the
    exception being handled) is appended to ``log``, which the reason names."""
    reason = f"internal error, not a problem of this input ({type(error).__name__}: {' '.join(str(error).split())})"
    if log is None:
        return reason + "."
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as handle:
            handle.write(f"--- {source}\n{traceback.format_exc()}\n")
    except OSError as write_error:
        return f"{reason}; its traceback could not be written to {log} ({write_error.strerror})."
    return f"{reason}; traceback in {log}."


def _progress(held, report: Callable[[str, int, object], None], index: int, seconds: float) -> None:
    """A file's progress: the claim refreshed, and ``seconds`` more of ``jobs[index]`` reported."""
    held.refresh()
    report("progress", index, seconds)


def run_jobs(
    jobs: list[FileJob],
    separator: Separator,
    embeddings: torch.Tensor,
    options: OutputOptions,
    report: Callable[[str, int, object], None],
) -> None:
    """Go through ``jobs`` as one process of a run: skip finished inputs (unless
    ``options.overwrite``), claim each other one, separate it and release the claim.

    Args:
        jobs: the planned files, the same list in every process of the run.
        separator: this process's separator.
        embeddings: ``[K, D]`` query embeddings.
        options: output options.
        report: called as ``report(kind, index, payload)`` with ``index`` into ``jobs``:
            ``("skip", i, "finished" | "elsewhere")`` (finished by an earlier run; taken
            by another process of this run), ``("start", i, None)``,
            ``("progress", i, seconds)`` and ``("done", i, FileResult)``.
    """
    started = options.started if options.started is not None else time.time()
    for index, job in enumerate(jobs):
        if not options.overwrite and job.finished(options.provenance):  # by an earlier run, or another process
            earlier = (job.folder / RECORD_NAME).stat().st_mtime < started
            report("skip", index, "finished" if earlier else "elsewhere")
            continue
        held = None
        try:
            try:
                with interrupts_held():  # a claim taken is a claim released below
                    held = claim(job.folder.parent, job.folder.name, started, options.claim_timeout,
                                 str(job.source.resolve()))
            except UsageError as conflict:  # held for another input of that name
                report("done", index, FileResult(job.source, error=str(conflict)))
                continue
            if held is None:
                report("skip", index, "elsewhere")
                continue
            if held.taken_over:  # an interrupted holder may have left stems and temporary files
                for spool in job.folder.glob(f".*{SPOOL_SUFFIX}"):
                    spool.unlink(missing_ok=True)
            report("start", index, None)
            result = process_file(job, separator, embeddings, options, partial(_progress, held, report, index),
                                  leftovers=held.taken_over)
        except BaseException:  # Ctrl-C or SIGTERM: a rerun takes the input again
            if held is not None:
                held.release()
            raise
        if result.error:
            held.fail(result.error)
        else:
            held.release()
        report("done", index, result)
    for folder in {job.folder.parent for job in jobs}:
        tidy(folder)
