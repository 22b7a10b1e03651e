"""Spectral transforms shared by both systems.

Everything here is batched, runs on whatever device its input lives on, and stays in
torch (no numpy round trips), so it can sit inside a training step.

- STFT / iSTFT with a Hann window (CLIPSep: n_fft 1024, hop 256).
- The log-frequency warp of the official CLIPSep network (513 linear bins to 256 log
  rows, bilinear ``grid_sample`` with ``align_corners=True``) and its inverse.
- The mel transform of CLIPSonic (AudioLDM convention: 16 kHz, n_fft 1024, hop 160,
  64 slaney mel bins over 0-8 kHz, natural-log compression) and a Griffin-Lim inverse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchaudio

from clipcore.errors import is_whole_number

__all__ = [
    "STFTConfig",
    "stft",
    "istft",
    "magnitude_phase",
    "log_warp_heights",
    "log_unwarp_heights",
    "warp_to_log",
    "unwarp_to_linear",
    "MelConfig",
    "MelSpectrogram",
]


@dataclass(frozen=True)
class STFTConfig:
    """Short-time Fourier transform settings (defaults: official CLIPSep)."""

    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1


def _window(config: STFTConfig, like: torch.Tensor) -> torch.Tensor:
    dtype = like.real.dtype if like.is_complex() else like.dtype
    return torch.hann_window(config.win_length, device=like.device, dtype=dtype)


def stft(wave: torch.Tensor, config: STFTConfig = STFTConfig()) -> torch.Tensor:
    """Complex STFT of a batch of waveforms.

    Args:
        wave: ``[..., samples]`` real waveform.
        config: transform settings.

    Returns:
        ``[..., n_fft // 2 + 1, frames]`` complex spectrogram, with
        ``frames = samples // hop_length + 1`` (centred frames, reflect padding).
    """
    lead = wave.shape[:-1]
    flat = wave.reshape(-1, wave.shape[-1])
    spec = torch.stft(
        flat,
        n_fft=config.n_fft,
        hop_length=config.hop_length,
        win_length=config.win_length,
        window=_window(config, flat),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    return spec.reshape(*lead, *spec.shape[-2:])


def istft(spec: torch.Tensor, length: int, config: STFTConfig = STFTConfig()) -> torch.Tensor:
    """Inverse of :func:`stft`.

    Args:
        spec: ``[..., n_fft // 2 + 1, frames]`` complex spectrogram.
        length: number of output samples.
        config: transform settings (must match the forward transform).

    Returns:
        ``[..., length]`` real waveform.
    """
    lead = spec.shape[:-2]
    flat = spec.reshape(-1, *spec.shape[-2:])
    wave = torch.istft(
        flat,
        n_fft=config.n_fft,
        hop_length=config.hop_length,
        win_length=config.win_length,
        window=_window(config, flat),
        center=True,
        length=length,
    )
    return wave.reshape(*lead, length)


def magnitude_phase(spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a complex spectrogram into magnitude and phase (both ``spec.shape``, real)."""
    return spec.abs(), spec.angle()


def _full_precision(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if it is in a half-precision type (bf16 or float16), else as it is."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


# --- log-frequency warp (official CLIPSep) ------------------------------------------------

LOG_ROWS = 256
LINEAR_ROWS = 513


def log_warp_heights(out_rows: int = LOG_ROWS, device: torch.device | None = None) -> torch.Tensor:
    """Where the rows of the linear-to-log warp read their input.

    Output row ``y`` in ``linspace(-1, 1, out_rows)`` reads input height coordinate
    ``(21 ** ((y + 1) / 2) - 11) / 10`` (``-1`` is the first input row, ``1`` the last).

    Returns:
        float32 ``[out_rows]`` height coordinates.
    """
    y = torch.linspace(-1.0, 1.0, out_rows, dtype=torch.float64, device=device)
    return _rounded((torch.pow(torch.tensor(21.0, dtype=torch.float64, device=device), (y + 1) / 2) - 11) / 10)


def log_unwarp_heights(out_rows: int = LINEAR_ROWS, device: torch.device | None = None) -> torch.Tensor:
    """Where the rows of the log-to-linear unwarp (the inverse of :func:`log_warp_heights`) read.

    Output row ``y`` in ``linspace(-1, 1, out_rows)`` reads height coordinate
    ``log(10 y + 11) / log(21) * 2 - 1``.

    Returns:
        float32 ``[out_rows]`` height coordinates.
    """
    y = torch.linspace(-1.0, 1.0, out_rows, dtype=torch.float64, device=device)
    return _rounded(torch.log(10 * y + 11) / math.log(21) * 2 - 1)


def _rounded(height: torch.Tensor) -> torch.Tensor:
    # Heights are computed in float64 and rounded once, as the official code does (numpy,
    # then float32): the network amplifies float32 rounding to about 1e-3 in its logits.
    return height.float()


def _resample_rows(spec: torch.Tensor, height: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling (align_corners) of the rows of ``[B, C, H, T]`` at ``height``.

    Frames are left alone: ``grid_sample`` sees each frame as a column of width one, so
    nothing depends on the number of frames (and ONNX export keeps it dynamic). A bf16 or
    float16 ``spec`` (a mask under mixed precision) is resampled in float32 and returned in
    its own dtype: heights rounded to bf16 read up to a row away from where they should.
    """
    batch, channels, rows, frames = spec.shape
    full = _full_precision(spec)
    columns = full.permute(0, 1, 3, 2).reshape(batch, channels * frames, rows, 1)
    grid = torch.stack([torch.zeros_like(height), height], dim=-1).to(full.dtype)
    grid = grid[None, :, None, :].expand(batch, -1, -1, -1)
    out = F.grid_sample(columns, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.reshape(batch, channels, frames, -1).permute(0, 1, 3, 2).to(spec.dtype)


def warp_to_log(spec: torch.Tensor, out_rows: int = LOG_ROWS) -> torch.Tensor:
    """Warp linear-frequency rows to log-frequency rows.

    Args:
        spec: ``[B, C, 513, T]`` linear-frequency spectrogram (any real values).
        out_rows: number of log rows (256 in the official network).

    Returns:
        ``[B, C, out_rows, T]``.
    """
    return _resample_rows(spec, log_warp_heights(out_rows, spec.device))


def unwarp_to_linear(spec: torch.Tensor, out_rows: int = LINEAR_ROWS) -> torch.Tensor:
    """Map log-frequency rows back to linear-frequency rows.

    Args:
        spec: ``[B, C, 256, T]`` log-frequency values (a mask, typically).
        out_rows: number of linear rows (``n_fft // 2 + 1``).

    Returns:
        ``[B, C, out_rows, T]``.
    """
    return _resample_rows(spec, log_unwarp_heights(out_rows, spec.device))


# --- mel transform (CLIPSonic) -------------------------------------------------------------


@dataclass(frozen=True)
class MelConfig:
    """Mel spectrogram settings (defaults: the AudioLDM / HiFi-GAN 16 kHz convention)."""

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 160
    win_length: int = 1024
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float = 8000.0
    log_floor: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels"):
            value = getattr(self, name)
            if not (is_whole_number(value) and value >= 1):
                raise ValueError(f"mel {name} must be a whole number of at least 1, not {value!r}.")
        if self.win_length > self.n_fft:
            raise ValueError(f"mel win_length {self.win_length} is longer than n_fft {self.n_fft}.")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(f"mel f_min {self.f_min} and f_max {self.f_max} must satisfy 0 <= f_min < f_max <= "
                             f"{self.sample_rate / 2:g} (half the sample rate).")
        if not 0 < self.log_floor < math.inf:
            raise ValueError(f"mel log_floor must be a positive number, not {self.log_floor!r}.")

    def frames(self, samples: int) -> int:
        """Number of mel frames for ``samples`` samples (centred frames)."""
        return samples // self.hop_length + 1

    def samples(self, frames: int) -> int:
        """Number of samples that ``frames`` mel frames stand for."""
        return (frames - 1) * self.hop_length


class MelSpectrogram(torch.nn.Module):
    """Log-mel spectrogram and its Griffin-Lim inverse.

    ``forward`` maps ``[..., samples]`` waveforms to ``[..., n_mels, frames]`` natural-log
    magnitudes ``log(max(mel, log_floor))``; ``inverse`` maps them back to waveforms. Both
    run in float32 (or float64, when given) outside autocast: under bf16 mixed precision a
    bf16 mel would round the diffusion model's targets to three significant digits, and
    Griffin-Lim has no bf16 complex type.
    """

    def __init__(self, config: MelConfig = MelConfig()):
        super().__init__()
        self.config = config
        fbank = torchaudio.functional.melscale_fbanks(
            n_freqs=config.n_fft // 2 + 1,
            f_min=config.f_min,
            f_max=config.f_max,
            n_mels=config.n_mels,
            sample_rate=config.sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )  # [n_freqs, n_mels]
        self.register_buffer("fbank", fbank, persistent=False)
        self.register_buffer("fbank_pinv", torch.linalg.pinv(fbank), persistent=False)
        self._stft = STFTConfig(config.n_fft, config.hop_length, config.win_length)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """``[..., samples]`` -> ``[..., n_mels, frames]`` log-mel."""
        with torch.autocast(device_type=wave.device.type, enabled=False):
            mag = stft(_full_precision(wave), self._stft).abs()  # [..., F, T]
            mel = torch.matmul(mag.transpose(-1, -2), self.fbank.to(mag.dtype)).transpose(-1, -2)
            return torch.log(torch.clamp(mel, min=self.config.log_floor))

    def inverse(self, log_mel: torch.Tensor, n_iter: int = 32, length: int | None = None) -> torch.Tensor:
        """Griffin-Lim inverse.

        Args:
            log_mel: ``[..., n_mels, frames]`` natural-log mel magnitudes.
            n_iter: Griffin-Lim iterations.
            length: output samples; ``(frames - 1) * hop_length`` by default.

        Returns:
            ``[..., length]`` waveform.
        """
        with torch.autocast(device_type=log_mel.device.type, enabled=False):
            return self._griffin_lim(_full_precision(log_mel), n_iter, length)

    def _griffin_lim(self, log_mel: torch.Tensor, n_iter: int, length: int | None) -> torch.Tensor:
        frames = log_mel.shape[-1]
        length = self.config.samples(frames) if length is None else length
        mel = torch.exp(log_mel)
        mag = torch.matmul(mel.transpose(-1, -2), self.fbank_pinv.to(mel.dtype)).transpose(-1, -2)
        mag = torch.clamp(mag, min=0.0)
        lead = mag.shape[:-2]
        flat = mag.reshape(-1, *mag.shape[-2:])
        window = torch.hann_window(self.config.win_length, device=flat.device, dtype=flat.dtype)
        wave = torchaudio.functional.griffinlim(
            flat,
            window=window,
            n_fft=self.config.n_fft,
            hop_length=self.config.hop_length,
            win_length=self.config.win_length,
            power=1.0,
            n_iter=n_iter,
            momentum=0.99,
            length=length,
            rand_init=False,
        )
        return wave.reshape(*lead, length)
