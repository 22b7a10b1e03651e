"""Audio file I/O: soundfile for files, torchaudio only for resampling.

Waveforms are float32 tensors ``[channels, samples]``. Every failure raises
:class:`AudioError` with one sentence that names the file; nothing non-finite and nothing
partial is ever written under a final file name.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from clipcore.errors import ClipAudioError, is_whole_number
from clipcore.files import atomic_write

__all__ = [
    "AudioError",
    "MAX_CHANNELS",
    "MIN_SAMPLE_RATE",
    "MAX_SAMPLE_RATE",
    "check_sample_rate",
    "BIT_DEPTHS",
    "CLIP_MODES",
    "AUDIO_EXTENSIONS",
    "open_audio",
    "load_audio",
    "save_audio",
    "output_format",
    "output_gain",
    "scale_for_output",
    "resample",
    "to_mono",
    "check_finite",
]

MAX_CHANNELS = 8
"""Largest channel count accepted (7.1 surround)."""

MIN_SAMPLE_RATE = 1000
"""Lowest sample rate accepted in an input file: below it, a file holds no sound to hear."""

MAX_SAMPLE_RATE = 768000
"""Highest sample rate accepted (the highest any audio interface records)."""

BIT_DEPTHS = {"16": "PCM_16", "24": "PCM_24", "32f": "FLOAT"}
"""Bit depth names accepted by :func:`save_audio`, and their soundfile subtypes."""

FORMATS = {"wav": "WAV", "flac": "FLAC"}

CLIP_MODES = ("rescale", "clamp", "none")
"""How :func:`save_audio` treats samples beyond full scale (as Demucs's ``--clip-mode``):
``rescale`` scales the whole waveform down when its peak exceeds 1 (to a peak of 1/1.01),
``clamp`` clips every sample to [-1, 1], ``none`` writes samples as they are (integer bit
depths still clip at full scale, which they cannot exceed)."""

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff")
"""File extensions the project treats as audio when it searches folders."""


class AudioError(ClipAudioError):
    """A problem with an audio file or waveform, described in one sentence."""


def open_audio(path: str | os.PathLike) -> sf.SoundFile:
    """Open an audio file for reading, its header checked.

    Raises:
        AudioError: missing, a folder, unreadable or not audio, more than
            :data:`MAX_CHANNELS` channels, a rate outside :data:`MIN_SAMPLE_RATE` to
            :data:`MAX_SAMPLE_RATE`, or zero samples; one sentence naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file.")
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file.")
    try:
        handle = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        raise AudioError(f"{path}: cannot be read as audio ({_reason(error)}).") from None
    problem = None
    if handle.channels > MAX_CHANNELS:
        problem = f"has {handle.channels} channels; at most {MAX_CHANNELS} are supported"
    elif not MIN_SAMPLE_RATE <= handle.samplerate <= MAX_SAMPLE_RATE:
        problem = f"has a sample rate of {handle.samplerate} Hz; audio needs {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz"
    elif handle.frames == 0:
        problem = "contains zero samples"
    if problem is not None:
        handle.close()
        raise AudioError(f"{path}: {problem}.")
    return handle


def check_sample_rate(rate: int, name: str = "the sample rate") -> None:
    """Refuse a rate that is not a whole number of Hz from :data:`MIN_SAMPLE_RATE` to
    :data:`MAX_SAMPLE_RATE`.

    Raises:
        AudioError: naming ``name`` and the value.
    """
    if not is_whole_number(rate) or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{name} must be a whole number of Hz from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE}, "
                         f"not {rate!r}.")


