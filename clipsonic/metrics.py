"""Evaluating generated audio: Fréchet audio distance and query relevance in CLIP space.

**FAD** compares the distribution of audio embeddings of generated clips with that of
reference clips (Kilgour et al., 2019). The embedding model is pluggable: anything with a
``sample_rate`` attribute that maps ``[B, samples]`` waveforms to ``[B, K, D]`` (K
vectors per clip, e.g. one per window) works. :func:`load_embedding` takes ``"mel-stats"``
(built in: per-window mean and standard deviation of each log-mel row; needs no weights,
meant for tests and quick comparisons) or ``"package.module:factory"``, a function that
returns such a model; this is how VGGish, PANNs or CLAP are used when the user has their
weights (``factory(**kwargs)`` receives e.g. the weights path).

**Query relevance** lives in the CLIP space that conditions the model, which has no audio
tower: a generated clip is placed in CLIP space through its ``k`` nearest reference clips
in audio-embedding space (the mean of their CLIP image embeddings), and scored by the
cosine with the query's CLIP text embedding. With labelled references, the k-NN label vote
also gives a recognition accuracy.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipcore.audio import resample
from clipcore.spectral import MelConfig, MelSpectrogram

__all__ = [
    "AudioEmbedding",
    "MelStatistics",
    "load_embedding",
    "embed_audio",
    "GaussianStatistics",
    "gaussian_statistics",
    "frechet_distance",
    "nearest_references",
    "query_relevance",
    "knn_accuracy",
]


class AudioEmbedding(Protocol):
    """What FAD needs of an embedding model."""

    sample_rate: int

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        """``[B, samples]`` at ``sample_rate`` -> ``[B, K, D]``."""


class MelStatistics(nn.Module):
    """Built-in embedding: mean and standard deviation of each log-mel row per window.

    Args:
        window: window length in seconds (the clip's length when shorter).
        mel: overrides of :class:`~clipcore.spectral.MelConfig` fields.
    """

    def __init__(self, window: float = 0.5, mel: dict | None = None):
        super().__init__()
        self.mel = MelSpectrogram(MelConfig(**(mel or {})))
        self.sample_rate = self.mel.config.sample_rate
        self.window_frames = max(2, round(window * self.sample_rate / self.mel.config.hop_length))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """``[B, samples]`` -> ``[B, K, 2 * n_mels]`` (K windows, at least one)."""
        mel = self.mel(wave)  # [B, M, T]
        size = min(self.window_frames, mel.shape[-1])
        windows = mel.unfold(-1, size, size)  # [B, M, K, size]
        return torch.cat([windows.mean(-1), windows.std(-1)], dim=1).transpose(1, 2)


def load_embedding(spec: str = "mel-stats", **kwargs: Any) -> AudioEmbedding:
    """An embedding model: ``"mel-stats"`` or ``"package.module:factory"`` (``factory(**kwargs)``).

    Raises:
        ValueError: a spec that names nothing importable, or a result without ``sample_rate``.
    """
    if spec == "mel-stats":
        return MelStatistics(**kwargs)
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"embedding {spec!r}: use 'mel-stats' or 'package.module:factory'.")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"embedding {spec!r} cannot be imported ({error}).") from None
    model = factory(**kwargs)
    if not hasattr(model, "sample_rate") or not callable(model):
        raise ValueError(f"embedding {spec!r}: the factory must return a callable with a sample_rate.")
    return model


@torch.no_grad()
def embed_audio(model: AudioEmbedding, wave: torch.Tensor, sample_rate: int, batch_size: int = 32) -> torch.Tensor:
    """``[N, samples]`` at ``sample_rate`` -> ``[N, K, D]`` float64 embeddings (on the CPU)."""
    out = []
    for start in range(0, wave.shape[0], batch_size):
        chunk = resample(wave[start : start + batch_size].float(), sample_rate, model.sample_rate)
        out.append(model(chunk).double().cpu())
    return torch.cat(out)


GaussianStatistics = tuple[np.ndarray, np.ndarray]
"""A set of vectors' mean ``[D]`` and covariance ``[D, D]`` (float64)."""


def gaussian_statistics(vectors: torch.Tensor | np.ndarray) -> GaussianStatistics:
    """The mean and covariance of vectors ``[N, D]`` (at least 2 of them)."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need a set of at least 2 vectors [N, D], got shape {x.shape}.")
    return x.mean(0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_distance(a: torch.Tensor | np.ndarray | GaussianStatistics,
                     b: torch.Tensor | np.ndarray | GaussianStatistics) -> float:
    """Fréchet distance between Gaussians fitted to two sets of vectors ``[N, D]``, ``[M, D]``:
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``. Either set may be given
    as its :func:`gaussian_statistics` instead (a reference measured against many sets, once)."""
    (mu_a, cov_a), (mu_b, cov_b) = (x if isinstance(x, tuple) else gaussian_statistics(x) for x in (a, b))
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"need two sets of vectors of one size, got {mu_a.shape[0]} and {mu_b.shape[0]} dimensions.")
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sqrt(np.clip(middle, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def nearest_references(generated: torch.Tensor, references: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Indices ``[G, k]`` of the ``k`` references nearest (Euclidean) to each generated clip.

    Args:
        generated: ``[G, D]`` per-clip audio embeddings; references: ``[R, D]``.
    """
    k = min(k, references.shape[0])
    return torch.cdist(generated.double(), references.double()).topk(k, largest=False).indices


def query_relevance(queries: torch.Tensor, neighbours: torch.Tensor, reference_clip: torch.Tensor) -> torch.Tensor:
    """``[G]`` cosine between each query's CLIP embedding and the mean CLIP image embedding
    of its generated clip's nearest references.

    Args:
        queries: ``[G, C]`` CLIP embeddings of the queries (one row per generated clip).
        neighbours: ``[G, k]`` from :func:`nearest_references`.
        reference_clip: ``[R, C]`` CLIP image embeddings of the references.
    """
    placed = F.normalize(F.normalize(reference_clip.double(), dim=-1)[neighbours].mean(1), dim=-1)
    return (F.normalize(queries.double(), dim=-1) * placed).sum(-1)


def knn_accuracy(labels: list[str], neighbours: torch.Tensor, reference_labels: list[str]) -> float:
    """Fraction of generated clips whose nearest references' majority label is the query's."""
    hits = 0
    for label, row in zip(labels, neighbours.tolist()):
        votes = [reference_labels[i] for i in row]
        hits += max(votes, key=votes.count) == label  # ties go to the nearer neighbour
    return hits / max(1, len(labels))
