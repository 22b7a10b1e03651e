"""Separation metrics: BSS-Eval SDR/SIR/SAR, SI-SDR, and improvement over the mixture.

BSS-Eval (v4-style, time-invariant 512-tap distortion filters) runs through
``fast_bss_eval``, which agrees with ``mir_eval.separation.bss_eval_sources`` to about
0.01 dB and is about 10x faster. As in the official CLIPSep evaluation, a target estimate
is scored with the interference estimate ``mixture - estimate`` (the complementary mask)
against the references ``[target, interference]``, and the mixture's own scores (the
mixture as the estimate of every source) give the improvements. Everything is computed in
float64 numpy; a sample whose reference or estimate is silent (sum of absolute values
<= 1e-5, the official rule; the interference estimate ``mixture - estimate`` is one, so an
all-pass estimate is unscored too) scores NaN, and :func:`summarize` leaves NaNs out and
counts the rest. BSS-Eval's ratios are reported within +-:data:`MAX_DB` (SI-SDR's within
+-200 dB).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from fast_bss_eval.torch import square_cosine_metrics

__all__ = ["bss_eval", "si_sdr", "separation_scores", "summarize", "summarize_groups", "near_silent", "SILENCE",
           "NEAR_SILENCE_DB", "MAX_DB"]

SILENCE = 1e-5
NEAR_SILENCE_DB = -30.0
"""An estimate whose energy is this far below its mixture's counts as near-silent."""