def load_audio(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    mono: bool = False,
    span: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, int]:
    """Read an audio file, or a span of it.

    Args:
        path: any file soundfile reads (wav, flac, ogg, mp3, aiff).
        sample_rate: resample to this rate when given.
        mono: average the channels into one.
        span: ``(start, end)`` seconds: read only these samples (and the few the resampler
            needs around them), the samples ``round(start * rate)`` to ``round(end * rate)``
            at the output rate, as reading the whole file and slicing it gives; fewer where
            the file ends sooner, none where it ends before ``start``.

    Returns:
        ``(wave, rate)``: float32 ``[channels, samples]`` and its sample rate.

    Raises:
        AudioError: as :func:`open_audio`, non-finite samples, or a span that is not two
            finite times with ``0 <= start <= end``.
    """
    path = Path(path)
    if span is not None and not (all(math.isfinite(t) for t in span) and 0 <= span[0] <= span[1]):
        raise AudioError(f"{path}: cannot read the span {span[0]} to {span[1]} s (a start from 0 to its end).")
    with open_audio(path) as handle:
        rate = handle.samplerate
        out_rate = rate if sample_rate is None else sample_rate
        first, count, skip, keep = 0, -1, 0, None
        if span is not None:
            first, count, skip, keep = _span_frames(span, rate, out_rate, handle.frames)
        try:
            handle.seek(first)
            data = handle.read(count, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError) as error:
            raise AudioError(f"{path}: cannot be read as audio ({_reason(error)}).") from None
    if data.shape[0] == 0 and span is None:  # a header that counts samples the file does not hold
        raise AudioError(f"{path}: contains zero samples.")
    wave = torch.from_numpy(np.ascontiguousarray(data.T))
    if not torch.isfinite(wave).all():
        raise AudioError(f"{path}: contains non-finite samples (NaN or infinity).")
    if mono:
        wave = to_mono(wave)
    if out_rate != rate and wave.shape[-1]:
        wave = resample(wave, rate, out_rate)
    if keep is not None:
        wave = wave[:, skip : skip + keep]
    return wave, out_rate


