"""Clips per second written by recipes/prepare_shards.py from 10-second 720p H.264 videos.

Four cases: 1 and 2 workers, each without and with CLIP image embeddings (a randomly
initialised ViT-B-32 from a local weights file, as ``ViT-B-32/openai=FILE`` loads the real
one, so the cost is the real model's). Each case is a whole run of the recipe as a user
types it, and the rate is clips written over its wall time, start-up included. Prints
one JSON line.

    python benchmarks/prepare_throughput.py [--videos 4] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.clipcore.realistic_video import write_realistic_video  # noqa: E402


def run(videos: Path, out: Path, workers: int, clip_model: str | None) -> tuple[float, int]:
    """Seconds the recipe took, and clips it wrote."""
    command = [sys.executable, str(ROOT / "recipes" / "prepare_shards.py"), str(videos), str(out),
               "--clip-seconds", "10", "--workers", str(workers)]
    if clip_model:
        command += ["--clip-model", clip_model]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    written = int(result.stdout.split("wrote ")[1].split(" clips")[0])
    return seconds, written


def random_vit_b32(folder: Path) -> str:
    """A ``ViT-B-32/openai=FILE`` spec whose file holds random weights of the real size."""
    import open_clip
    from safetensors.torch import save_file

    model = open_clip.create_model("ViT-B-32", pretrained=None)
    path = folder / "vit-b-32-random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return f"ViT-B-32/openai={path}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4, help="720p videos to cut (default: 4)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each (default: 30)")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        videos = root / "videos"
        videos.mkdir()
        for index in range(args.videos):
            write_realistic_video(videos / f"film{index}.mp4", args.seconds, args.seconds + 1.0, seed=index)
        clip_model = random_vit_b32(root)
        for model in (None, clip_model):
            for workers in (1, 2):
                key = f"{'clip' if model else 'no_clip'}_workers{workers}"
                seconds, written = run(videos, root / key, workers, model)
                results[f"{key}_clips_per_s"] = round(written / seconds, 3)
                results["clips"] = written
    print(json.dumps({
        "benchmark": "prepare_throughput",
        "unit": "clips/s (whole recipe run, start-up included)",
        "video": "1280x720 H.264 24000/1001 fps, AAC 48 kHz stereo",
        "clip_seconds": 10,
        "clip_model": "ViT-B-32 (random weights, real size)",
        "cpus": os.cpu_count(),
        **results,
    }))


if __name__ == "__main__":
    main()
