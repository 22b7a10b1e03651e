"""``clipsep separate``: text- or image-queried separation of audio files and folders.

::

    clipsep separate --checkpoint CKPT --query "playing violin" mix.wav stems/ "takes/*.flac"

writes ``separated/<input name>/<query slug>.wav`` (plus ``residual`` and ``noise-<j>``
on request). The work is planned as one :class:`FileJob` per input and done by
:func:`process_file`, which returns a :class:`FileResult`; the jobs are independent, so
they can be shared out across processes.
"""

from __future__ import annotations

import argparse
import glob
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import soundfile as sf
import torch
from tqdm import tqdm

from clipcore.audio import AUDIO_EXTENSIONS, load_audio, save_audio
from clipcore.cli import EXPECTED_ERRORS, UsageError, add_audio_output_arguments, check_audio_output
from clipcore.files import ImageError, load_image
from clipcore.naming import safe_filename, slugify, unique_names

if TYPE_CHECKING:
    from clipsep.separate import Separator

__all__ = [
    "add_separate_command",
    "FileJob",
    "FileResult",
    "OutputOptions",
    "discover",
    "plan",
    "load_separator",
    "process_file",
]

RESIDUAL = "residual"
ERROR_LOG = "clipsep-errors.log"
"""Under the output folder: the tracebacks of internal errors (written only when one happens)."""


@dataclass(frozen=True)
class OutputOptions:
    """How outputs are written (``format``: wav or flac; ``bit_depth``: 16, 24 or 32f;
    ``clip``: a mode of :data:`clipcore.audio.CLIP_MODES`; ``error_log``: where the
    tracebacks of internal errors go)."""

    format: str = "wav"
    bit_depth: str = "16"
    clip: str = "rescale"
    residual: bool = False
    noise: bool = False
    mono: bool = False
    overwrite: bool = False
    error_log: Path | None = None


@dataclass(frozen=True)
class FileJob:
    """One input file and the files it becomes (stem name -> path, in writing order)."""

    source: Path
    outputs: dict[str, Path]


@dataclass
class FileResult:
    """What became of one input: the files written, or why it failed."""

    source: Path
    written: list[Path] = field(default_factory=list)
    error: str | None = None


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
    if root.is_file():
        return [root] if root.suffix.lower() in AUDIO_EXTENSIONS else []
    found = []
    for file in sorted(root.rglob("*")):
        relative = file.relative_to(root).parts
        if file.suffix.lower() not in AUDIO_EXTENSIONS or any(part.startswith(".") for part in relative):
            continue
        if exclude is not None and file.resolve().is_relative_to(exclude):
            continue
        if file.is_file():
            found.append(file)
    return found


def stem_names(queries: list[tuple[str, str]], noise_heads: int) -> list[str]:
    """Output names of the query stems: the text's slug, or ``image-<file slug>``; names
    that clash (``Violin``/``violin``, ``residual``) get a hash of their query."""
    names = [slugify(value) if kind == "text" else f"image-{slugify(Path(value).stem, fallback='image')}"
             for kind, value in queries]
    keys = [f"{kind}:{value}" for kind, value in queries]
    reserved = [RESIDUAL] + [f"noise-{j + 1}" for j in range(noise_heads)]
    return unique_names(names, keys, reserved)


def plan(sources: list[Path], out: Path, stems: list[str], options: OutputOptions, noise_heads: int) -> list[FileJob]:
    """One :class:`FileJob` per source: ``out/<input name>/<stem>.<format>``. Input names
    are the file names without extension, made safe; sources sharing one get a hash of
    their path."""
    names = unique_names([safe_filename(s.stem) for s in sources], [str(s.resolve()) for s in sources])
    extra = ([RESIDUAL] if options.residual else []) + [f"noise-{j + 1}" for j in range(noise_heads if options.noise else 0)]
    return [
        FileJob(source, {stem: out / name / f"{stem}.{options.format}" for stem in stems + extra})
        for source, name in zip(sources, names)
    ]


