"""Small file-system helpers shared across the project."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from clipcore.errors import ClipAudioError

__all__ = ["atomic_write", "ImageError", "load_image"]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = _read_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Write a file atomically.

    ``write(tmp_path)`` fills a temporary file in the target folder, which is then renamed
    over ``path``. If ``write`` raises (or the process is interrupted), the temporary file
    is removed and nothing appears under ``path``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(handle)
    try:
        write(Path(tmp))
        # mkstemp creates the file private (0600); give it the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file.")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageError(f"{path}: cannot be read as an image ({type(error).__name__}).") from None
