"""Embedding tensors (CLIP's, a prior's, or given directly): the check every consumer makes
of embeddings it is handed, and the normalized mean of several."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["checked_embeddings", "mean_embedding"]


def checked_embeddings(embeddings: Any, width: int, name: str = "embeddings",
                       error: type[ValueError] = ValueError) -> torch.Tensor:
    """``embeddings`` as float32, refused unless it is a real ``[K, width]`` tensor of K >= 1
    finite rows.

    Args:
        embeddings: the tensor to check.
        width: the embedding width D its consumer reads.
        name: what the message calls it.
        error: the class of the error raised (the caller's own).

    Returns:
        float32 ``[K, D]`` on the tensor's device.

    Raises:
        ValueError: (``error``) naming ``name`` and its shape and type, or that it holds NaN
            or infinity.
    """
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2 or not len(embeddings) \
            or embeddings.shape[1] != width or embeddings.is_complex():
        found = (f"{list(embeddings.shape)} ({embeddings.dtype})" if isinstance(embeddings, torch.Tensor)
                 else type(embeddings).__name__)
        raise error(f"{name} must be a real [K, {width}] tensor with K >= 1, not {found}.")
    if not torch.isfinite(embeddings).all():
        raise error(f"{name} hold NaN or infinity.")
    return embeddings.float()


def mean_embedding(embeddings: torch.Tensor, dim: int = -2) -> torch.Tensor:
    """Average normalized embeddings along ``dim`` and renormalize.

    Args:
        embeddings: ``[..., F, D]`` (with the default ``dim``), e.g. per-frame embeddings.
        dim: the axis to average.

    Returns:
        ``[..., D]`` L2-normalized float32.
    """
    embeddings = F.normalize(embeddings.float(), dim=-1)
    return F.normalize(embeddings.mean(dim=dim), dim=-1)
