"""Separator speed and memory: the paper-size CLIPSep on CPU.

Prints one JSON line:
- ``rtf_1q``: seconds of compute per second of a 60 s mixture, one text query;
- ``rtf_4q_one_call``: four queries in one call (the U-Net runs once per segment);
- ``rtf_4q_four_calls``: four single-query calls;
- ``peak_mb_1min`` / ``peak_mb_10min``: peak resident memory of a fresh process that
  separates a 1-minute / 10-minute mixture with one query (it includes the Python, torch
  and model baseline, the same in both; the difference is what grows with the input);
- ``peak_mb_growth``: their difference.
- ``peak_mb_1min_stereo48k`` / ``peak_mb_30min_stereo48k``: peak resident memory of a
  fresh process running what sound designers run, ``clipsep separate`` with four queries
  and 24-bit output, on a 1-minute / 30-minute stereo 48 kHz file (streaming: read,
  resampled, separated and written block by block); ``peak_mb_growth_stereo48k``: their
  difference; ``rtf_30min_stereo48k``: that command's wall time per second of audio.

Targets: ``rtf_4q_one_call <= 1.5 * rtf_1q``; ``peak_mb_growth <= 200``;
``peak_mb_growth_stereo48k <= 150`` and ``peak_mb_30min_stereo48k < 1500``.

The mixtures are 16 kHz mono (the model's rate, so no resampling), random-weight models
(no weights can be downloaded here; speed does not depend on the weights); the query
encoder is a small CLIP with 512-d embeddings (ViT-B/32's size), whose cost is negligible
next to the U-Net's.

Usage: ``python benchmarks/separate_speed.py [--seconds 60] [--long-seconds 600]
[--stereo-long-seconds 1800]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from clipcore.query import QueryEncoder
from clipsep.model import CLIPSep
from clipsep.separate import Separator

RATE = 16000
STEREO_RATE = 48000
QUERIES = ["playing violin", "playing cello", "dog barking", "engine running"]


def paper_separator() -> Separator:
    return Separator(CLIPSep.paper(), QueryEncoder.tiny(embed_dim=512))


def _mixture(seconds: float) -> torch.Tensor:
    return 0.1 * torch.randn(1, int(seconds * RATE), generator=torch.Generator().manual_seed(0))


def peak_mib(process: int | str = "self") -> float:
    """The peak resident memory in MiB of a process (its pid; by default this one):
    ``VmHWM``, the high-water mark of its own address space. (``ru_maxrss`` would not do: a
    child started by ``subprocess`` inherits the parent's resident size at the fork as its
    floor, which hid every peak below the parent's 1.4 GB.)"""
    status = Path(f"/proc/{process}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_speed(seconds: float) -> dict[str, float]:
    separator = paper_separator()
    wave = _mixture(seconds)
    separator.separate(wave[:, : 5 * RATE], RATE, QUERIES)  # warm-up
    one = _timed(lambda: separator.separate(wave, RATE, QUERIES[:1]))
    joint = _timed(lambda: separator.separate(wave, RATE, QUERIES))
    four = sum(_timed(lambda q=q: separator.separate(wave, RATE, [q])) for q in QUERIES)
    return {
        "rtf_1q": round(one / seconds, 4),
        "rtf_4q_one_call": round(joint / seconds, 4),
        "rtf_4q_four_calls": round(four / seconds, 4),
    }


def peak_mb(seconds: float) -> float:
    """Peak RSS (MB) of a fresh process separating ``seconds`` of audio with one query."""
    command = [sys.executable, __file__, "--peak-of", str(seconds)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return round(float(out.strip().splitlines()[-1]), 1)


def _peak_child(seconds: float) -> None:
    separator, wave = paper_separator(), _mixture(seconds)
    result = separator.separate(wave, RATE, QUERIES[:1])
    assert result.stems.shape[-1] == wave.shape[-1]
    print(peak_mib())


def stereo_file(path: Path, seconds: float) -> None:
    """A stereo 48 kHz 24-bit noise file, written a minute at a time."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(str(path), "w", STEREO_RATE, 2, subtype="PCM_24", format="WAV") as out:
        left = int(seconds * STEREO_RATE)
        while left:
            block = min(left, 60 * STEREO_RATE)
            out.write((0.1 * rng.standard_normal((block, 2))).astype(np.float32))
            left -= block


def peak_mb_stereo(seconds: float, checkpoint: Path, folder: Path) -> tuple[float, float]:
    """Peak RSS (MB) and wall seconds of a fresh process running ``clipsep separate`` with
    four queries and 24-bit output on ``seconds`` of stereo 48 kHz."""
    source = folder / f"mix-{seconds:g}s.wav"
    stereo_file(source, seconds)
    command = [sys.executable, __file__, "--stereo-peak-of", str(source), str(checkpoint), str(folder / "out")]
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - start
    for file in sorted((folder / "out").rglob("*"), reverse=True):
        file.unlink() if file.is_file() else file.rmdir()
    source.unlink()
    return round(float(out.strip().splitlines()[-1]), 1), wall


def _stereo_child(source: str, checkpoint: str, out: str) -> None:
    from clipsep.cli import main as clipsep_main

    queries = [arg for query in QUERIES for arg in ("-q", query)]
    status = clipsep_main(["separate", "--checkpoint", checkpoint, *queries, "--bit-depth", "24", "--device", "cpu",
                           "-o", out, source])
    assert status == 0 and len(list(Path(out).rglob("*.wav"))) == len(QUERIES)
    print(peak_mib())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="mixture length for the speed figures")
    parser.add_argument("--long-seconds", type=float, default=600.0, help="the long input of the memory figure")
    parser.add_argument("--stereo-long-seconds", type=float, default=1800.0,
                        help="the long stereo 48 kHz input of the streaming memory figure")
    parser.add_argument("--peak-of", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--stereo-peak-of", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_of is not None:
        return _peak_child(args.peak_of)
    if args.stereo_peak_of is not None:
        return _stereo_child(*args.stereo_peak_of)
    result = {
        **measure_speed(args.seconds),
        "peak_mb_1min": peak_mb(60.0),
        "peak_mb_10min": peak_mb(args.long_seconds),
    }
    result["peak_mb_growth"] = round(result["peak_mb_10min"] - result["peak_mb_1min"], 1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paper_separator().save_pretrained(folder / "ckpt")
        result["peak_mb_1min_stereo48k"], _ = peak_mb_stereo(60.0, folder / "ckpt", folder)
        result["peak_mb_30min_stereo48k"], wall = peak_mb_stereo(args.stereo_long_seconds, folder / "ckpt", folder)
    result["peak_mb_growth_stereo48k"] = round(result["peak_mb_30min_stereo48k"] - result["peak_mb_1min_stereo48k"], 1)
    result["rtf_30min_stereo48k"] = round(wall / args.stereo_long_seconds, 4)
    result.update(
        speed_ratio_4q=round(result["rtf_4q_one_call"] / result["rtf_1q"], 3),
        input="16 kHz mono (peak_mb_*_stereo48k: stereo 48 kHz, 4 queries, 24-bit, clipsep separate)",
        model="CLIPSep.paper (30.3 M)", device="cpu",
        threads=torch.get_num_threads(), segment_samples=65535, overlap=0.25, batch_size=4,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