def process_file(
    job: FileJob,
    separator: Separator,
    embeddings: torch.Tensor,
    options: OutputOptions,
    progress: Callable[[float], None] | None = None,
) -> FileResult:
    """Separate one file and write its stems; every failure becomes the result's
    one-sentence ``error`` (nothing is raised, the input is only read). Failures that are
    not the input's (a bug) are reported as internal errors, with the traceback appended
    to ``options.error_log``."""
    result = FileResult(job.source)
    try:
        source = job.source.resolve()
        for path in job.outputs.values():
            if path.resolve() == source:
                raise UsageError(f"output {path} would overwrite the input.")
            if path.exists() and not options.overwrite:
                raise UsageError(f"{path} already exists (pass --overwrite to replace it).")
        wave, rate = load_audio(job.source, mono=options.mono)
        separation = separator.separate(
            wave, rate, embeddings, residual=options.residual, noise=options.noise, progress=progress
        )
        waves = list(separation.stems)
        if options.residual:
            waves.append(separation.residual)
        if options.noise:
            waves.extend(separation.noise)
        for path, stem in zip(job.outputs.values(), waves):
            save_audio(path, stem, rate, bit_depth=options.bit_depth, format=options.format, clip=options.clip)
            result.written.append(path)
    except (*EXPECTED_ERRORS, OSError, MemoryError, torch.OutOfMemoryError) as error:
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


def _duration(path: Path) -> float:
    try:
        return sf.info(str(path)).duration
    except Exception:  # unreadable files fail, with their reason, when they are processed
        return 0.0


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available.")
    return name


