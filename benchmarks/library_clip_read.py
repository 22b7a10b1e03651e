"""Cost of one clip of a long take in a labelled sound library (``prepare_shards.py --audio``).

Writes a stereo 44.1 kHz 16-bit take (4 minutes by default), then reads one 10-second clip
from its middle at 16 kHz with :func:`clipcore.sound_library.read_span`, the call each
clip job of the recipe makes, in a fresh process. Prints one JSON line: ``seconds_per_clip``
(best of 3), ``peak_mb`` (the process's peak resident memory) and ``peak_mb_over_imports``
(that less its peak after the imports).

Target: a clip costs what the clip does, not what the take does: ``seconds_per_clip`` and
``peak_mb_over_imports`` about the same for a 4- and a 40-minute take.

    python benchmarks/library_clip_read.py [--minutes 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]

READ = """
import json, resource, sys, time
from clipcore.sound_library import read_span
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
path, middle = sys.argv[1], float(sys.argv[2])
best = float("inf")
for _ in range(3):
    start = time.perf_counter()
    clip = read_span(path, middle, middle + 10.0, 16000)
    best = min(best, time.perf_counter() - start)
assert not isinstance(clip, str) and len(clip) == 160000, clip
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds_per_clip": round(best, 4), "peak_mb": round(peak / 1024, 1),
                  "peak_mb_over_imports": round((peak - before) / 1024, 1)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=4.0)
    args = parser.parse_args()
    rate = 44100
    with tempfile.TemporaryDirectory() as folder:
        take = Path(folder) / "take.wav"
        rng = np.random.default_rng(0)
        # Written a minute at a time: a child process's peak memory starts from its parent's.
        with sf.SoundFile(take, "w", rate, 2, subtype="PCM_16") as handle:
            for first in range(0, int(args.minutes * 60 * rate), 60 * rate):
                frames = min(60 * rate, int(args.minutes * 60 * rate) - first)
                handle.write(rng.uniform(-0.5, 0.5, size=(frames, 2)).astype(np.float32))
        result = subprocess.run([sys.executable, "-c", READ, str(take), str(args.minutes * 30)], cwd=ROOT,
                                capture_output=True, text=True, check=True)
    print(json.dumps({"benchmark": "library_clip_read", "take_minutes": args.minutes,
                      **json.loads(result.stdout.splitlines()[-1])}))


if __name__ == "__main__":
    main()
