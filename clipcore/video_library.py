"""Video collections as training data: which files, which labels, and which part of each.

A collection is a folder of video files (labels from the folder names) or a CSV file that
lists them, in one of three layouts: ``generic`` (a header with a ``path`` column, and
optional ``label``, ``start`` and ``end``), ``vggsound`` (VGGSound's ``vggsound.csv``) or
``music`` (the CLIPSep lists of MUSIC). ``recipes/prepare_shards.py`` cuts each listed part
into clips (:func:`clip_spans`) and writes them as shards; labelled audio without pictures
is :mod:`clipcore.sound_library`'s.
"""

from __future__ import annotations

import math
from pathlib import Path

from clipcore.errors import UsageError
from clipcore.files import ListedFile, files_below, read_csv_rows
from clipcore.video import VIDEO_EXTENSIONS, VideoError, probe

__all__ = ["LAYOUTS", "read_video_list", "clip_spans"]

LAYOUTS = ("generic", "vggsound", "music")
VGGSOUND_SECONDS = 10.0
"""How much of a full video a ``vggsound`` row names, from its start."""


def _seconds(value: str, where: str) -> float:
    """A time in a CSV row: a finite number of seconds, 0 or more."""
    try:
        seconds = float(value)
    except ValueError:
        raise UsageError(f"{where}: {value!r} is not a number of seconds.") from None
    if not 0 <= seconds < math.inf:
        raise UsageError(f"{where}: {value!r} is not a time in the video (a finite number of seconds, 0 or more).")
    return seconds


def _detect_layout(first: list[str], path: Path) -> str:
    cells = [c.strip().lower() for c in first]
    if {"path", "file", "filename", "video"} & set(cells):
        return "generic"
    if len(cells) == 4 and cells[3] in {"train", "test", "val", "validation"}:
        return "vggsound"
    if len(cells) >= 4 and cells[2].isdigit():
        return "music"
    raise UsageError(f"{path}: cannot tell the CSV layout from its first row; pass --layout.")


def read_video_list(source: Path, video_root: Path | None = None, layout: str = "auto",
                    split: str | None = None) -> tuple[list[ListedFile], list[tuple[str, str]]]:
    """The videos of a folder or CSV file, and the rows that name no existing file.

    Args:
        source: a folder (every video file below it; id = the path below it without
            extension, label = the file's folder unless that is ``source``) or a CSV file.
        video_root: where a CSV's files are, looked up recursively by name for the
            ``vggsound`` and ``music`` layouts (default: the CSV's folder).
        layout: ``"auto"`` (told from the first row) or one of :data:`LAYOUTS`.
        split: ``vggsound`` layout: keep the rows of this split only.

    Returns:
        the videos, and ``(row's file or id, reason)`` for each row without a file.

    Raises:
        UsageError: no such input, an unreadable or empty CSV, or a malformed row (one
            sentence naming the file and row).
    """
    if source.is_dir():
        return [ListedFile(str(p), p.relative_to(source).with_suffix("").as_posix(),
                           p.parent.name if p.parent != source else None) for p in files_below(source, VIDEO_EXTENSIONS)], []
    if not source.is_file():
        raise UsageError(f"{source}: no such file or folder.")
    if source.suffix.lower() in VIDEO_EXTENSIONS:
        raise UsageError(f"{source}: is a video; give the folder that holds it, or a CSV file that lists it.")
    root = video_root or source.parent
    if not root.is_dir():
        raise UsageError(f"{root}: video root is not a folder.")
    rows = read_csv_rows(source)
    if not rows:
        raise UsageError(f"{source}: lists no videos.")
    layout = layout if layout != "auto" else _detect_layout(rows[0], source)
    if layout == "generic":
        return _generic_rows(rows, source, root)
    index: dict[str, list[Path]] = {}
    for path in files_below(root, VIDEO_EXTENSIONS):
        index.setdefault(path.stem, []).append(path)
    videos, missing = [], []
    for number, row in enumerate(rows, 1):
        where = f"{source}:{number}"
        if layout == "vggsound":
            if len(row) < 4:
                raise UsageError(f"{where}: expected 4 columns (youtube_id,start,label,split).")
            ytid, start, label, row_split = (c.strip() for c in row[:4])
            if split and row_split != split:
                continue
            start_s = _seconds(start, where)
            cut = f"{ytid}_{int(start_s):06d}"  # the usual 10-second download, read whole
            name, span = (cut, (0.0, None)) if cut in index else (ytid, (start_s, start_s + VGGSOUND_SECONDS))
        else:
            if len(row) < 4:
                raise UsageError(f"{where}: expected 4 columns (audio path,frames folder,count,label).")
            name, label, span = Path(row[0].strip()).stem, row[3].strip(), (0.0, None)
        found = index.get(name, [])
        if len(found) == 1:  # the vggsound layout's full video is read from the row's start
            videos.append(ListedFile(str(found[0]), name, label, *span))
        elif found:
            missing.append((name, f"{where}: {name} is the name of {len(found)} videos below {root} ({found[0]}, "
                                  f"{found[1]}{', ...' if len(found) > 2 else ''}); keep one."))
        else:
            wanted = f"{cut} (nor {ytid})" if layout == "vggsound" else name
            missing.append((cut if layout == "vggsound" else name, f"{where}: no video named {wanted} below {root}."))
    return videos, missing


