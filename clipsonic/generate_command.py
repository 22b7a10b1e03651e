"""``clipsonic generate``: text- or image-queried generation of audio files.

::

    clipsonic generate --checkpoint CKPT "a dog barking" "rain on a roof" -n 2 --duration 5
    clipsonic generate --checkpoint CKPT --prompts prompts.txt --mode pd --prior PRIOR
    clipsonic generate --checkpoint CKPT --image violin.jpg
    clipsonic generate --checkpoint CKPT "playing cello" --gap modality_gap.json

writes ``OUT/<prompt slug>.wav`` (``<slug>-<k>.wav`` with ``-n`` above 1;
``image-<file slug>`` for image queries).
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

import torch

from clipcore import cli
from clipcore.audio import check_finite, save_audio
from clipcore.files import ImageError, check_not_an_input, check_output_folder, load_image, remove_files
from clipcore.naming import slugify, unique_names
from clipsonic.generation_limits import MAX_DURATION, MODES, SAMPLERS, GenerationError, check_guidance, check_output_memory

__all__ = ["add_generate_command", "run_generate", "output_paths"]


def _load_image(path: str):
    """An image query as an RGB PIL image, or a one-sentence usage error."""
    try:
        return load_image(path)
    except ImageError as error:
        raise cli.UsageError(f"--image {error}") from None


def _prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompts)
    if args.prompts_file is not None:
        try:
            lines = Path(args.prompts_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise cli.UsageError(f"--prompts-file {args.prompts_file}: cannot be read ({type(error).__name__}).") from None
        file_prompts = [line.strip() for line in lines if line.strip()]
        if not file_prompts:
            raise cli.UsageError(f"--prompts-file {args.prompts_file}: holds no prompts.")
        prompts += file_prompts
    if any(not p.strip() for p in prompts):
        raise cli.UsageError("a prompt is empty.")
    return list(dict.fromkeys(p.strip() for p in prompts))


def _check(args: argparse.Namespace) -> None:
    if args.steps < 1:
        raise cli.UsageError(f"--steps must be at least 1, got {args.steps}.")
    if args.num_samples < 1:
        raise cli.UsageError(f"-n must be at least 1, got {args.num_samples}.")
    if args.batch_size < 1:
        raise cli.UsageError(f"--batch-size must be at least 1, got {args.batch_size}.")
    if not 0 < args.duration <= MAX_DURATION:
        raise cli.UsageError(f"--duration must be above 0 and at most {MAX_DURATION:g} seconds, got {args.duration:g}.")
    check_guidance(args.guidance, "--guidance")
    cli.check_audio_output(args)
    check_output_folder(args.out)
    if args.mode == "image" and args.prompts:
        raise cli.UsageError('--mode image takes --image queries, not text prompts.')
    if args.mode not in (None, "image") and args.images:
        raise cli.UsageError(f"--mode {args.mode} takes text prompts, not --image queries.")
    if args.gap is not None and args.mode not in (None, "gap"):
        raise cli.UsageError(f"--gap goes with --mode gap (or no --mode), not --mode {args.mode}.")
    if args.mode == "gap" and args.gap is None:
        raise cli.UsageError("--mode gap needs --gap FILE, a modality-gap file of recipes/measure_gap.py.")
    cli.check_one_text_crossing(args)
    cli.resolve_device(args.device)


def output_paths(prompts: list[str], images: list[str], samples: int, out: Path, extension: str) -> list[list[Path]]:
    """``[query][sample]`` output paths: safe, distinct names inside ``out``."""
    names = [slugify(p, fallback="prompt") for p in prompts]
    names += [f"image-{slugify(Path(i).stem, fallback='image')}" for i in images]
    keys = [f"text:{p}" for p in prompts] + [f"image:{Path(i).resolve()}" for i in images]
    names = unique_names(names, keys)
    if samples == 1:
        return [[out / f"{name}.{extension}"] for name in names]
    return [[out / f"{name}-{k + 1}.{extension}" for k in range(samples)] for name in names]


def run_generate(args: argparse.Namespace) -> int:
    """Run ``clipsonic generate``; returns 0 when every file was written."""
    _check(args)
    prompts = _prompts(args)
    by_file: dict[Path, str] = {}
    for image in args.images:  # one query per file, however it is spelled
        by_file.setdefault(Path(image).resolve(), image)
    images = list(by_file.values())
    if not prompts and not images:
        raise cli.UsageError("give at least one prompt (as an argument or with --prompts-file) or --image.")
    pictures = [_load_image(path) for path in images]
    try:  # before a name is made for every clip
        check_output_memory(len(prompts) + len(images), args.num_samples, args.duration)
    except GenerationError as error:
        raise cli.UsageError(str(error)) from None
    out = Path(args.out)
    paths = output_paths(prompts, images, args.num_samples, out, args.format)
    for path in (p for row in paths for p in row):  # not even with --overwrite
        check_not_an_input(path, {"--prompts-file": args.prompts_file})
    existing = [p for row in paths for p in row if p.exists()]
    if existing and not args.overwrite:
        raise cli.UsageError(f"{existing[0]} already exists (pass --overwrite to replace it).")
    folders = [p for p in existing if p.is_dir()]
    if folders:
        raise cli.UsageError(f"{folders[0]}: is a folder; the file cannot be written there.")
    previous = cli.stop_on_sigterm()  # a stopped run removes the file it was writing, as Ctrl-C does
    try:
        return _generate(args, prompts, pictures, paths)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _generate(args: argparse.Namespace, prompts: list[str], pictures: list, paths: list[list[Path]]) -> int:
    """Load the generator, sample every clip, check them all, then write them."""
    from clipsonic.generate import Generator  # here: diffusers is slow to import for --help

    device = cli.resolve_device(args.device)
    try:
        generator = Generator.from_pretrained(
            args.checkpoint, query_encoder=args.query_encoder, prior=args.prior, vocoder=args.vocoder,
            device=device, batch_size=args.batch_size, gap=args.gap,
        )
        parts = []
        if prompts:
            parts.append(generator.embed(text=prompts, mode=args.mode, seed=args.seed, templates=args.template))
        if pictures:
            parts.append(generator.embed(image=pictures, mode="image"))
        result = generator.generate(
            embeddings=torch.cat(parts), steps=args.steps, guidance=args.guidance, sampler=args.sampler,
            seed=args.seed, num_samples=args.num_samples, duration=args.duration, progress=True,
        )
    except GenerationError as error:
        raise cli.UsageError(str(error)) from None
    for row, waves in zip(paths, result.waveforms):  # every file checked before any is written
        for path, wave in zip(row, waves):
            check_finite(wave, str(path))
    written: list[Path] = []
    try:
        for row, waves in zip(paths, result.waveforms):
            for path, wave in zip(row, waves):
                save_audio(path, wave, result.sample_rate, bit_depth=args.bit_depth, format=args.format,
                           clip=args.clip_mode)
                written.append(path)
    except BaseException:  # Ctrl-C, SIGTERM or a full disk: this run's clips appear together or not at all
        # (with --overwrite, files it replaced are gone with them; earlier ones not yet replaced stay)
        remove_files(written)
        raise
    print(f"Generated {len(written)} file(s) of {args.duration:g} s under {args.out}/:")
    for path in written:
        print(f"  {path}")
    return 0


def add_generate_command(subparsers: "argparse._SubParsersAction") -> None:
    """Register ``clipsonic generate``."""
    parser = subparsers.add_parser(
        "generate",
        help="generate audio from text prompts or images",
        description="Generate audio from text prompts (zero-shot, through the diffusion prior or across the "
                    "modality gap) or from images. Writes OUT/<prompt slug>.<format> (<slug>-<k> with -n above 1).",
    )
    parser.add_argument("prompts", nargs="*", metavar="PROMPT", help='text prompts, e.g. "a dog barking"')
    parser.add_argument("--prompts-file", default=None, metavar="FILE", help="a text file with one prompt per line")
    parser.add_argument("--image", dest="images", action="append", default=[], metavar="IMAGE",
                        help="an image query: a picture of the sound's source (repeatable)")
    parser.add_argument("--checkpoint", required=True, help="a CLIPSonic checkpoint folder")
    parser.add_argument("--mode", choices=MODES, default=None,
                        help="image, zs (text embedding used directly), pd (through the prior) or gap (across "
                             "the modality gap); default: image for images; for text gap with --gap, else pd when a "
                             "prior is found, else zs")
    parser.add_argument("--prior", default=None, metavar="DIR",
                        help="diffusion prior folder (default: CHECKPOINT/prior/ when present)")
    parser.add_argument("--gap", default=None, metavar="FILE",
                        help="a modality-gap file (recipes/measure_gap.py): text prompts are carried across CLIP's "
                             "gap to where image embeddings lie, with no training; not with --prior (default: none)")
    parser.add_argument("--query-encoder", default=None, metavar="SPEC",
                        help="query encoder: a folder, ARCH/TAG (ViT-L-14/openai) or ARCH=WEIGHTS_FILE "
                             "(default: CHECKPOINT/query_encoder/ or the one the checkpoint names)")
    parser.add_argument("--template", action="append", default=None, metavar="TEMPLATE",
                        help='text prompt template with {} (default "a photo of {}"; repeat to average several)')
    parser.add_argument("--vocoder", default=None, metavar="griffinlim|DIR",
                        help="griffinlim, or a HiFi-GAN folder (default: CHECKPOINT/vocoder/ when present, "
                             "else griffinlim)")
    parser.add_argument("--sampler", choices=list(SAMPLERS), default="ddim", help="default: ddim")
    parser.add_argument("--steps", type=int, default=50, help="sampler steps (default: 50)")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="sample k of each query uses seed + k (default: 0)")
    parser.add_argument("-n", "--num-samples", type=int, default=1, help="clips per query (default: 1)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per clip (default: 4)")
    parser.add_argument("-o", "--out", default="generated", help="output folder (default: generated)")
    cli.add_audio_output_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=16, help="clips sampled together (default: 16)")
    cli.add_device_argument(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.set_defaults(run=run_generate)
