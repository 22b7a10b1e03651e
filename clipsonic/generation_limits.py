"""What a generation request may ask for, checked before any model loads.

The limits and checks of :mod:`clipsonic.generate`, apart from it so that the command line
builds its options and refuses a bad request without importing diffusers (a few seconds).
"""

from __future__ import annotations

import numbers
from typing import Any

import torch

from clipcore.errors import ClipAudioError, is_whole_number
from clipcore.memory import memory_exceeded
from clipcore.spectral import MelConfig

__all__ = ["GenerationError", "SAMPLERS", "MODES", "MAX_DURATION", "MAX_SEED", "MAX_GUIDANCE", "check_guidance",
           "check_output_memory", "check_seed"]


class GenerationError(ClipAudioError):
    """A generation request that cannot be served, described in one sentence."""


SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False, "timestep_spacing": "trailing"}),
    "dpm++": ("DPMSolverMultistepScheduler",
              {"algorithm_type": "dpmsolver++", "solver_order": 2, "timestep_spacing": "trailing"}),
    "euler": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
}
"""Sampler names and the diffusers scheduler (class name, settings) behind each."""

MODES = ("image", "zs", "pd", "gap")

MAX_DURATION = 600.0
"""Longest duration (seconds) one generated clip may have."""

MAX_SEED = 2**63 - 1
"""Largest seed a random generator takes (sample ``n`` uses ``seed + n``)."""

MAX_GUIDANCE = 100.0
"""Largest guidance scale (in magnitude) :meth:`Generator.generate` takes; the papers use 1
to 10, and far larger scales only overflow."""


def check_guidance(guidance: float, name: str = "guidance") -> None:
    """Refuse a guidance scale that is not a number of magnitude at most :data:`MAX_GUIDANCE`.

    Raises:
        GenerationError: naming ``name`` (an option, say) and the value.
    """
    if isinstance(guidance, bool) or not isinstance(guidance, numbers.Real) or not abs(guidance) <= MAX_GUIDANCE:
        raise GenerationError(f"{name} must be a number from -{MAX_GUIDANCE:g} to {MAX_GUIDANCE:g}, not {guidance!r}.")


def check_output_memory(queries: int, num_samples: int, duration: float, config: MelConfig = MelConfig(),
                        device: torch.device | str = "cpu", sampling: int = 0) -> None:
    """Refuse a request whose clips would not fit in memory, before the diffusion sampling.

    The clips' waveforms and mels (float32) are held until returned, and twice while they are
    gathered into one tensor; with the sampling's own working memory that peak may take at
    most half of the memory of ``device`` (on the CPU: the machine's, or its container's
    limit when lower).

    Args:
        queries, num_samples, duration: the request: clips per query, seconds per clip.
        config: the model's mel settings (default: the project's convention).
        device: where the clips are made.
        sampling: the sampling's working memory in bytes
            (:meth:`clipsonic.model.CLIPSonic.sampling_bytes` of a batch); 0 before the
            model is loaded.

    Raises:
        GenerationError: naming the request and the memory it would take.
    """
    length = round(duration * config.sample_rate)
    peak = 2 * queries * num_samples * (length + config.n_mels * config.frames(length)) * 4 + sampling
    memory = memory_exceeded(peak, device)
    if memory is not None:
        what = "audio, mels and the sampling's working memory" if sampling else "audio and mels"
        raise GenerationError(f"{queries} queries x {num_samples} samples of {duration:g} s would take "
                              f"{peak / 1e9:.1f} GB of {what} at their peak, more than half of the "
                              f"{memory / 1e9:.0f} GB on {device}; generate fewer or shorter clips at a time"
                              f"{', or in smaller batches' if sampling else ''}.")


def check_seed(seed: int, count: int) -> None:
    """Refuse a seed whose ``count`` consecutive seeds a random generator cannot all take."""
    if not is_whole_number(seed):
        raise GenerationError(f"the seed must be a whole number, not {seed!r}.")
    if not 0 <= seed <= MAX_SEED - count + 1:
        raise GenerationError(f"the seed must be between 0 and {MAX_SEED - count + 1}, not {seed}.")
