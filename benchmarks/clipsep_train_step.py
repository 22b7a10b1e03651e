"""CLIPSep training-step speed on this machine: the paper network, CLIPSep-NIT loss.

Prints one JSON line: ``ms_per_mixture_train`` (forward, noise-invariant loss, backward
and Adam step, per mixture of a batch of ``--batch`` mixtures of 65,535 samples, 2
sources), ``ms_per_mixture_val`` (forward, loss, binary-mask separation and BSS-Eval of
both sources), the batch size, the thread count and the parameter count, and
``cpu_ms_per_mixture_train`` (process CPU time of a training step, summed over threads)
with the load average, since wall times on a shared machine depend on its load. Random
weights and random audio (speed does not depend on them).

``--freeze input_norm,down`` times a fine-tuning step with the U-Net encoder frozen
(``model.freeze`` of the fine-tuning recipe).

Usage: ``python benchmarks/clipsep_train_step.py [--batch 4] [--steps 3] [--preset paper] [--freeze PARTS]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from clipcore.shard_stream import MixBatch
from clipsep.metrics import separation_scores
from clipsep.system import CLIPSepSystem


def _batch(size: int, dim: int, generator: torch.Generator) -> MixBatch:
    sources = 0.1 * torch.randn(size, 2, 65535, generator=generator)
    embeddings = F.normalize(torch.randn(size, 2, dim, generator=generator), dim=-1)
    return MixBatch(sources.sum(1), sources, embeddings, None, [[None, None]] * size, [["a", "b"]] * size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--preset", choices=["paper", "tiny"], default="paper")
    parser.add_argument("--freeze", default="", help="comma-separated parts kept fixed (model.freeze)")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    system = CLIPSepSystem(preset=args.preset, freeze=[part for part in args.freeze.split(",") if part])
    batch = _batch(args.batch, system.model.query_dim, generator)
    optimizer = system.configure_optimizers()["optimizer"]

    def train_step() -> None:
        loss = system.loss_terms(system.outputs(batch))["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(system.model.parameters(), 1.0)
        optimizer.step()

    def val_step() -> None:
        with torch.no_grad():
            out = system.outputs(batch)
            system.loss_terms(out)
            estimates = system.separate(out, 65535)
        mixture = batch.mixture[:, None].expand_as(batch.sources)
        separation_scores(batch.sources.flatten(0, 1), (mixture - batch.sources).flatten(0, 1),
                          estimates.flatten(0, 1), mixture.flatten(0, 1))

    timings, cpu = {}, {}
    for name, step, mode in (("train", train_step, True), ("val", val_step, False)):
        system.train(mode)
        step()  # warm-up
        times, cpu_times = [], []
        for _ in range(args.steps):
            start, cpu_start = time.perf_counter(), time.process_time()
            step()
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        timings[name] = float(np.median(times)) * 1000 / args.batch
        cpu[name] = float(np.median(cpu_times)) * 1000 / args.batch
    print(json.dumps({
        "benchmark": "clipsep_train_step", "preset": args.preset, "batch": args.batch, "freeze": args.freeze,
        "threads": torch.get_num_threads(), "parameters": sum(p.numel() for p in system.model.parameters()),
        "ms_per_mixture_train": round(timings["train"], 1), "ms_per_mixture_val": round(timings["val"], 1),
        "cpu_ms_per_mixture_train": round(cpu["train"], 1), "load_average": round(os.getloadavg()[0], 1),
    }))


if __name__ == "__main__":
    main()
