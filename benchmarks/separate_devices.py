"""``clipsep separate --devices N`` on CPU: wall time of a folder with 1 and N processes.

Prints one JSON line: ``files``, ``audio_seconds``, ``cpus``, and per process count
``wall_s_<n>`` (the whole command: discovery, loading, worker start-up, separation,
writing) with ``speedup_<n>`` over one process.

The paper-size CLIPSep with random weights (speed does not depend on the weights) and a
small CLIP with 512-d embeddings; 16 kHz mono files of ``--seconds`` each. On CPUs a
single process already uses every core through torch's threads; N processes split the
threads among them, so the gain comes from overlapping file I/O, resampling and the
parts of the network that do not parallelise, and is bounded by the cores. On GPUs each
worker has its own device and the gain is near N.

Usage: ``python benchmarks/separate_devices.py [--files 8] [--seconds 30] [--devices 2]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from clipcore.audio import save_audio
from clipcore.query import QueryEncoder
from clipsep.cli import main as clipsep_main
from clipsep.model import CLIPSep
from clipsep.separate import Separator

RATE = 16000


def _separate(checkpoint: Path, inputs: Path, out: Path, devices: int) -> float:
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        status = clipsep_main(["separate", "--checkpoint", str(checkpoint), "-q", "playing violin", "--device", "cpu",
                               "--devices", str(devices), "-o", str(out), str(inputs)])
    if status != 0:
        raise SystemExit(f"separate_devices: clipsep separate --devices {devices} failed")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--devices", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        torch.manual_seed(0)
        Separator(CLIPSep.paper(), QueryEncoder.tiny(embed_dim=512)).save_pretrained(root / "model")
        for index in range(args.files):
            save_audio(root / "in" / f"mix{index}.wav", torch.randn(1, int(args.seconds * RATE)) * 0.1, RATE)
        result = {"files": args.files, "audio_seconds": args.files * args.seconds, "cpus": os.cpu_count()}
        for devices in sorted({1, args.devices}):
            result[f"wall_s_{devices}"] = round(_separate(root / "model", root / "in", root / f"out{devices}", devices), 2)
        for devices in sorted({1, args.devices}):
            result[f"speedup_{devices}"] = round(result["wall_s_1"] / result[f"wall_s_{devices}"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
