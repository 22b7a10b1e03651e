"""Training objectives of CLIPSep and CLIPSep-NIT (as in the official release).

All masks live on the 256 log-frequency rows. With ``N`` sources in a mixture:

- targets: binary masks ``mag_source > 0.5 * mag_mix`` after warping both to log rows;
- weight: ``clamp(log1p(mag_mix), 1e-3, 10)``, shared by the sources;
- plain CLIPSep: the weighted binary cross-entropy of ``sigmoid(q_i)`` against target i,
  averaged over sources;
- noise-invariant training with ``M >= N`` noise heads: source i is explained by
  ``min(1, sigmoid(q_i) + sigmoid(n_{pi(i)}))`` for an assignment ``pi`` of distinct heads
  to sources; each mixture takes the assignment of lowest loss (permutation invariance).
  Two optional regularisers, each a weight and a threshold, as in the official code:
  the *margin* term ``relu(L(q_i + n_j) - L(n_j) + margin)`` added to an assignment's
  loss (the noise head alone must not explain the source as well as both together), and
  the *activation* term ``relu(mean(sum_j sigmoid(n_j)) - threshold)`` over the batch
  (the published CLIPSep-NIT: weight 0.1, threshold 0.25).
- permutation-invariant training (the paper's PIT baseline, no query): the N output
  masks are matched to the N targets by the permutation of lowest plain loss, per mixture.

Cross-entropies are PyTorch's ``binary_cross_entropy`` on probabilities, as in the
official code (log terms clamped at -100), run in float32 outside autocast.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import torch
import torch.nn.functional as F

from clipcore.spectral import warp_to_log
from clipsep.model import MAG_EPS

__all__ = [
    "separation_targets",
    "weighted_bce",
    "assignments",
    "mask_loss",
    "noise_invariant_loss",
    "noise_activation_penalty",
    "best_permutation",
]


def separation_targets(mag_mix: torch.Tensor, mag_sources: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary target masks and loss weights on the log-frequency rows.

    Args:
        mag_mix: ``[B, 1, 513, T]`` mixture magnitude.
        mag_sources: ``[B, N, 513, T]`` source magnitudes.

    Returns:
        ``(targets [B, N, 256, T] in {0, 1}, weight [B, 1, 256, T])``.
    """
    mix = warp_to_log((mag_mix + MAG_EPS).float())
    sources = warp_to_log(mag_sources.float())
    targets = (sources > 0.5 * mix).float()
    weight = torch.clamp(torch.log1p(mix), 1e-3, 10)
    return targets, weight


def weighted_bce(prob: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted binary cross-entropy averaged over the last two (frequency, time) axes.

    Args:
        prob: ``[..., H, T]`` probabilities.
        target: ``[..., H, T]`` targets in [0, 1] (broadcastable).
        weight: ``[..., H, T]`` weights (broadcastable).

    Returns:
        ``[...]``.
    """
    shape = torch.broadcast_shapes(prob.shape, target.shape, weight.shape)
    # PyTorch's BCE (log terms clamped at -100, bounded gradients at 0 and 1), in float32
    # outside autocast, which refuses to run it.
    with torch.autocast(device_type=prob.device.type, enabled=False):
        loss = F.binary_cross_entropy(
            prob.float().expand(shape), target.float().expand(shape), weight.float().expand(shape), reduction="none"
        )
    return loss.mean(dim=(-2, -1))


@lru_cache(maxsize=16)
def _assignment_table(sources: int, heads: int) -> tuple[tuple[int, ...], ...]:
    return tuple(itertools.permutations(range(heads), sources))


def assignments(sources: int, heads: int, device: torch.device | None = None) -> torch.Tensor:
    """All assignments of distinct noise heads to sources: ``[P, sources]`` head indices."""
    if heads < sources:
        raise ValueError(f"noise-invariant training needs at least as many noise heads as sources ({heads} < {sources}).")
    return torch.tensor(_assignment_table(sources, heads), dtype=torch.long, device=device)


def mask_loss(mask_logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Plain CLIPSep loss per mixture.

    Args:
        mask_logits: ``[B, N, H, T]`` query-head logits.
        targets: ``[B, N, H, T]`` binary masks.
        weight: ``[B, 1, H, T]``.

    Returns:
        ``[B]``: the weighted BCE averaged over sources.
    """
    return weighted_bce(torch.sigmoid(mask_logits.float()), targets, weight).mean(dim=1)


def noise_invariant_loss(
    mask_logits: torch.Tensor,
    noise_logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    margin_weight: float = 0.0,
    margin: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise-invariant (permutation-invariant over noise heads) loss per mixture.

    Args:
        mask_logits: ``[B, N, H, T]`` query-head logits.
        noise_logits: ``[B, M, H, T]`` noise-head logits, ``M >= N``.
        targets: ``[B, N, H, T]`` binary masks.
        weight: ``[B, 1, H, T]``.
        margin_weight: weight of the margin regulariser (0 = off, the published setting).
        margin: its margin.

    Returns:
        ``(loss [B], best [B, N])``: the loss of the best assignment and that assignment
        (the noise head used for each source).
    """
    n_sources, n_heads = mask_logits.shape[1], noise_logits.shape[1]
    table = assignments(n_sources, n_heads, mask_logits.device)  # [P, N]
    query = torch.sigmoid(mask_logits.float())[:, :, None]  # [B, N, 1, H, T]
    noise = torch.sigmoid(noise_logits.float())[:, None]  # [B, 1, M, H, T]
    target = targets[:, :, None]
    pair = weighted_bce(torch.clamp(query + noise, max=1.0), target, weight[:, :, None])  # [B, N, M]
    if margin_weight > 0:
        alone = weighted_bce(noise, target, weight[:, :, None])
        pair = pair + margin_weight * torch.relu(pair - alone + margin)
    source_index = torch.arange(n_sources, device=pair.device)
    per_assignment = pair[:, source_index[None, :], table].mean(dim=-1)  # [B, P]
    loss, best = per_assignment.min(dim=1)
    return loss, table[best]


def noise_activation_penalty(noise_logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """``relu(mean over batch, rows and frames of sum_j sigmoid(n_j) - threshold)`` (scalar)."""
    activation = torch.sigmoid(noise_logits.float()).sum(dim=1).mean()
    return torch.relu(activation - threshold)


def best_permutation(mask_logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The permutation-invariant assignment of query-free output masks to sources.

    Args:
        mask_logits: ``[B, N, H, T]`` logits of N outputs.
        targets: ``[B, N, H, T]`` binary masks of the N sources.
        weight: ``[B, 1, H, T]``.

    Returns:
        ``[B, N]``: for each source, the output whose plain loss
        (:func:`mask_loss` after reordering) is lowest over all N! permutations;
        ``mask_logits.gather(1, ...)`` with it aligns outputs with sources.
    """
    n = mask_logits.shape[1]
    table = assignments(n, n, mask_logits.device)  # [P, N]
    with torch.no_grad():
        # [B, N sources, N outputs]
        pair = weighted_bce(torch.sigmoid(mask_logits.float())[:, None], targets[:, :, None], weight[:, :, None])
        per_permutation = pair[:, torch.arange(n, device=pair.device)[None, :], table].mean(dim=-1)  # [B, P]
    return table[per_permutation.argmin(dim=1)]
