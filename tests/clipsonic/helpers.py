"""Helpers of the CLIPSonic tests: one-source batches made in memory."""

import numpy as np
import torch
import torch.nn.functional as F

from clipcore import synthetic
from clipcore.shard_stream import MixBatch


def unit_vectors(count: int, dim: int = 32, seed: int = 0) -> torch.Tensor:
    """``[count, dim]`` random unit vectors (stand-ins for CLIP embeddings)."""
    return F.normalize(torch.randn(count, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def instrument_clips(name: str, count: int, samples: int, seed: int = 0) -> torch.Tensor:
    """``[count, samples]`` toy melodies of one instrument."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([synthetic.synthesize(name, samples / 16000, 16000, rng) for _ in range(count)]))


def one_source_batch(audio: torch.Tensor, embeddings: torch.Tensor, labels: list[str]) -> MixBatch:
    """A ``MixBatch`` with one source per clip, as ``ShardDataModule(num_sources=1)`` gives."""
    return MixBatch(
        mixture=audio,
        sources=audio[:, None],
        embeddings=embeddings[:, None],
        frames=None,
        labels=[[label] for label in labels],
        keys=[[f"test/{i}"] for i in range(len(labels))],
    )
