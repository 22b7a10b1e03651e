"""``clipsep separate``: text- or image-queried separation of audio files and folders.

::

    clipsep separate --checkpoint CKPT --query "playing violin" mix.wav stems/ "takes/*.flac"

writes ``separated/<input name>/<query slug>.wav`` (plus ``residual`` and ``noise-<j>``
on request) and ``separation.json``, streaming each file (:mod:`clipsep.stem_files`).
The command checks its arguments and turns them into the plain descriptions of
:mod:`clipsep.batch` (a :class:`~clipsep.batch.SeparatorSpec`, one
:class:`~clipsep.batch.FileJob` per input), done in this process or, with ``--devices``,
by worker processes; under ``torchrun`` or ``srun`` every rank runs the command and the
ranks share the files through claims in the output folder (:mod:`clipsep.batch_workers`).
A rerun skips finished inputs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from clipcore.cli import (
    UsageError,
    add_audio_output_arguments,
    add_device_argument,
    check_audio_output,
    check_one_text_crossing,
    resolve_device,
    return_large_buffers_to_the_system,
    stop_on_sigterm,
)
from clipcore.errors import EXIT_BAD_INPUT, EXIT_PARTIAL
from clipcore.files import ImageError, check_output_folder, load_image
from clipcore.prompts import prompt_templates
from clipsep.batch import ERROR_LOG, FileResult, OutputOptions, SeparatorSpec, discover, input_seconds, plan
from clipsep.batch_workers import Tally, launcher_process, run_here, run_workers, worker_devices
from clipsep.claims import STALE_SECONDS
from clipsep.masks import check_mask_power
from clipsep.separation_record import run_record
from clipsep.stem_files import stem_names
from clipsep.streaming import MAX_SEGMENT_SECONDS

__all__ = ["add_separate_command", "run_separate", "summarize"]


def _queries(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Check the queries: text not empty, images readable; duplicates dropped."""
    if not args.queries:
        raise UsageError("give at least one --query TEXT or --query-image IMAGE.")
    queries = []
    for kind, value in args.queries:
        if not value.strip():
            raise UsageError("--query: the query text is empty." if kind == "text" else "--query-image: the path is empty.")
        if kind == "image":
            try:
                load_image(value)
            except ImageError as error:
                raise UsageError(f"--query-image {error}") from None
        query = (kind, value.strip() if kind == "text" else value)
        if query not in queries:
            queries.append(query)
    return queries


def _separator_spec(args: argparse.Namespace) -> SeparatorSpec:
    """The separator the arguments describe (picklable: each worker loads its own)."""
    templates = tuple(args.template) if args.template is not None else None
    return SeparatorSpec(args.checkpoint, args.query_encoder, args.segment, args.overlap, args.batch_size,
                         args.binary, templates, args.prior, args.prior_seed, args.gap, args.mask_power)


def _check_values(args: argparse.Namespace) -> None:
    check_audio_output(args)
    check_output_folder(args.out)
    if args.segment is not None and not 0 < args.segment <= MAX_SEGMENT_SECONDS:
        raise UsageError(f"--segment must be above 0 and at most {MAX_SEGMENT_SECONDS:g} seconds, got {args.segment}.")
    if args.template:
        prompt_templates(args.template, "--template", UsageError)
    if not 0 <= args.overlap <= 0.5:
        raise UsageError(f"--overlap must be between 0 and 0.5, got {args.overlap}.")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}.")
    check_mask_power(args.mask_power, args.binary, "--mask-power")
    check_one_text_crossing(args)


def run_separate(args: argparse.Namespace) -> int:
    """Run ``clipsep separate``; returns its exit status (:func:`summarize`)."""
    queries = _queries(args)
    _check_values(args)
    launch = launcher_process()
    if launch.world_size > 1 and args.devices > 1:
        raise UsageError(f"--devices {args.devices}: under torchrun or srun ({launch}), start one process per "
                         "device instead.")
    if not args.claim_timeout > 0:
        raise UsageError(f"--claim-timeout must be a positive number of seconds, got {args.claim_timeout}.")
    out = Path(args.out)
    options = OutputOptions(args.format, args.bit_depth, args.clip_mode, args.residual, args.noise_stems, args.mono,
                            args.overwrite, args.claim_timeout, time.time(), error_log=out / ERROR_LOG)
    sources, failures = discover(args.inputs, exclude=out)
    if not sources:
        return summarize([], failures, out)
    from clipsep.queries import QueryError  # here: open_clip is slow to import for --help

    devices = worker_devices(resolve_device(args.device), args.devices, launch.local_rank)
    if launch.local_world_size > 1 and devices[0] == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // launch.local_world_size))
    spec = _separator_spec(args)
    return_large_buffers_to_the_system()
    separator = spec.load(devices[0])
    try:
        embeddings = separator.encode_queries([value if kind == "text" else Path(value) for kind, value in queries])
    except QueryError as error:
        raise UsageError(str(error)) from None
    heads = separator.model.num_noise_heads
    if args.noise_stems and heads == 0:
        raise UsageError(f"--noise-stems: the model of {args.checkpoint} has no noise heads "
                         "(it was trained without noise-invariant training).")
    settings = {"overlap": spec.overlap, "mono": options.mono, "batch_size": spec.batch_size,
                "format": options.format, "bit_depth": options.bit_depth, "clip_mode": options.clip,
                "prior": None if spec.prior is None else {"path": str(Path(spec.prior).resolve()),
                                                          "seed": spec.prior_seed},
                "gap": None if spec.gap is None else str(Path(spec.gap).resolve())}
    options = replace(options, provenance=run_record(queries, separator, spec.checkpoint, settings))
    jobs = plan(sources, out, stem_names(queries, heads), options, heads)
    durations = [input_seconds(job.source) for job in jobs]
    here = separator if len(devices) == 1 else None
    del separator  # with worker processes, each loads its own
    previous = stop_on_sigterm()
    try:
        return _run_jobs(jobs, durations, spec, here, embeddings, options, devices, launch, failures, out)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run_jobs(jobs, durations, spec, separator, embeddings, options, devices, launch, failures, out) -> int:
    """The jobs done here (``separator``) or by one worker per device; the summary's status."""
    with tqdm(total=sum(durations), unit="s", desc="separating", dynamic_ncols=True, disable=launch.rank > 0,
              bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]") as bar:
        tally = Tally(jobs, durations, bar)
        if separator is None:
            run_workers(jobs, spec, embeddings, options, devices, tally)
        else:
            run_here(jobs, separator, embeddings, options, tally)
        results, elsewhere = tally.finish()
    return summarize(results, failures, out, elsewhere, f"[{launch}] " if launch.world_size > 1 else "")


