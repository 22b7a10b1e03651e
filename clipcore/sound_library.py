"""Labelled sound libraries as training data: which files, which labels, and the text
embeddings that stand in for video frames.

A sound designer's library is a folder of audio files (labels from the folder names, or
from the file names through a regular expression) or a CSV file listing them (labels from
a column, or from the file names). Each label becomes one query: the raw CLIP text
embedding of the label averaged over prompt templates, as the official CLIPSep feeds text
at inference; systems that read unit-norm queries normalize it. Underscores in labels
read as spaces (``dog_bark`` is queried as "dog bark").

``recipes/prepare_shards.py --audio`` writes them as audio shards (see :mod:`clipcore.shards`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

from clipcore.audio import AUDIO_EXTENSIONS, AudioError, load_audio
from clipcore.errors import UsageError
from clipcore.files import ListedFile, files_below, read_csv_rows

__all__ = ["AUDIO_EXTENSIONS", "read_library", "clip_spans", "read_span", "label_embeddings"]


def _label(text: str | None, pattern: re.Pattern | None, stem: str, where: str) -> str:
    """The label of one file: ``text`` (a folder name or CSV cell), or what ``pattern``
    finds in the file name (its ``label`` group, else its first group, else the match)."""
    if pattern is not None:
        found = pattern.search(stem)
        if found is None:
            raise UsageError(f"{where}: the file name {stem!r} does not match --label-pattern {pattern.pattern!r}.")
        groups = found.groupdict()
        text = groups["label"] if "label" in groups else found.group(1) if pattern.groups else found.group(0)
    label = " ".join((text or "").replace("_", " ").split())
    if not label:
        raise UsageError(f"{where}: has no label" + (" (its folder is the library's top folder; use --label-pattern)."
                                                      if pattern is None else "."))
    return label


def read_library(source: Path, label_column: str = "label", label_pattern: str | None = None,
                 root: Path | None = None) -> list[ListedFile]:
    """The labelled files of a library folder or CSV file.

    Args:
        source: a folder (every audio file below it, labelled by its folder's name) or a
            CSV file with a header row: a ``path`` (or ``file``, ``filename``) column and
            the ``label_column``.
        label_column: the CSV column holding labels.
        label_pattern: a regular expression taking the label from each file name (without
            extension) instead.
        root: where CSV paths are relative to (default: the CSV's folder).

    Raises:
        UsageError: no such input, an empty folder or CSV, an unreadable CSV, a bad pattern,
            or a file whose label cannot be read (one sentence naming it).
    """
    try:
        pattern = re.compile(label_pattern) if label_pattern else None
    except re.error as error:
        raise UsageError(f"--label-pattern {label_pattern!r} is not a regular expression ({error}).") from None
    if source.is_dir():
        files = files_below(source, AUDIO_EXTENSIONS)
        if not files:
            raise UsageError(f"{source}: holds no audio files ({' '.join(AUDIO_EXTENSIONS)}).")
        return [ListedFile(str(p), p.relative_to(source).with_suffix("").as_posix(),
                           _label(p.parent.name if p.parent != source else None, pattern, p.stem, str(p)))
                for p in files]
    if not source.is_file():
        raise UsageError(f"{source}: no such file or folder.")
    root = root or source.parent
    rows = read_csv_rows(source)
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    column = next((header.index(name) for name in ("path", "file", "filename") if name in header), None)
    if column is None:
        raise UsageError(f"{source}: the first row must be a header with a 'path' column.")
    labels = header.index(label_column.lower()) if label_column.lower() in header else None
    if labels is None and pattern is None:
        raise UsageError(f"{source}: the header has no {label_column!r} column (give --label-column or --label-pattern).")
    if len(rows) < 2:
        raise UsageError(f"{source}: lists no audio files.")
    out, rows_of = [], {}
    for number, row in enumerate(rows[1:], 2):
        cell = row[column].strip() if column < len(row) else ""
        if not cell:
            raise UsageError(f"{source}:{number}: the {header[column]} cell is empty.")
        path = root / cell
        if path in rows_of:  # its clips would share their keys (and one label each is what a clip has)
            raise UsageError(f"{source}:{number}: lists {cell} again (row {rows_of[path]}); give each file once.")
        rows_of[path] = number
        label = row[labels] if labels is not None and labels < len(row) else None
        out.append(ListedFile(str(path), path.with_suffix("").name, _label(label, pattern, path.stem, f"{source}:{number}")))
    return out


def clip_spans(path: str, clip_seconds: float, min_seconds: float) -> tuple[list[tuple[float, float]], str | None]:
    """Back-to-back clips of a file, from its header: ``(spans, None)`` or ``([], reason)``."""
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        return [], f"{path}: cannot be read as audio ({' '.join(str(error).split())[:200]})."
    length = info.frames / info.samplerate if info.samplerate else 0.0
    count = int(length / clip_seconds + 1e-6)
    if count == 0:
        if length < min_seconds:
            return [], f"{path}: {length:.1f} s is shorter than --min-seconds {min_seconds:g}."
        return [(0.0, length)], None
    return [(k * clip_seconds, (k + 1) * clip_seconds) for k in range(count)], None


def read_span(path: str, start: float, end: float, sample_rate: int) -> np.ndarray | str:
    """Mono float32 ``[S]`` audio of ``start .. end`` seconds at ``sample_rate``, or why
    it cannot be read (only the span is read and resampled: a clip of a long take costs
    what the clip does)."""
    try:
        wave, _ = load_audio(path, sample_rate, mono=True, span=(start, end))
    except AudioError as error:
        return str(error)
    audio = wave[0].numpy()
    if len(audio) == 0:
        return f"{path}: holds no audio from {start:.1f} s."
    return audio


def label_embeddings(encoder, labels: Sequence[str], templates: Sequence[str]) -> dict[str, np.ndarray]:
    """``{label: float32 [1, D]}``: each label's raw text embedding averaged over ``templates``.

    Args:
        encoder: a ``clipcore.query.QueryEncoder``.
        labels: the labels.
        templates: prompt templates with ``{}`` (``recipes/prepare_shards.py`` uses
            ``clipcore.prompts.CLIPSEP_EVAL_TEMPLATES``, the CLIPSep evaluation's four).
    """
    unique = sorted(set(labels))
    table = encoder.encode_text_raw(unique, list(templates)).cpu().numpy().astype(np.float32)
    if not np.isfinite(table).all():
        raise UsageError(f"the query encoder {encoder.name} gives non-finite text embeddings.")
    return {label: table[k : k + 1] for k, label in enumerate(unique)}
