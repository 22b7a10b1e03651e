"""Mixtures per second delivered by ShardDataModule from toy shards.

Six cases: 0 and 2 workers, each with precomputed embeddings (``<encoder>.npy``) and
with JPEG frame decoding, and 0 workers with the shards held in memory (``in_memory``;
its first read of each shard falls inside the measured batches). Prints one JSON line.

    python benchmarks/loader_throughput.py [--clips 64] [--batches 40] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from clipcore import synthetic
from clipcore.datamodule import ShardDataModule
from clipcore.query import QueryEncoder


def measure(shards: str, encoder: str | None, workers: int, args: argparse.Namespace, in_memory: bool = False) -> float:
    """Mixtures per second over ``args.batches`` batches, after the first (worker start-up)."""
    data = ShardDataModule(
        train_shards=shards,
        num_sources=2,
        segment_samples=65535,
        batch_size=args.batch_size,
        num_workers=workers,
        encoder=encoder,
        query_frames=3,
        epoch_length=args.batches + 1,
        seed=0,
        in_memory=in_memory,
    )
    loader = iter(data.train_dataloader())
    next(loader)
    start = time.perf_counter()
    mixtures = sum(len(batch) for batch in loader)
    return mixtures / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    encoder = QueryEncoder.tiny()
    with tempfile.TemporaryDirectory() as root:
        synthetic.write_toy_shards(root, args.clips, seed=0, shard_size=16, encoder=encoder, duration=5.0)
        results = {
            f"{'embeddings' if name else 'frames'}_workers{workers}": round(measure(root, name, workers, args), 1)
            for name in (encoder.name, None)
            for workers in (0, 2)
        }
        for name in (encoder.name, None):
            results[f"{'embeddings' if name else 'frames'}_workers0_in_memory"] = round(
                measure(root, name, 0, args, in_memory=True), 1)
    print(json.dumps({
        "benchmark": "loader_throughput",
        "unit": "mixtures/s",
        "clips": args.clips,
        "batch_size": args.batch_size,
        "num_sources": 2,
        "segment_samples": 65535,
        "frame_size": 224,
        "cpus": os.cpu_count(),
        **results,
    }))


if __name__ == "__main__":
    main()
