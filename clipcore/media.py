"""Images (figures from :mod:`clipcore.plots`) and audio for the training logger, shared by
the training systems.

TensorBoard-style loggers get ``add_image`` / ``add_audio``, W&B gets ``log_image`` /
``log_audio``; loggers without media support (CSV) get PNG and WAV files under
``<log_dir>/media/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipcore.audio import save_audio
from clipcore.files import atomic_write
from clipcore.naming import slugify
from clipcore.training import log_dir

__all__ = ["log_media"]


def log_media(
    trainer,
    tag: str,
    step: int,
    images: dict[str, np.ndarray],
    audio: dict[str, torch.Tensor],
    sample_rate: int,
    caption: str | None = None,
) -> None:
    """Log named RGB images (``[H, W, 3]`` uint8) and named waveforms (``[S]``) of one example.

    Args:
        trainer: the Lightning trainer whose loggers receive the media.
        tag: the example's tag, e.g. ``"val/example0"``.
        step: the global step.
        images: name -> image.
        audio: name -> waveform; a peak above 1 is scaled down, never clipped.
        sample_rate: of the waveforms.
        caption: what the example shows (a label), added to file names and captions.
    """
    waves = {name: wave.detach().float().cpu().reshape(-1) for name, wave in audio.items()}
    peak = max((float(w.abs().max()) for w in waves.values()), default=1.0)
    waves = {name: w / max(1.0, peak) for name, w in waves.items()}
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_audio") and hasattr(experiment, "add_image"):
            for name, image in images.items():
                experiment.add_image(f"{tag}/{name}", image, step, dataformats="HWC")
            for name, wave in waves.items():
                experiment.add_audio(f"{tag}/{name}", wave[None], step, sample_rate=sample_rate)
        elif hasattr(logger, "log_image") and hasattr(logger, "log_audio"):
            logger.log_image(key=tag, images=list(images.values()), step=step,
                             caption=[f"{caption or ''} {name}".strip() for name in images])
            logger.log_audio(key=f"{tag}/audio", audios=[w.numpy() for w in waves.values()], step=step,
                             sample_rate=[sample_rate] * len(waves),
                             caption=[f"{caption or ''} {name}".strip() for name in waves])
        else:
            root = Path(getattr(logger, "log_dir", None) or log_dir(trainer)) / "media"
            root.mkdir(parents=True, exist_ok=True)
            stem = f"{tag.replace('/', '-')}-step{step:07d}" + (f"-{slugify(caption)}" if caption else "")
            for name, image in images.items():
                atomic_write(root / f"{stem}-{name}.png", lambda tmp, image=image: Image.fromarray(image).save(tmp, "PNG"))
            for name, wave in waves.items():
                save_audio(root / f"{stem}-{name}.wav", wave[None], sample_rate)
