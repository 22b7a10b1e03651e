"""``separation.json``: which input, model, queries and settings made a folder of stems.

``clipsep separate`` writes one beside the stems of every input, so that months later a
sound designer can answer "which model and query made this stem?":

- ``input``: path, sha256, sample rate, channels, seconds;
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
from clipcore.files import atomic_write

if TYPE_CHECKING:
    from clipsep.separate import Separator
    from clipsep.stem_files import FileLevels

__all__ = ["RECORD_NAME", "sha256_file", "run_record", "write_record"]

RECORD_NAME = "separation.json"


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


def write_record(source: Path, outputs: dict[str, Path], levels: FileLevels, seconds: float,
                 run: dict[str, Any]) -> Path:
    """Write ``separation.json`` beside the stems of one input.

    Args:
        source: the input file.
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
            "path": str(source.resolve()),
            "sha256": sha256_file(source),
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
