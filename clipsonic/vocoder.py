"""Vocoders: log-mel spectrogram to waveform, behind one interface.

Every vocoder is an ``nn.Module`` whose ``forward(log_mel [B, n_mels, T], length=None)``
returns ``[B, length]`` waveforms at ``vocoder.sample_rate``; ``length`` defaults to the
samples the frames stand for, ``(T - 1) * hop``. The mels are the project's
(``clipcore.spectral``: 16 kHz, hop 160, 64 rows, natural log).

- :class:`GriffinLim` needs no weights and is the default.
- :class:`HiFiGAN` is the HiFi-GAN V1 generator. It loads from a local folder in three
  layouts: this project's checkpoint format; a ``config.json`` with HiFi-GAN's
  hyper-parameters (``upsample_rates``, ``resblock_kernel_sizes``, ...) beside
  ``model.safetensors`` or ``pytorch_model.bin`` (the layout of the ``vocoder/`` folder of
  the diffusers AudioLDM pipelines, whose 16 kHz / 64-mel generator uses this mel
  convention); or that ``config.json`` beside an official HiFi-GAN generator file
  (``generator_*``, ``*.ckpt``, ``*.pt``, ``*.pth``: weight-normed, under a ``generator``
  key), as AudioLDM ships it. Weight files are read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from clipcore.checkpoint import CONFIG_NAME, CheckpointError, Pretrained, read_config, read_torch_file
from clipcore.spectral import MelConfig, MelSpectrogram

__all__ = ["GriffinLim", "HiFiGAN", "load_vocoder", "VOCODER_NAMES"]

VOCODER_NAMES = ("griffinlim",)
"""Vocoder specs that are names rather than folders."""


def _fit_length(wave: torch.Tensor, length: int) -> torch.Tensor:
    if wave.shape[-1] >= length:
        return wave[..., :length]
    return F.pad(wave, (0, length - wave.shape[-1]))


class GriffinLim(nn.Module):
    """Griffin-Lim phase reconstruction through the mel pseudo-inverse (no weights).

    Args:
        n_iter: Griffin-Lim iterations (more: fewer phase artefacts, slower).
        mel: overrides of :class:`~clipcore.spectral.MelConfig` fields.
    """

    def __init__(self, n_iter: int = 32, mel: dict | None = None):
        super().__init__()
        self.n_iter = n_iter
        self.mel = MelSpectrogram(MelConfig(**(mel or {})))
        self.sample_rate = self.mel.config.sample_rate
        self.hop_length = self.mel.config.hop_length

    def forward(self, log_mel: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """``[B, n_mels, T]`` log-mel -> ``[B, length]`` waveform."""
        return self.mel.inverse(log_mel, n_iter=self.n_iter, length=length)


class _ResBlock(nn.Module):
    """HiFi-GAN multi-receptive-field residual block (type 1)."""

    def __init__(self, channels: int, kernel_size: int, dilations: list[int], slope: float):
        super().__init__()
        self.slope = slope
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=(kernel_size * d - d) // 2)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv1, conv2 in zip(self.convs1, self.convs2):
            y = conv2(F.leaky_relu(conv1(F.leaky_relu(x, self.slope)), self.slope))
            x = x + y
        return x


class HiFiGAN(Pretrained, nn.Module):
    """HiFi-GAN V1 generator (defaults: the 16 kHz, 64-mel, hop-160 AudioLDM vocoder).

    Parameter names follow the diffusers/transformers ``SpeechT5HifiGan`` layout, so its
    ``vocoder/`` folders load directly. Arguments are HiFi-GAN's hyper-parameters; the
    product of ``upsample_rates`` is the hop length.
    """

    def __init__(
        self,
        model_in_dim: int = 64,
        sampling_rate: int = 16000,
        upsample_initial_channel: int = 1024,
        upsample_rates: list[int] = [5, 4, 2, 2, 2],
        upsample_kernel_sizes: list[int] = [16, 16, 8, 4, 4],
        resblock_kernel_sizes: list[int] = [3, 7, 11],
        resblock_dilation_sizes: list[list[int]] = [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        leaky_relu_slope: float = 0.1,
        normalize_before: bool = False,
    ):
        super().__init__()
        self.sample_rate = sampling_rate
        self.hop_length = 1
        for rate in upsample_rates:
            self.hop_length *= rate
        self.slope = leaky_relu_slope
        self.normalize_before = normalize_before
        self.num_kernels = len(resblock_kernel_sizes)
        self.conv_pre = nn.Conv1d(model_in_dim, upsample_initial_channel, 7, padding=3)
        self.upsampler = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        channels = upsample_initial_channel
        for i, (rate, kernel) in enumerate(zip(upsample_rates, upsample_kernel_sizes)):
            channels = upsample_initial_channel // 2 ** (i + 1)
            self.upsampler.append(
                nn.ConvTranspose1d(2 * channels, channels, kernel, stride=rate, padding=(kernel - rate) // 2)
            )
            for size, dilations in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                self.resblocks.append(_ResBlock(channels, size, dilations, leaky_relu_slope))
        self.conv_post = nn.Conv1d(channels, 1, 7, padding=3)
        self.register_buffer("mean", torch.zeros(model_in_dim))
        self.register_buffer("scale", torch.ones(model_in_dim))

    def forward(self, log_mel: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """``[B, n_mels, T]`` log-mel -> ``[B, length]`` waveform (default ``(T - 1) * hop``)."""
        frames = log_mel.shape[-1]
        if self.normalize_before:
            log_mel = (log_mel - self.mean[:, None]) / self.scale[:, None]
        x = self.conv_pre(log_mel)
        for i, upsample in enumerate(self.upsampler):
            x = upsample(F.leaky_relu(x, self.slope))
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            x = sum(block(x) for block in blocks) / self.num_kernels
        wave = torch.tanh(self.conv_post(F.leaky_relu(x))).squeeze(1)  # final slope 0.01, as published
        return _fit_length(wave, (frames - 1) * self.hop_length if length is None else length)

    @classmethod
    def load(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> "HiFiGAN":
        """Load a generator from a local folder in any of the layouts of the module doc.

        Raises:
            CheckpointError: the folder, its config or its weights cannot be used.
        """
        directory = Path(directory)
        path = directory / CONFIG_NAME
        if not path.is_file():
            raise CheckpointError(f"{directory}: not a vocoder folder (it has no {CONFIG_NAME}).")
        try:
            config = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{path}: is not valid JSON.") from None
        if isinstance(config, dict) and "class" in config:
            read_config(directory)
            return cls.from_pretrained(directory, map_location=map_location)
        if not isinstance(config, dict) or "upsample_rates" not in config:
            raise CheckpointError(f"{path}: is neither a project checkpoint nor a HiFi-GAN config.")
        known = {k: config[k] for k in cls.init_keys() if k in config}
        if "num_mels" in config:  # the official HiFi-GAN config names it so
            known.setdefault("model_in_dim", config["num_mels"])
        try:
            model = cls(**known)
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: holds HiFi-GAN settings that do not build ({error}).") from None
        state = _official_to_local(_read_weights(directory))
        expected = set(model.state_dict())
        # mean and scale are only read with normalize_before; without them such a model would
        # silently normalise with 0 and 1.
        optional = set() if model.normalize_before else {"mean", "scale"}
        missing = sorted(expected - set(state) - optional)
        if model.normalize_before and {"mean", "scale"} & set(missing):
            raise CheckpointError(
                f"{directory}: the config sets normalize_before but the weights lack the mel "
                f"{' and '.join(name for name in ('mean', 'scale') if name in missing)} it normalises with."
            )
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            first = (missing or unexpected)[0]
            raise CheckpointError(
                f"{directory}: weights do not fit its config ({len(missing)} missing, "
                f"{len(unexpected)} unexpected tensors, e.g. {first})."
            )
        try:
            model.load_state_dict(state, strict=False)
        except RuntimeError as error:
            reason = " ".join(str(error).split())[:300]
            raise CheckpointError(f"{directory}: weights do not fit its config ({reason}).") from None
        return model.to(map_location).eval()

    @staticmethod
    def init_keys() -> tuple[str, ...]:
        return (
            "model_in_dim", "sampling_rate", "upsample_initial_channel", "upsample_rates",
            "upsample_kernel_sizes", "resblock_kernel_sizes", "resblock_dilation_sizes",
            "leaky_relu_slope", "normalize_before",
        )


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    for name in ("model.safetensors", "diffusion_pytorch_model.safetensors"):
        if (directory / name).is_file():
            try:
                return load_file(str(directory / name))
            except (SafetensorError, OSError) as error:
                raise CheckpointError(f"{directory / name}: is truncated or corrupt ({error}).") from None
    candidates = [directory / "pytorch_model.bin"] + sorted(
        p for p in directory.iterdir() if p.name.startswith("generator") or p.suffix in (".ckpt", ".pt", ".pth")
    )
    for path in candidates:
        if path.is_file():
            state = read_torch_file(path)
            state = state.get("generator", state) if isinstance(state, dict) else state
            if not isinstance(state, dict):
                raise CheckpointError(f"{path}: holds no state dict.")
            return state
    raise CheckpointError(f"{directory}: has no vocoder weights (model.safetensors, pytorch_model.bin or generator file).")


def _official_to_local(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename official HiFi-GAN keys (``ups.``) and fold weight norm into plain weights."""
    state = {("upsampler." + k[4:] if k.startswith("ups.") else k): v for k, v in state.items()}
    pairs = ((".weight_g", ".weight_v"), (".parametrizations.weight.original0", ".parametrizations.weight.original1"))
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for gain, direction in pairs:
            if key.endswith(gain) and key[: -len(gain)] + direction in state:
                stem = key[: -len(gain)]
                v = state[stem + direction]
                out[stem + ".weight"] = value * v / v.norm(dim=tuple(range(1, v.dim())), keepdim=True)
                break
            if key.endswith(direction) and key[: -len(direction)] + gain in state:
                break
        else:
            out[key] = value
    return out


def load_vocoder(spec: str | os.PathLike | None = None, mel: dict | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """A vocoder from a spec: ``None`` or ``"griffinlim"`` (default), or a local folder.

    Raises:
        CheckpointError: the folder cannot be loaded or its mel bins, rate or hop do not fit the mels.
    """
    if spec is None or str(spec).lower() in VOCODER_NAMES:
        return GriffinLim(mel=mel).to(device)
    vocoder = HiFiGAN.load(spec, map_location=device)
    config = MelConfig(**(mel or {}))
    if vocoder.conv_pre.in_channels != config.n_mels:
        raise CheckpointError(f"{spec}: vocoder takes {vocoder.conv_pre.in_channels} mel bins, but the mels have "
                              f"{config.n_mels}.")
    if vocoder.hop_length != config.hop_length or vocoder.sample_rate != config.sample_rate:
        raise CheckpointError(
            f"{spec}: vocoder works at {vocoder.sample_rate} Hz with hop {vocoder.hop_length}, but the mels "
            f"are {config.sample_rate} Hz with hop {config.hop_length}."
        )
    return vocoder
