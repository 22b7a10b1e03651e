"""From mask logits to stems: CLIPSep's masks applied to a mixture's STFT.

Shared by inference (:class:`clipsep.separate.Separator`), training's validation
(:mod:`clipsep.system`) and the command lines, which check a mask power before loading
anything (this module imports no query encoder).
"""

from __future__ import annotations

import math

import torch

from clipcore.errors import ClipAudioError
from clipcore.spectral import istft, unwarp_to_linear

__all__ = ["masked_stems", "check_mask_power"]


def masked_stems(logits: torch.Tensor, spec: torch.Tensor, length: int, config, binary: bool = False,
                 power: float = 1.0) -> torch.Tensor:
    """Waveforms of masks applied to a mixture: sigmoid, raised to ``power``, log-to-linear
    unwarp, optional ``> 0.5`` threshold, times the mixture's complex STFT, iSTFT.

    Args:
        logits: ``[B, K, 256, T]`` mask logits on the log-frequency rows.
        spec: ``[B, C, F, T]`` complex mixture STFT (``config``), one per channel.
        length: samples of the output.
        config: the model's ``STFTConfig``.
        binary: binary masks (the paper's evaluation) instead of soft ones (the default).
        power: the soft masks' exponent: 1 keeps the network's probabilities; above 1 lowers
            uncertain bins (a probability well below 1) more than confident ones.

    Returns:
        ``[B, K, C, length]``.
    """
    check_mask_power(power, binary)
    probabilities = torch.sigmoid(logits)
    masks = unwarp_to_linear(probabilities if power == 1 else probabilities**power, config.n_freqs)  # [B, K, F, T]
    if binary:
        masks = (masks > 0.5).to(masks.dtype)
    return istft(masks[:, :, None] * spec[:, None], length, config)


def check_mask_power(power: float, binary: bool = False, name: str = "mask_power") -> None:
    """Refuse a mask power that is not a positive finite number, or one other than 1 with
    binary masks (a power shapes soft masks).

    Raises:
        ClipAudioError: (a ``ValueError``) one sentence that starts with ``name``, the
            argument or command-line option.
    """
    if not 0 < power < math.inf:
        raise ClipAudioError(f"{name} must be a positive finite number, got {power}.")
    if binary and power != 1:
        raise ClipAudioError(f"{name} shapes soft masks; binary masks have no power.")