def _array(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def bss_eval(references, estimates, filter_length: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BSS-Eval SDR, SIR and SAR without permutation search.

    Several candidate estimates of the same references (one per query kind, say, and the
    mixture) are best scored in one call: the references' statistics and the distortion
    filters' systems are factored once for all of them, so five candidates cost about
    twice what one does.

    Args:
        references: ``[..., N, S]`` true sources.
        estimates: ``[..., N, S]`` estimates, in the same order; or ``[..., K, N, S]``,
            ``K`` candidate estimates of every source.
        filter_length: distortion filter taps (512 as in mir_eval).

    Returns:
        ``(sdr, sir, sar)``, each ``[..., N]`` (or ``[..., K, N]``) in dB.

    Raises:
        ValueError: mismatched shapes, or signals shorter than ``filter_length``.
    """
    ref, est = _array(references), _array(estimates)
    candidates = est.ndim == ref.ndim + 1
    shaped = est if candidates else est[..., None, :, :]
    if ref.ndim < 2 or shaped.shape[:-3] + shaped.shape[-2:] != ref.shape:
        raise ValueError("references must be [..., N, S] and estimates [..., N, S] or [..., K, N, S], "
                         f"got {ref.shape} and {est.shape}.")
    (n, samples), k = ref.shape[-2:], shaped.shape[-3]
    if samples < filter_length:  # shorter: a solver error, or scores of 150 dB
        raise ValueError(f"BSS-Eval needs signals of at least {filter_length} samples (its distortion filters' "
                         f"length), got {samples}.")
    ref, shaped = ref.reshape(-1, n, samples), shaped.reshape(-1, k * n, samples)
    own = torch.arange(k * n) % n  # the reference of each candidate column
    coherence = []  # (of the target's filter, of all references' filter) per candidate column: [B, K * N] each
    # The torch backend: fast_bss_eval 0.1.4's numpy backend fails with numpy 2. Its solver
    # fails ("Pivots given to lu_solve must all be greater or equal to 1") on some real
    # stems when torch runs several threads, so it runs on one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for start in range(0, len(ref), _BSS_CHUNK):
            coh_sdr, coh_sar = square_cosine_metrics(
                torch.from_numpy(ref[start:start + _BSS_CHUNK]), torch.from_numpy(shaped[start:start + _BSS_CHUNK]),
                filter_length=filter_length, pairwise=True)  # [b, N, K * N] each
            coherence.append((coh_sdr.gather(-2, own.expand(len(coh_sdr), 1, -1))[:, 0], coh_sar[:, 0]))
    finally:
        torch.set_num_threads(threads)
    coh_sdr, coh_sar = (torch.cat(c).numpy() for c in zip(*coherence))
    scores = (_coherence_db(coh_sdr), _coherence_db(coh_sdr / coh_sar), _coherence_db(coh_sar))
    shape = est.shape[:-1]
    return tuple(score.reshape(shape) for score in scores)


_BSS_CHUNK = 8
"""Mixtures per ``square_cosine_metrics`` call: its spectra of 5-second stems at 16 kHz take
about 40 MB per mixture and candidate."""


MAX_DB = 150.0
"""Largest ratio a score reports, either way (+-150 dB): float64's precision; a perfect
estimate (or an all-pass one's SAR) scored inf, which means leave out."""


def _coherence_db(coherence: np.ndarray) -> np.ndarray:
    """A squared cosine (signal share of the projection) as a signal-to-rest ratio in dB,
    as fast_bss_eval converts it, within +-:data:`MAX_DB`."""
    share = 10 ** (-MAX_DB / 10) / (1 + 10 ** (-MAX_DB / 10))  # the share at -MAX_DB
    coherence = np.clip(coherence, share, 1 - share)
    return np.clip(10 * np.log10(coherence / (1 - coherence)), -MAX_DB, MAX_DB)


def si_sdr(reference, estimate) -> np.ndarray:
    """Scale-invariant SDR (zero-mean signals, Le Roux et al. 2019).

    Args:
        reference: ``[..., S]``.
        estimate: ``[..., S]``.

    Returns:
        ``[...]`` in dB.
    """
    ref, est = _array(reference), _array(estimate)
    ref = ref - ref.mean(axis=-1, keepdims=True)
    est = est - est.mean(axis=-1, keepdims=True)
    scale = (est * ref).sum(-1, keepdims=True) / np.maximum((ref**2).sum(-1, keepdims=True), 1e-20)
    target = scale * ref
    noise = est - target
    return 10 * np.log10(np.maximum((target**2).sum(-1), 1e-20) / np.maximum((noise**2).sum(-1), 1e-20))


def separation_scores(target, interference, estimate, mixture) -> dict[str, np.ndarray]:
    """Scores of target estimates, and of the mixture, for a batch of two-source mixtures.

    Args:
        target: ``[B, S]`` true target sources.
        interference: ``[B, S]`` everything else in the mixture.
        estimate: ``[B, S]`` separated targets; or ``[B, K, S]``, ``K`` estimates of each
            target (one per query kind, say), scored together at little more than the cost
            of one (see :func:`bss_eval`).
        mixture: ``[B, S]`` the mixtures (normally ``target + interference``).

    Returns:
        ``sdr, sir, sar, si_sdr`` of the estimates, the same with a ``_mix`` suffix for the
        mixture, and the improvements ``sdri, siri, si_sdri``: each float64 of the
        estimate's shape without ``S`` (``[B]`` or ``[B, K]``), NaN where a reference or
        the estimate is silent.
    """
    target, interference, estimate, mixture = (_array(x) for x in (target, interference, estimate, mixture))
    if not target.shape == interference.shape == mixture.shape or target.ndim != 2 or not (
            estimate.shape == target.shape or estimate.shape[::2] == target.shape and estimate.ndim == 3):
        raise ValueError("target, interference and mixture must all be [B, S] of one shape, and estimate [B, S] "
                         "or [B, K, S].")
    estimates = estimate if estimate.ndim == 3 else estimate[:, None]  # [B, K, S]
    complements = mixture[:, None] - estimates
    refs = np.stack([target, interference], axis=1)  # [B, 2, S]
    heard = (np.abs(refs).sum(-1) > SILENCE).all(1)  # [B]
    valid = heard[:, None] & (np.abs(estimates).sum(-1) > SILENCE) & (np.abs(complements).sum(-1) > SILENCE)
    names = ("sdr", "sir", "sar")
    scores = {f"{name}{suffix}": np.full(valid.shape, np.nan) for name in names for suffix in ("", "_mix")}
    scored = np.flatnonzero(heard) if valid.any() else np.array([], dtype=int)
    for rows in (scored[start:start + _BSS_CHUNK] for start in range(0, len(scored), _BSS_CHUNK)):
        # Candidates [b, K + 1, 2, S]: each estimate with its complement, then the mixture as
        # the estimate of both sources; a silent estimate is replaced by the references
        # (scored, then discarded) so that it cannot spoil its mixture's solve.
        pairs = np.stack([estimates[rows], complements[rows]], axis=2)
        pairs = np.where(valid[rows, :, None, None], pairs, refs[rows, None])
        candidates = np.concatenate([pairs, np.stack([mixture[rows], mixture[rows]], axis=1)[:, None]], axis=1)
        for name, value in zip(names, bss_eval(refs[rows], candidates)):
            scores[name][rows] = value[:, :-1, 0]
            scores[f"{name}_mix"][rows] = value[:, -1:, 0]
    for key in scores:
        scores[key][~valid] = np.nan
    scores["si_sdr"] = np.where(valid, si_sdr(target[:, None], estimates), np.nan)
    scores["si_sdr_mix"] = np.where(valid, si_sdr(target, mixture)[:, None], np.nan)
    # No SAR improvement: the mixture has no artifacts, so its SAR is unbounded.
    for name in ("sdr", "sir", "si_sdr"):
        scores[f"{name}i"] = scores[name] - scores[f"{name}_mix"]
    return scores if estimate.ndim == 3 else {key: value[:, 0] for key, value in scores.items()}


def near_silent(estimate, mixture, floor_db: float = NEAR_SILENCE_DB) -> np.ndarray:
    """Which estimates are (nearly) silent: energy more than ``-floor_db`` dB below the
    mixture's, or silent by the official rule (sum of absolute values <= ``SILENCE``).

    Args:
        estimate: ``[B, S]`` separated sources.
        mixture: ``[B, S]`` their mixtures.
        floor_db: the energy ratio (dB) below which an estimate is near-silent.

    Returns:
        ``[B]`` bool.
    """
    estimate, mixture = _array(estimate), _array(mixture)
    energy, reference = (estimate**2).sum(-1), (mixture**2).sum(-1)
    return (energy <= reference * 10 ** (floor_db / 10)) | (np.abs(estimate).sum(-1) <= SILENCE)


def summarize(values) -> dict[str, float | int]:
    """Mean, standard error of the mean, 95% interval of the mean (Student's t: ``low``,
    ``high``), median and count of the finite values."""
    from scipy.stats import t

    x = _array(values).ravel()
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {"mean": math.nan, "sem": math.nan, "low": math.nan, "high": math.nan, "median": math.nan, "count": 0}
    mean = float(x.mean())
    sem = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan
    half = float(t.ppf(0.975, len(x) - 1) * sem) if len(x) > 1 else math.nan
    return {"mean": mean, "sem": sem, "low": mean - half, "high": mean + half, "median": float(np.median(x)),
            "count": int(len(x))}


def summarize_groups(values, groups) -> dict[str, float | int]:
    """:func:`summarize` of values that come in correlated groups (the two stems of a mixture,
    whose scores move together or against each other): the mean, median and count of the
    finite values, with the standard error and 95% interval (Student's t) of the groups'
    means, around the values' mean; ``groups`` in the result counts the groups with a value.

    Args:
        values: ``[N]`` scores.
        groups: ``[N]`` the group of each score (a mixture's index, say).
    """
    x, labels = _array(values).ravel(), np.asarray(groups).ravel()
    if len(labels) != len(x):
        raise ValueError(f"summarize_groups: {len(x)} values but {len(labels)} groups.")
    finite = np.isfinite(x)
    result = summarize(x)
    means = [float(x[finite & (labels == group)].mean()) for group in np.unique(labels[finite])]
    spread = summarize(means)
    half = spread["mean"] - spread["low"]
    return {**result, "sem": spread["sem"], "low": result["mean"] - half, "high": result["mean"] + half,
            "groups": len(means)}
