"""``separation.json``: which input, model, queries and settings made a folder of stems.

``clipsep separate`` writes one beside the stems of every input, so that months later a
sound designer can answer "which model and query made this stem?":

- ``input``: path, sha256, size in bytes, modification time (``mtime_ns``), sample rate,
  channels, seconds;
- ``queries``: ``{"text": ...}`` or ``{"image": path, "sha256": ...}`` per query stem;
- ``checkpoint``: path, sha256 of its weights file, and its own provenance;
- ``settings``: segment, overlap, binary, mask power, mono, templates, prior, gap, device, batch size and
  the output format;
- ``versions`` (Python and the main libraries) and ``seconds`` taken;
- ``stems``: per stem its file, peak and RMS level (dBFS) and share of the mixture's
  energy.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipcore.checkpoint import WEIGHTS_NAME, library_versions
from clipcore.files import atomic_write, file_identity

if TYPE_CHECKING:
    from clipsep.separate import Separator
    from clipsep.stem_files import FileLevels

__all__ = ["RECORD_NAME", "sha256_file", "run_record", "input_facts", "write_record", "recorded_elsewhere", "recorded_otherwise",
           "recorded_input", "recorded_stem_files"]

RECORD_NAME = "separation.json"

SAMPLES_UNCHANGED_BY = ("device", "batch_size")
"""Settings that do not change a stem's samples (beyond float rounding): a folder made with
others is still this run's."""
RECORD_DEFAULTS = {"mask_power": 1.0, "prior": None, "gap": None}
"""Settings of records written before these were recorded, as they then were."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_record(queries: list[tuple[str, str]], separator: Separator, checkpoint: str | Path,
               settings: dict[str, Any]) -> dict[str, Any]:
    """The facts shared by every input of one run; :func:`clipsep.batch.process_file` adds
    the device that did each input.

    Args:
        queries: ``(kind, value)`` per query stem: ``("text", "violin")`` or
            ``("image", "cello.jpg")``.
        separator: the separator of the run.
        checkpoint: where its model came from.
        settings: the run's other settings (overlap, batch size, output format, ...).
    """
    checkpoint = Path(checkpoint).resolve()
    weights = checkpoint / WEIGHTS_NAME if checkpoint.is_dir() else checkpoint
    return {
        "queries": [{"text": value} if kind == "text" else {"image": str(Path(value).resolve()),
                                                             "sha256": sha256_file(value)}
                    for kind, value in queries],
        "checkpoint": {
            "path": str(checkpoint),
            "weights_sha256": sha256_file(weights) if weights.is_file() else None,
            "provenance": separator.model.provenance or {},
        },
        "settings": {
            "segment_seconds": round(separator.segment_samples / separator.model.sample_rate, 4),
            "binary": separator.binary,
            "mask_power": separator.mask_power,
            "templates": list(separator.queries.templates),
            "prior": None,
            **settings,
        },
        "versions": library_versions(),
    }


def _level_db(value: float) -> float | None:
    return round(20 * math.log10(value), 2) if value > 0 else None


def input_facts(source: Path) -> dict[str, Any]:
    """What ``separation.json`` says of an input file before it is separated: path, size,
    modification time and sha256 (read in full)."""
    return {**file_identity(source), "sha256": sha256_file(source)}


def write_record(source: dict[str, Any], outputs: dict[str, Path], levels: FileLevels, seconds: float,
                 run: dict[str, Any]) -> Path:
    """Write ``separation.json`` beside the stems of one input.

    Args:
        source: :func:`input_facts` of the input file.
        outputs: stem name -> file written, in the order of ``levels``.
        levels: the mixture's and the stems' levels, summed while they were written.
        seconds: time the input took.
        run: :func:`run_record`.

    Returns:
        The record's path.
    """
    energy, samples = levels.mixture_energy, levels.channels * levels.frames
    record = {
        "input": {
            **source,
            "sample_rate": levels.sample_rate,
            "channels": levels.channels,
            "seconds": levels.frames / levels.sample_rate,
        },
        **run,
        "seconds_taken": round(seconds, 3),
        "stems": {
            name: {
                "file": path.name,
                "peak_dbfs": _level_db(peak),
                "rms_dbfs": _level_db(math.sqrt(stem_energy / samples)),
                "energy_share": round(stem_energy / energy, 4) if energy > 0 else None,
            }
            for (name, path), peak, stem_energy in zip(outputs.items(), levels.peaks, levels.energies, strict=True)
        },
    }
    folder = next(iter(outputs.values())).parent
    return atomic_write(folder / RECORD_NAME, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))


def recorded_elsewhere(folder: Path, source: Path) -> str | None:
    """Why ``folder``'s stems are not ``source``'s, or None if they are (or no record says).

    ``folder/separation.json`` names the input that made the folder's stems; another input
    of the same name (``a/take.wav`` after ``b/take.wav``), or this one changed since,
    must not be skipped as done, nor mixed into that folder.

    Returns:
        A sentence (which input the stems are of, and what to do), or None.
    """
    try:
        recorded = dict(_read_record(folder)["input"])
    except (KeyError, TypeError, ValueError):  # no record (or one this reader cannot use)
        return None
    identity = file_identity(source)
    made_by = {key: recorded[key] for key in identity if key in recorded}
    if made_by.get("path") != identity["path"]:
        return (f"{folder}/ holds the stems of {made_by.get('path')} (its {RECORD_NAME}), another input of the "
                "same name; separate this one into another folder with -o, or pass --overwrite to replace them.")
    if any(made_by[key] != identity[key] for key in made_by):
        return (f"{folder}/ holds the stems of an earlier version of this input (it changed since they were "
                "made); pass --overwrite to separate it again.")
    return None


def recorded_otherwise(folder: Path, run: dict[str, Any] | None, all_queries: bool) -> str | None:
    """Why ``folder``'s stems are not what ``run`` would make, or None if they are (or no
    record says, or ``run`` is None).

    They are when its record names the same checkpoint weights and settings (but for
    :data:`SAMPLES_UNCHANGED_BY`; a setting an older record lacks counts as its default,
    see :data:`RECORD_DEFAULTS`, or is not compared) and holds this run's queries; with
    ``all_queries`` (stems that depend on every query: the residual, the mixture less them
    all, and the noise heads' stems, which read their mean), the very same queries, in any
    order.

    Returns:
        A sentence (what differs, and what to do), or None.
    """
    record = _read_record(folder)
    try:
        made_by = {"checkpoint": record["checkpoint"]["weights_sha256"], **record["settings"]}
        queries = list(record["queries"])
    except (KeyError, TypeError):  # no record (or one this reader cannot use)
        return None
    if run is None:
        return None
    asked = {"checkpoint": run["checkpoint"]["weights_sha256"], **run["settings"]}
    made_by = {**RECORD_DEFAULTS, **made_by}
    for key in sorted((made_by.keys() & asked.keys()) - set(SAMPLES_UNCHANGED_BY)):
        if made_by.get(key) != asked.get(key):
            what = "checkpoint weights" if key == "checkpoint" else f"setting {key} ({made_by.get(key)!r}, now " \
                f"{asked.get(key)!r})"
            return f"{folder}/ holds stems made with other {what}; pass --overwrite to replace them, or separate " \
                "into another folder with -o."
    if (all_queries and sorted(map(_key, queries)) != sorted(map(_key, run["queries"]))) or any(
            query not in queries for query in run["queries"]):
        return (f"{folder}/ holds stems made with other queries ({_queries_said(queries)}, now "
                f"{_queries_said(run['queries'])}); pass --overwrite to replace them, or separate into another "
                "folder with -o.")
    return None


def _key(query: Any) -> str:
    return json.dumps(query, sort_keys=True)


def _queries_said(queries: list) -> str:
    return ", ".join(repr(query.get("text", query.get("image"))) if isinstance(query, dict) else repr(query)
                     for query in queries)


def recorded_input(folder: Path) -> str | None:
    """The input (resolved path) whose stems ``folder`` holds, by its record; None without one."""
    try:
        return str(_read_record(folder)["input"]["path"])
    except (KeyError, TypeError):
        return None


def recorded_stem_files(folder: Path) -> list[str]:
    """The names of the stem files ``folder/separation.json`` lists that are in ``folder``
    (none without a record, or with one this reader cannot use)."""
    try:
        names = [str(stem["file"]) for stem in _read_record(folder)["stems"].values()]
    except (KeyError, TypeError, AttributeError):
        return []
    return [name for name in names if Path(name).name == name and (folder / name).is_file()]


def _read_record(folder: Path) -> dict:
    """``folder/separation.json`` as read, or ``{}`` where there is none or it is not JSON."""
    try:
        return json.loads((folder / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return {}