def _span_frames(span: tuple[float, float], rate: int, out_rate: int, frames: int) -> tuple[int, int, int, int]:
    """Which file frames to read for the output samples ``round(start * out_rate)`` to
    ``round(end * out_rate)``: ``(first, count, skip, keep)``, where the output samples
    wanted are ``keep`` from ``skip`` of the resampled frames.

    The frames read start at a multiple of the input's period in the rates' ratio
    (``rate / gcd``), so that resampling them gives the whole file's resampled samples
    exactly, and reach ``margin`` frames beyond the span on each side, more than the
    resampling kernel's half width (``torchaudio``'s: 6 zero crossings of the lower rate).
    """
    wanted = (int(round(span[0] * out_rate)), int(round(span[1] * out_rate)))
    if out_rate == rate:
        first = min(max(wanted[0], 0), frames)
        count = max(min(wanted[1], frames) - first, 0)
        return first, count, 0, count
    common = math.gcd(rate, out_rate)
    period_in, period_out = rate // common, out_rate // common
    margin = math.ceil(6 * period_in / (0.99 * min(period_in, period_out))) + period_in + 1
    block = max(0, (wanted[0] * rate // out_rate - margin) // period_in)
    first = min(block * period_in, frames)
    last = min(frames, -(-wanted[1] * rate // out_rate) + margin)
    skip = wanted[0] - block * period_out
    total = -(-frames * out_rate // rate)  # the whole file's resampled length
    return first, max(last - first, 0), skip, max(min(wanted[1], total) - wanted[0], 0)


def _reason(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.rstrip(".")


FULL_DISK_BYTES = 64 << 20
"""Free space below which a failed write is put down to a full disk."""


def unwritable(path: str | os.PathLike, error: Exception) -> AudioError:
    """The one-sentence error of an audio file that could not be written: libsndfile says
    only "System error." of a full disk, so the free space is looked at."""
    folder = next((parent for parent in Path(path).absolute().parents if parent.exists()), Path("/"))
    if shutil.disk_usage(folder).free < FULL_DISK_BYTES:
        return AudioError(f"{path}: cannot be written: the disk holding {folder} is full.")
    return AudioError(f"{path}: cannot be written ({_reason(error)}).")


def to_mono(wave: torch.Tensor) -> torch.Tensor:
    """Average ``[channels, samples]`` into ``[1, samples]``."""
    return wave.mean(dim=0, keepdim=True)


def resample(wave: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Resample ``[..., samples]`` with ``torchaudio.functional.resample`` (sinc, Hann)."""
    if orig_rate == new_rate:
        return wave
    return torchaudio.functional.resample(wave, orig_rate, new_rate)


def check_finite(wave: torch.Tensor, name: str) -> None:
    """Raise :class:`AudioError` naming ``name`` if ``wave`` holds NaN or infinity."""
    if not torch.isfinite(wave).all():
        raise AudioError(f"{name}: refusing to write non-finite samples (NaN or infinity).")


def output_format(path: Path, format: str | None, bit_depth: str, clip: str) -> str:
    """The format (``wav`` or ``flac``) of an output file, its options checked.

    Raises:
        AudioError: an unsupported format, bit depth or clip mode, naming ``path``.
    """
    fmt = (format or path.suffix.lstrip(".") or "wav").lower()
    if fmt not in FORMATS:
        raise AudioError(f"{path}: unsupported output format {fmt!r}; use wav or flac.")
    if bit_depth not in BIT_DEPTHS:
        raise AudioError(f"{path}: unsupported bit depth {bit_depth!r}; use '16', '24' or '32f' (a string).")
    if fmt == "flac" and bit_depth == "32f":
        raise AudioError(f"{path}: FLAC stores 16 or 24 bits, not 32-bit float.")
    if clip not in CLIP_MODES:
        raise AudioError(f"{path}: unknown clip mode {clip!r}; use {', '.join(CLIP_MODES)}.")
    return fmt


def output_gain(peak: float, clip: str) -> float:
    """The gain of a waveform whose peak is ``peak``: ``clip="rescale"`` scales it to a
    peak of 1/1.01 when it exceeds 1; otherwise 1."""
    return 1.0 / max(1.01 * peak, 1.0) if clip == "rescale" else 1.0


def scale_for_output(wave: torch.Tensor, gain: float, clip: str, bit_depth: str) -> np.ndarray:
    """``[C, S]`` float32 -> ``[S, C]`` samples to write: times ``gain``, clipped at full
    scale for ``clip="clamp"`` and integer bit depths."""
    if gain != 1.0:
        wave = wave * gain
    if clip == "clamp" or bit_depth != "32f":
        # Clip instead of letting the integer conversion wrap around.
        wave = wave.clamp(-1.0, 1.0)
    return np.ascontiguousarray(wave.numpy().T)


def save_audio(
    path: str | os.PathLike,
    wave: torch.Tensor,
    sample_rate: int,
    bit_depth: str = "16",
    format: str | None = None,
    clip: str = "none",
) -> Path:
    """Write a waveform atomically.

    Args:
        path: target file; its extension picks the format unless ``format`` is given.
        wave: ``[samples]`` or ``[channels, samples]``, nominal range ``[-1, 1]``.
        sample_rate: samples per second.
        bit_depth: ``"16"`` (default), ``"24"`` or ``"32f"`` (FLAC takes 16 or 24).
        format: ``"wav"`` or ``"flac"``.
        clip: a mode of :data:`CLIP_MODES` for samples beyond full scale.

    Returns:
        The written path.

    Raises:
        AudioError: non-finite samples, zero samples, bad channel count, an unsupported
            format or bit depth, or a failed write (a full disk). Nothing is written in
            that case.
    """
    path = Path(path)
    fmt = output_format(path, format, bit_depth, clip)
    wave = wave.detach().to("cpu", torch.float32)
    if wave.dim() == 1:
        wave = wave[None]
    if wave.dim() != 2 or not 1 <= wave.shape[0] <= MAX_CHANNELS:
        raise AudioError(
            f"{path}: cannot write a waveform of shape {tuple(wave.shape)}; "
            f"expected [channels <= {MAX_CHANNELS}, samples]."
        )
    if wave.shape[1] == 0:
        raise AudioError(f"{path}: refusing to write zero samples.")
    check_finite(wave, str(path))
    data = scale_for_output(wave, output_gain(wave.abs().max().item(), clip), clip, bit_depth)

    def write(tmp: Path) -> None:
        try:
            sf.write(str(tmp), data, int(sample_rate), subtype=BIT_DEPTHS[bit_depth], format=FORMATS[fmt])
        except (sf.LibsndfileError, RuntimeError) as error:
            raise unwritable(path, error) from None

    return atomic_write(path, write)
