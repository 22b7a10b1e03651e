"""Small file-system helpers shared across the project."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from clipcore.errors import ClipAudioError, UsageError

__all__ = ["atomic_write", "put_in_place", "hidden_temporary", "interrupts_held", "remove_files", "ImageError",
           "load_image", "ListedFile", "files_below", "read_csv_rows", "check_output_folder", "check_output_file",
           "file_identity", "remove_empty_folders", "check_not_an_input", "write_json"]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = _read_umask()


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them.

    For the few statements that create a file and record it (a temporary file's name, a
    "committed" flag): an interruption between the two would leave a file that no cleanup
    knows of. A signal that arrives in the block reaches its handler (raising
    KeyboardInterrupt, say) as the block ends. Outside the main thread, where Python runs
    no signal handler, or where a handler was not installed from Python (and could not be
    put back), nothing is changed.
    """
    signals = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or any(
            signal.getsignal(signum) is None for signum in signals):
        yield
        return
    caught: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: caught.append(signum)) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if caught:
            signal.raise_signal(caught[0])


def remove_files(paths: Iterable[str | os.PathLike]) -> None:
    """Remove the files of ``paths`` that exist, with interrupts held (a second Ctrl-C does
    not cut the cleanup short): the outputs of a step that failed or was interrupted."""
    with interrupts_held():
        for path in paths:
            Path(path).unlink(missing_ok=True)


def hidden_temporary(path: Path, suffix: str = ".part") -> Path:
    """Create an empty hidden file beside ``path`` (``.<name>.<random><suffix>``), for
    writing ``path`` through. Call it with interrupts held (:func:`interrupts_held`) and
    record the result in the same block, so that a cleanup always knows of the file."""
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    return Path(tmp)


def put_in_place(tmp: Path, path: Path) -> None:
    """Rename a finished :func:`hidden_temporary` over ``path``, with the mode a plain
    ``open()`` would have given it (mkstemp creates files private, 0600)."""
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object],
                 replaced: Callable[[], object] | None = None) -> Path:
    """Write a file atomically.

    ``write(tmp_path)`` fills a temporary file in the target folder, which is then renamed
    over ``path``. If ``write`` raises (or the process is interrupted), the temporary file
    is removed and nothing appears under ``path``.

    Args:
        path: the target file; its folder is created.
        write: fills the temporary file it is given.
        replaced: called right after the rename, with interrupts held (see
            :func:`interrupts_held`), so that a caller's record of the new file cannot
            miss it.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        UsageError: ``path`` is a folder, or its folder cannot be made or written
            (:func:`check_output_file`).
    """
    path = Path(path)
    check_output_file(path, option=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        with interrupts_held():
            tmp = hidden_temporary(path)
        write(tmp)
        with interrupts_held():
            put_in_place(tmp, path)
            if replaced is not None:
                replaced()
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    return path


class ImageError(ClipAudioError):
    """A missing or unreadable image file, described in one sentence."""


def load_image(path: str | os.PathLike):
    """Open an image file (an image query, say) as an RGB PIL image.

    Raises:
        ImageError: a missing or unreadable image file.
    """
    from PIL import Image, UnidentifiedImageError
    from PIL.Image import DecompressionBombError

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file.")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except DecompressionBombError:
        raise ImageError(f"{path}: is too large an image to read safely (more than {Image.MAX_IMAGE_PIXELS * 2} "
                         "pixels).") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageError(f"{path}: cannot be read as an image ({type(error).__name__}).") from None


@dataclass(frozen=True)
class ListedFile:
    """One file of a collection (a video list, a sound library): where it is, its id, its
    label, and the part to use (``start`` to ``end`` seconds; ``end`` None: to the end)."""

    path: str
    file_id: str
    label: str | None = None
    start: float = 0.0
    end: float | None = None


def files_below(root: Path, extensions: Sequence[str]) -> list[Path]:
    """The files below ``root`` (recursively, sorted) whose suffix, in any case, is one of
    ``extensions`` (``".wav"``, ...)."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in extensions and p.is_file())


def read_csv_rows(path: Path) -> list[list[str]]:
    """The rows of a UTF-8 CSV file that hold something (blank rows left out).

    Raises:
        UsageError: the file cannot be read as CSV (one sentence naming it).
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: Excel's "CSV UTF-8" starts with a BOM
            return [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UsageError(f"{path}: cannot be read as CSV ({error}).") from None


def check_output_folder(folder: str | os.PathLike, option: str | None = "-o") -> None:
    """Refuse an output folder that cannot be made or written, before any work is done
    (nothing is created here). ``option``: the command-line option that names it, put
    before it in the message.

    Raises:
        UsageError: ``folder`` is a file, lies below a file, or is in a folder this process
            cannot write (a read-only file system, say).
    """
    named = f"{option} {folder}" if option else str(folder)
    if not str(folder):  # an unset shell variable, say: never the current folder by accident
        raise UsageError(f"{option or 'the output folder'}: the path is empty.")
    path = Path(folder).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies below the file {existing}"
        raise UsageError(f"{named}: {where}, not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{named}: cannot write in {existing}.")


def check_output_file(path: str | os.PathLike, option: str | None = "-o") -> None:
    """Refuse an output file that cannot be written, before any work is done (nothing is
    created here). ``option``: the command-line option that names it, put before it (or
    before its folder) in the message.

    Raises:
        UsageError: ``path`` is empty or a folder, or its folder cannot be made or
            written (:func:`check_output_folder`).
    """
    if not str(path):  # an unset shell variable, say
        raise UsageError(f"{option or 'the output file'}: the path is empty.")
    if Path(path).is_dir():
        raise UsageError(f"{f'{option} {path}' if option else path}: is a folder; a file cannot be written there.")
    check_output_folder(Path(path).parent, option)


def check_not_an_input(output: str | os.PathLike, inputs: dict[str, str | os.PathLike | None]) -> None:
    """Refuse an output that is one of the command's inputs (``option -> path``), or lies in
    an input that is a folder (a checkpoint, a data root).

    Raises:
        UsageError: naming the output and the option that reads it.
    """
    target = Path(output).resolve()
    for option, path in inputs.items():
        if path is None:
            continue
        source = Path(path).resolve()
        if source == target:
            raise UsageError(f"{output}: is the input of {option}; writing it there would destroy it.")
        if source.is_dir() and target.is_relative_to(source):
            raise UsageError(f"{output}: lies in {path}, the input of {option}; write it outside it.")


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """What tells a file from another, or from an earlier version of itself, cheaply: its
    resolved ``path``, size in ``bytes`` and modification time ``mtime_ns``."""
    stat = os.stat(path)
    return {"path": str(Path(path).resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def remove_empty_folders(folder: str | os.PathLike) -> None:
    """Remove ``folder`` and the folders below it, as long as no file is there (a failed
    run's output folders, say); folders that hold a file stay, and so do their parents."""
    folder = Path(folder)
    for below in sorted((path for path in folder.rglob("*") if path.is_dir()), key=lambda p: len(p.parts),
                        reverse=True):
        _remove_folder_if_empty(below)
    _remove_folder_if_empty(folder)


def _remove_folder_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty, or gone
        pass


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value


def write_json(path: str | os.PathLike, content: Any, indent: int = 2) -> Path:
    """Write ``content`` as standard JSON, atomically: NaN and infinity (an interval of one
    value, a score of silence) become ``null``, which every JSON reader takes."""
    text = json.dumps(_finite_or_none(content), indent=indent, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))