def _generic_rows(rows: list[list[str]], source: Path, root: Path) -> tuple[list[ListedFile], list[tuple[str, str]]]:
    """The ``generic`` layout: a header row, then one video per row (paths below ``root``)."""
    header = [c.strip().lower() for c in rows[0]]
    column = next((header.index(n) for n in ("path", "file", "filename", "video") if n in header), None)
    if column is None:
        raise UsageError(f"{source}: the header has no 'path' column.")

    def get(row: list[str], name: str) -> str | None:
        """The row's value in column ``name``, or None where it is missing or empty."""
        index = header.index(name) if name in header else len(row)
        return row[index].strip() or None if index < len(row) else None

    videos, missing = [], []
    for number, row in enumerate(rows[1:], 2):
        path = root / row[column].strip()
        start, end = get(row, "start"), get(row, "end")
        start_s = _seconds(start, f"{source}:{number}") if start else 0.0
        end_s = _seconds(end, f"{source}:{number}") if end else None
        if end_s is not None and end_s <= start_s:
            raise UsageError(f"{source}:{number}: the end ({end_s:g} s) is not after the start ({start_s:g} s).")
        video = ListedFile(str(path), path.with_suffix("").name, get(row, "label"), start_s, end_s)
        (videos.append(video) if path.is_file() else missing.append((str(path), "no such file")))
    return videos, missing


def clip_spans(path: str, clip_seconds: float, min_seconds: float, start: float = 0.0,
               end: float | None = None) -> tuple[list[tuple[float, float]], str | None]:
    """Back-to-back clips of a video from ``start`` to ``end`` seconds (None: its end),
    within the time both its tracks cover, from its header: ``(spans, None)`` or ``([],
    reason)``. A part shorter than one clip gives one clip of its length if that is at
    least ``min_seconds``."""
    try:
        info = probe(path)
    except VideoError as error:
        return [], str(error)
    if not info.has_audio:
        return [], f"{path}: has no audio track."
    if not info.has_video:
        return [], f"{path}: has no video track."
    start = max(start, info.common_start)
    end = min(info.common_end, end) if end is not None else info.common_end
    length = end - start
    count = int(length / clip_seconds + 1e-6)
    if count == 0:
        if length < min_seconds:
            return [], f"{path}: {max(length, 0):.1f} s is shorter than --min-seconds {min_seconds:g}."
        return [(start, end)], None
    starts = [start + k * clip_seconds for k in range(count)]
    return [(first, first + clip_seconds) for first in starts], None