def summarize(results: list[FileResult], failures: list[FileResult], out: Path, elsewhere: int = 0,
              prefix: str = "") -> int:
    """Print what was written (stdout) and what failed (stderr).

    Returns:
        The exit status: 0, or :data:`~clipcore.errors.EXIT_PARTIAL` (1) if some inputs
        failed, or :data:`~clipcore.errors.EXIT_BAD_INPUT` (2) if every input this process
        took failed (nothing done, as for any bad input).

    Args:
        results: the inputs this process (or its workers) took, and those skipped as finished.
        failures: inputs that gave nothing.
        out: the output folder.
        elsewhere: inputs that other processes of the run took.
        prefix: put before the summary line (the rank under a launcher).
    """
    failed = failures + [r for r in results if r.error]
    skipped = [r for r in results if r.skipped]
    done = [r for r in results if not r.error and not r.skipped]
    written = sum(len(r.written) for r in results)
    total = len(results) + len(failures) - len(skipped)
    print(f"{prefix}Separated {len(done)} of {total} inputs: {written} files written under {out}/.")
    if skipped:
        print(f"{prefix}{len(skipped)} input(s) already separated in {out}/, skipped (--overwrite redoes them).")
    if elsewhere:
        print(f"{prefix}{elsewhere} input(s) taken by other processes of the run.")
    for result in results:
        if result.written:
            print(f"  {result.source} -> {', '.join(str(p) for p in result.written)}")
    if failed:
        print(f"{prefix}{len(failed)} input(s) failed:", file=sys.stderr)
        for result in failed:
            print(f"  {result.source}: {result.error}", file=sys.stderr)
    if not failed:
        return 0
    return EXIT_BAD_INPUT if len(failed) == len(failures) + len(results) else EXIT_PARTIAL


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
    parser.add_argument("--mask-power", type=float, default=1.0, metavar="P",
                        help="soft masks raised to this power: above 1 sharper, less of the other sources (the quick "
                             "start uses 1.5 for image queries, 1 for zero-shot text, chosen on its validation split; "
                             "default: 1, the network's masks); not with --binary")
    parser.add_argument("--mono", action="store_true", help="downmix to mono first (default: keep the channels, "
                                                           "separated with the same masks)")
    parser.add_argument("--template", action="append", default=None, metavar="TEMPLATE",
                        help='text prompt template with {} (default "a photo of {}"; repeat to average several)')
    parser.add_argument("--prior", default=None, metavar="DIR",
                        help="a diffusion prior folder (recipes/train_prior.py): text queries are first mapped to "
                             "CLIP image embeddings, the kind CLIPSep was trained on (default: none)")
    parser.add_argument("--prior-seed", type=int, default=0, help="seed of the prior's sampling (default: 0)")
    parser.add_argument("--gap", default=None, metavar="FILE",
                        help="a modality-gap file (recipes/measure_gap.py): text queries are carried across CLIP's "
                             "gap to where image embeddings lie, with no training; not with --prior (default: none)")
    add_device_argument(parser)
    parser.add_argument("--devices", type=int, default=1, metavar="N",
                        help="worker processes sharing the files: one per GPU (cuda:0 to cuda:N-1) on CUDA, "
                             "else N CPU processes (default: 1); under torchrun or srun, start one process "
                             "per device instead")
    parser.add_argument("--claim-timeout", type=float, default=STALE_SECONDS, metavar="SECONDS",
                        help="take over an input whose claim was not renewed for this long: its process "
                             f"on another host died (default: {STALE_SECONDS:g})")
    parser.add_argument("--batch-size", type=int, default=4, help="segments per network pass (default: 4)")
    parser.add_argument("--segment", type=float, default=None, metavar="SECONDS",
                        help="segment length, rounded to whole U-Net blocks (about 2.05 s for the "
                             "paper's model; default: the model's training segment, about 4.1 s)")
    parser.add_argument("--overlap", type=float, default=0.25, metavar="FRACTION",
                        help="overlap of consecutive segments, 0 to 0.5 (default: 0.25)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo inputs already separated and replace existing output files (default: a rerun "
                             "skips finished inputs)")
    parser.set_defaults(run=run_separate)