def _queries(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Check the queries: text not empty, images readable; duplicates dropped."""
    if not args.queries:
        raise UsageError("give at least one --query TEXT or --query-image IMAGE.")
    queries = []
    for kind, value in args.queries:
        if kind == "text" and not value.strip():
            raise UsageError("--query: the query text is empty.")
        if kind == "image":
            try:
                load_image(value)
            except ImageError as error:
                raise UsageError(f"--query-image {error}") from None
        query = (kind, value.strip() if kind == "text" else value)
        if query not in queries:
            queries.append(query)
    return queries


def load_separator(args: argparse.Namespace, device: str) -> "Separator":
    """The separator the arguments describe, on ``device`` (one per worker process)."""
    from clipsep.separate import Separator  # here: open_clip is slow to import for --help

    return Separator.load(
        args.checkpoint, args.query_encoder, device=device, segment=args.segment,
        overlap=args.overlap, batch_size=args.batch_size, binary=args.binary, templates=args.template,
    )


def _check_values(args: argparse.Namespace) -> None:
    check_audio_output(args)
    if args.segment is not None and not args.segment > 0:
        raise UsageError(f"--segment must be a positive number of seconds, got {args.segment}.")
    for template in args.template or []:
        if "{}" not in template:
            raise UsageError(f"--template {template!r} has no {{}} to hold the query text.")
    if not 0 <= args.overlap <= 0.5:
        raise UsageError(f"--overlap must be between 0 and 0.5, got {args.overlap}.")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}.")


def run_separate(args: argparse.Namespace) -> int:
    """Run ``clipsep separate``; returns 0, or 1 if any input failed."""
    queries = _queries(args)
    _check_values(args)
    out = Path(args.out)
    options = OutputOptions(args.format, args.bit_depth, args.clip_mode, args.residual, args.noise_stems, args.mono,
                            args.overwrite, error_log=out / ERROR_LOG)
    sources, failures = discover(args.inputs, exclude=out)
    if not sources:
        return summarize([], failures, out)
    from clipsep.separate import QueryError
    from clipsep.separate_workers import run_workers, worker_devices

    devices = worker_devices(_device(args.device), args.devices)
    separator = load_separator(args, devices[0])
    try:
        embeddings = separator.encode_queries([value if kind == "text" else Path(value) for kind, value in queries])
    except QueryError as error:
        raise UsageError(str(error)) from None
    heads = separator.model.num_noise_heads
    if args.noise_stems and heads == 0:
        raise UsageError(f"--noise-stems: the model of {args.checkpoint} has no noise heads "
                         "(it was trained without noise-invariant training).")
    jobs = plan(sources, out, stem_names(queries, heads), options, heads)
    results = []
    durations = [_duration(job.source) for job in jobs]
    with tqdm(total=sum(durations), unit="s", desc="separating", dynamic_ncols=True,
              bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]") as bar:
        if len(devices) > 1:
            del separator  # each worker loads its own
            results = run_workers(jobs, durations, args, embeddings, options, devices, bar)
        else:
            for job, duration in zip(jobs, durations):
                done = [0.0]

                def advance(seconds: float) -> None:
                    step = max(0.0, min(seconds, duration - done[0]))  # model-rate rounding
                    done[0] += step
                    bar.update(step)

                results.append(process_file(job, separator, embeddings, options, advance))
                bar.update(max(0.0, duration - done[0]))
    return summarize(results, failures, out)


def summarize(results: list[FileResult], failures: list[FileResult], out: Path) -> int:
    """Print what was written (stdout) and what failed (stderr); 1 if anything failed."""
    failed = failures + [r for r in results if r.error]
    done = [r for r in results if not r.error]
    written = sum(len(r.written) for r in results)
    print(f"Separated {len(done)} of {len(results) + len(failures)} inputs: {written} files written under {out}/.")
    for result in results:
        if result.written:
            print(f"  {result.source} -> {', '.join(str(p) for p in result.written)}")
    if failed:
        print(f"{len(failed)} input(s) failed:", file=sys.stderr)
        for result in failed:
            print(f"  {result.source}: {result.error}", file=sys.stderr)
    return 1 if failed else 0


def add_separate_command(subparsers: "argparse._SubParsersAction") -> None:
    """Register ``clipsep separate``."""
    parser = subparsers.add_parser(
        "separate",
        help="separate the sounds that text or image queries describe",
        description="Separate the sounds that text or image queries describe from audio files, "
                    "folders (searched recursively) and glob patterns. Writes "
                    "OUT/<input name>/<query slug>.<format>.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files, folders or glob patterns")
    parser.add_argument("-q", "--query", dest="queries", action="append", type=lambda s: ("text", s),
                        metavar="TEXT", help='a text query, e.g. "playing violin" (repeatable)')
    parser.add_argument("--query-image", dest="queries", action="append", type=lambda s: ("image", s),
                        metavar="IMAGE", help="an image query: a picture of the sound's source (repeatable)")
    parser.add_argument("--checkpoint", required=True,
                        help="a project checkpoint folder, or the official CLIPSep checkpoint file (best_model.pt)")
    parser.add_argument("--query-encoder", default=None, metavar="SPEC",
                        help="query encoder: a folder, ARCH/TAG (ViT-B-32/openai) or ARCH=WEIGHTS_FILE "
                             "(default: CHECKPOINT/query_encoder/ or the one the checkpoint names)")
    parser.add_argument("-o", "--out", default="separated", help="output folder (default: separated)")
    add_audio_output_arguments(parser)
    parser.add_argument("--residual", action="store_true", help="also write residual: the mixture minus all stems")
    parser.add_argument("--noise-stems", action="store_true", help="also write the noise heads' stems (noise-1, ...)")
    parser.add_argument("--binary", action="store_true", help="binary masks (> 0.5) instead of soft masks")
    parser.add_argument("--mono", action="store_true", help="downmix to mono first (default: keep the channels, "
                                                           "separated with the same masks)")
    parser.add_argument("--template", action="append", default=None, metavar="TEMPLATE",
                        help='text prompt template with {} (default "a photo of {}"; repeat to average several)')
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: auto")
    parser.add_argument("--devices", type=int, default=1, metavar="N",
                        help="worker processes sharing the files: one per GPU (cuda:0 to cuda:N-1) on CUDA, "
                             "else N CPU processes (default: 1)")
    parser.add_argument("--batch-size", type=int, default=4, help="segments per network pass (default: 4)")
    parser.add_argument("--segment", type=float, default=None, metavar="SECONDS",
                        help="segment length, rounded to whole U-Net blocks (about 2.05 s for the "
                             "paper's model; default: the model's training segment, about 4.1 s)")
    parser.add_argument("--overlap", type=float, default=0.25, metavar="FRACTION",
                        help="overlap of consecutive segments, 0 to 0.5 (default: 0.25)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.set_defaults(run=run_separate)
