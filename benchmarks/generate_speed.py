"""CLIPSonic generation speed on this machine: seconds of compute per second of audio.

For the ``tiny`` and ``paper`` presets (random weights: speed does not depend on them),
every sampler and step count asked for, one clip of ``--duration`` seconds with
classifier-free guidance (two U-Net passes per step, batched), Griffin-Lim vocoder
included. Prints one JSON line.

    python benchmarks/generate_speed.py
    python benchmarks/generate_speed.py --presets tiny --steps 10 25 50 --duration 10
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from clipsonic.generate import SAMPLERS, Generator
from clipsonic.model import CLIPSonic


def _time(fn, repeats: int) -> float:
    """Best of ``repeats`` runs after a warm-up (the minimum is the least disturbed by
    other processes on a shared machine)."""
    fn()  # warm-up: allocations, scheduler tables
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper"], choices=["tiny", "paper"])
    parser.add_argument("--samplers", nargs="+", default=sorted(SAMPLERS), choices=sorted(SAMPLERS))
    parser.add_argument("--steps", nargs="+", type=int, default=[10, 25])
    parser.add_argument("--paper-steps", nargs="+", type=int, default=[10],
                        help="step counts for the paper preset (slow on a CPU)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of audio per clip")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per setting; the best counts")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    vocoder_seconds = None
    for preset in args.presets:
        model = CLIPSonic.tiny() if preset == "tiny" else CLIPSonic.paper()
        generator = Generator(model)
        condition = torch.nn.functional.normalize(torch.randn(1, model.embed_dim), dim=-1)
        if vocoder_seconds is None:
            mel = torch.zeros(1, 64, model.mel_config.frames(round(args.duration * 16000))) - 5
            vocoder_seconds = _time(lambda: generator.vocoder(mel), args.repeats)
        parameters = sum(p.numel() for p in model.parameters())
        for sampler in args.samplers:
            for steps in args.steps if preset == "tiny" else args.paper_steps:
                seconds = _time(lambda: generator.generate(embeddings=condition, steps=steps, sampler=sampler,
                                                           duration=args.duration), args.repeats)
                results.append({
                    "preset": preset, "parameters_m": round(parameters / 1e6, 1), "sampler": sampler, "steps": steps,
                    "seconds": round(seconds, 3), "seconds_per_audio_second": round(seconds / args.duration, 3),
                })
    print(json.dumps({
        "benchmark": "generate_speed", "device": "cpu", "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "duration_s": args.duration, "guidance": True,
        "vocoder": "griffinlim", "vocoder_seconds": round(vocoder_seconds, 3), "results": results,
    }))


if __name__ == "__main__":
    main()
