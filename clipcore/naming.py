"""Safe file names made from user text (queries, prompts, input names).

Every name returned here is one path component: it holds no path separator, is never
``.`` or ``..`` nor contains ``..``, has no control characters, is bounded in length, and
is never empty. :func:`unique_names` makes a list of names distinct (compared without
regard to case, as on macOS and Windows file systems), so that different texts never
write to one file.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Iterable, Mapping, Sequence

__all__ = ["slugify", "safe_filename", "unique_names", "short_hash"]

MAX_LENGTH = 80
"""Default bound on a name's length in characters (its UTF-8 bytes stay below 255)."""

_WINDOWS_RESERVED = {"con", "prn", "aux", "nul"} | {f"{p}{i}" for p in ("com", "lpt") for i in range(1, 10)}
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')


def short_hash(text: str, length: int = 8) -> str:
    """A stable hexadecimal digest of ``text`` (SHA-1 prefix)."""
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def _finish(name: str, text: str, max_length: int, fallback: str) -> str:
    """Collapse dots, trim, bound the length (adding a hash when cut) and avoid empty or
    reserved names."""
    name = re.sub(r"\.{2,}", ".", name).strip(" .-_")
    if not name:
        return f"{fallback}-{short_hash(text)}"
    if len(name) > max_length or len(name.encode("utf-8")) > 3 * max_length:
        digest = short_hash(text)
        keep = max(1, max_length - len(digest) - 1)
        while len(name[:keep].encode("utf-8")) > 3 * max_length:
            keep -= 1
        name = f"{name[:keep].rstrip(' .-_')}-{digest}"
    if name.split(".")[0].lower() in _WINDOWS_RESERVED:
        name = f"{name}_"
    return name


def slugify(text: str, max_length: int = MAX_LENGTH, fallback: str = "query") -> str:
    """A lowercase ASCII slug: ``"Playing the Violin!"`` -> ``"playing-the-violin"``.

    Letters are reduced to ASCII (accents dropped), every run of other characters becomes
    one ``-``. A text with nothing left (``"???"``, ``"小提琴"``) becomes
    ``"<fallback>-<hash>"``; a text longer than ``max_length`` is cut and given a hash of
    the whole text, so long texts that share a beginning stay distinct.
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    name = re.sub(r"[^a-z0-9.]+", "-", ascii_text.lower())
    return _finish(name, text, max_length, fallback)


def safe_filename(name: str, max_length: int = MAX_LENGTH, fallback: str = "file") -> str:
    """``name`` made safe as one path component, keeping its letters, case and spaces.

    Path separators, control characters and characters Windows forbids become ``_``;
    leading and trailing dots and spaces are removed; ``..`` runs collapse to ``.``.
    """
    cleaned = _UNSAFE.sub("_", unicodedata.normalize("NFC", name))
    return _finish(cleaned, name, max_length, fallback)


def unique_names(
    names: Sequence[str], keys: Sequence[str] | None = None, reserved: Iterable[str] = (),
    holders: Mapping[str, str] | None = None,
) -> list[str]:
    """Make names distinct without regard to case.

    Every name shared by different keys, or equal to a reserved name, gets ``-<hash of its
    key>`` appended (all members of a clash, so the result does not depend on the order),
    but the member that already holds the name (``holders``) keeps it. Entries with equal
    keys are the same thing and keep the same name.

    Args:
        names: candidate names (already safe, see :func:`slugify`).
        keys: what each name stands for (default: the names themselves).
        reserved: names that must not be produced (for example ``"residual"``).
        holders: name (lower case) -> the key that holds it already (an earlier run's
            folder of that name, say), which keeps it whatever else comes.

    Returns:
        One name per entry, distinct for distinct keys.
    """
    keys = list(names) if keys is None else list(keys)
    if len(keys) != len(names):
        raise ValueError(f"unique_names: {len(names)} names but {len(keys)} keys.")
    taken = {name.lower() for name in reserved}
    owners: dict[str, set[str]] = {}
    for name, key in zip(names, keys):
        owners.setdefault(name.lower(), set()).add(key)
    result = []
    holders = holders or {}
    for name, key in zip(names, keys):
        held = holders.get(name.lower()) == key
        if name.lower() in taken or (len(owners[name.lower()]) > 1 and not held):
            name = f"{name}-{short_hash(key)}"
        result.append(name)
    if len({name.lower() for name in result}) < len(set(keys)):
        # A suffixed name met another entry's plain name: fall back to hashing everything.
        result = [f"{name}-{short_hash(key)}" for name, key in zip(names, keys)]
    return result
