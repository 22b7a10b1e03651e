"""One audio file streamed into stem files: read in blocks, separated, written as it goes.

:func:`separate_to_files` reads the input with :class:`clipcore.audio_blocks.AudioReader`,
separates it with :meth:`clipsep.separate.Separator.stream` and writes every stem (and
the residual, mixture minus the stems) through a :class:`clipcore.audio_blocks.StemSpool`:
a hidden temporary file in the output folder that becomes the stem only once the whole
input is separated. Memory depends on the block and segment sizes, not on the input's
length; a failure or an interruption (an exception, Ctrl-C, SIGTERM turned into an
exception by the caller) leaves no stem, complete or partial, behind, nor the stems'
folder if it made it. The stems are put in place together, with interrupts held, once all
are converted: files they replace stay as they were until then. No stem is ever written
over the input.

It returns the levels that ``separation.json`` records (:class:`FileLevels`), summed as
the blocks pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from clipcore.audio_blocks import AudioReader, StemSpool
from clipcore.files import check_not_an_input, interrupts_held, remove_empty_folders
from clipcore.naming import slugify, unique_names

__all__ = ["RESIDUAL", "BLOCK_SECONDS", "FileLevels", "stem_names", "output_files", "query_keys", "separate_to_files"]

RESIDUAL = "residual"
BLOCK_SECONDS = 10.0
"""Seconds of input read per block."""


@dataclass
class FileLevels:
    """What was separated and written, for ``separation.json``.

    Attributes:
        sample_rate: the input's rate.
        channels: channels separated (1 with ``mono``).
        frames: samples per channel.
        mixture_energy: sum of squared samples of the mixture as separated.
        peaks: per output file, its largest absolute sample (before any output gain).
        energies: per output file, its sum of squared samples.
    """

    sample_rate: int
    channels: int
    frames: int
    mixture_energy: float
    peaks: list[float]
    energies: list[float]


def stem_names(queries: list[tuple[str, str]], noise_heads: int) -> list[str]:
    """Output names of the query stems: the text's slug, or ``image-<file slug>``; names
    that clash (``Violin``/``violin``, ``residual``) get a hash of their query."""
    names = [slugify(value) if kind == "text" else f"image-{slugify(Path(value).stem, fallback='image')}"
             for kind, value in queries]
    keys = [f"{kind}:{value}" for kind, value in queries]
    reserved = [RESIDUAL] + [f"noise-{j + 1}" for j in range(noise_heads)]
    return unique_names(names, keys, reserved)


def output_files(folder: Path, stems: list[str], format: str, residual: bool, noise_stems: int) -> dict[str, Path]:
    """Stem name -> ``folder/<name>.<format>``: the query stems, ``residual`` if asked
    for, then ``noise-1`` ... ``noise-<noise_stems>``."""
    names = stems + ([RESIDUAL] if residual else []) + [f"noise-{j + 1}" for j in range(noise_stems)]
    return {name: folder / f"{name}.{format}" for name in names}


def query_keys(queries: Sequence) -> list[tuple[str, str]]:
    """``(kind, value)`` of API queries, for :func:`stem_names`: a ``str`` is text, a path
    an image file; anything else (a PIL image, an embedding) is ``query-<n>``."""
    return [("text", query) if isinstance(query, str) else ("image", os.fspath(query))
            if isinstance(query, os.PathLike) else ("text", f"query-{index + 1}") for index, query in enumerate(queries)]


def separate_to_files(
    separator,
    source: Path,
    outputs: dict[str, Path],
    queries,
    residual: bool = False,
    noise: bool = False,
    mono: bool = False,
    format: str = "wav",
    bit_depth: str = "16",
    clip: str = "rescale",
    block_seconds: float = BLOCK_SECONDS,
    progress: Callable[[float], None] | None = None,
    on_commit: Callable[[FileLevels], object] | None = None,
) -> FileLevels:
    """Separate ``source`` into the files of ``outputs`` (see the module notes).

    Args:
        separator: a :class:`clipsep.separate.Separator`.
        source: the input audio file.
        outputs: stem name -> file, in order: the K query stems, then ``residual`` (if
            asked for), then the noise stems (if asked for).
        queries: K queries or ``[K, D]`` embeddings.
        residual: write mixture minus the stems.
        noise: write the noise heads' stems.
        mono: separate the channel average.
        format, bit_depth, clip: as :func:`clipcore.audio.save_audio`.
        block_seconds: input read per block.
        progress: called with the seconds of input done, as they are.
        on_commit: called with the levels once every stem is converted, before any is put
            in place, with interrupts held: what it writes (``separation.json``) appears
            with the stems; if it raises, none is put in place.

    Returns:
        The levels of the mixture and of each file of ``outputs``.

    Raises:
        AudioError: a missing, unreadable, empty or non-finite input, or bad output
            options. QueryError: bad queries. UsageError: an output that is the input.
    """
    for path in outputs.values():
        check_not_an_input(path, {"the separation": source})
    embeddings = separator.encode_queries(queries)
    folder = next(iter(outputs.values())).parent
    missing = [path for path in (folder, *folder.parents) if not path.exists()]  # the folders the spools make
    with AudioReader(source) as reader:
        channels = 1 if mono else reader.channels
        spools, placed = [], False
        try:
            for path in outputs.values():
                with interrupts_held():  # a spool made is a spool listed, for the cleanup below
                    spools.append(StemSpool(path, reader.sample_rate, channels, format, bit_depth, clip))
            mixture_energy = 0.0
            blocks = reader.blocks(max(1, round(block_seconds * reader.sample_rate)), mono=mono)
            for mix, separated in separator.stream(blocks, reader.sample_rate, embeddings, noise=noise):
                stems = separated[: len(embeddings)]
                files = list(stems) + ([mix - stems.sum(0)] if residual else []) + list(separated[len(embeddings):])
                for spool, wave in zip(spools, files, strict=True):
                    spool.write(wave)
                mixture_energy += mix.double().pow(2).sum().item()
                if progress is not None:
                    progress(mix.shape[-1] / reader.sample_rate)
            for spool in spools:
                spool.stage()
            levels = FileLevels(reader.sample_rate, channels, spools[0].frames, mixture_energy,
                                [spool.peak for spool in spools], [spool.energy for spool in spools])
            with interrupts_held():  # the stems (and their record) appear together
                if on_commit is not None:
                    on_commit(levels)
                for spool in spools:
                    spool.place()
                placed = True  # a signal held in the block arrives as it ends: the separation stays
        except BaseException:
            if placed:
                raise
            with interrupts_held():  # a second Ctrl-C does not cut the cleanup short
                for spool in spools:  # no partial set of stems either
                    if spool.committed:
                        spool.path.unlink(missing_ok=True)
                    spool.discard()
                if missing:
                    remove_empty_folders(missing[-1])
            raise
    return levels
