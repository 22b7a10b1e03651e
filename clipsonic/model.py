"""The CLIPSonic mel diffusion model: a diffusers U-Net over the log-mel image, conditioned
on one CLIP embedding, with a learned null condition for classifier-free guidance.

The mel convention is the project's (``clipcore.spectral.MelConfig``: 16 kHz, hop 160,
64 mel rows, natural-log magnitudes). The model sees normalized mels: per-row mean and
standard deviation estimated on the training data, kept as buffers so that they travel
with the checkpoint.

How the condition enters the U-Net (a choice the issue asks to explain):
the CLIP embedding is projected **both** to a class embedding, added to the timestep
embedding, and to a short sequence of tokens for cross-attention.

- The class embedding reaches every ResNet block at every resolution for the cost of two
  linear layers. This is what makes the ``tiny`` preset work at all: on a CPU it can only
  afford attention at its lowest resolution (cross-attention over 64 x 256 mel pixels takes
  minutes per sampling run), so a condition that lived only in cross-attention would touch
  a single level of the network. With ``time_scale_shift="scale_shift"`` (FiLM, as in the
  toy config) this embedding scales and shifts each block's normalised features rather than
  being added to them, a firmer hold of the condition.
- Cross-attention needs a *sequence*: a single token is useless (softmax over one key is
  always 1, so attention degenerates to a constant bias). The embedding is therefore
  projected to ``cond_tokens`` tokens, which lets the attention layers of the ``paper``
  preset weigh different parts of the condition per time-frequency position, as Imagen-style
  text-to-image U-Nets do with a pooled vector plus a token sequence.

One learned null embedding (in standardised CLIP space) replaces the condition when it is dropped
(training) or for the unconditional branch of guidance (sampling); both paths derive from it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch import nn

from clipcore.checkpoint import Pretrained
from clipcore.errors import is_whole_number
from clipcore.spectral import MelConfig, MelSpectrogram

__all__ = ["CLIPSonic", "PREDICTION_TYPES"]

PREDICTION_TYPES = ("epsilon", "v_prediction")

PLACEHOLDER_MEL_MEAN, PLACEHOLDER_MEL_STD = -5.0, 2.5
"""Mel normalization of a model whose statistics were never set from data."""

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "embed_dim": 32,
        "block_out_channels": [32, 64, 64],
        "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        "layers_per_block": 1,
        "attention_head_dim": 8,
        "norm_num_groups": 8,
        "cond_tokens": 4,
    },
    # Sized for a GPU cluster (134 M parameters): attention in the two lowest levels
    # (16 x T/4 and 8 x T/8 mel pixels), ViT-L/14 embeddings.
    "paper": {
        "embed_dim": 768,
        "block_out_channels": [128, 256, 384, 512],
        "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        "layers_per_block": 2,
        "attention_head_dim": 64,
        "norm_num_groups": 32,
        "cond_tokens": 8,
    },
}
"""Constructor arguments of the named models."""


class CLIPSonic(Pretrained, nn.Module):
    """Mel diffusion U-Net conditioned on a CLIP embedding.

    Args:
        embed_dim: size of the CLIP embedding that conditions the model.
        block_out_channels: channels per U-Net level (one level fewer downsamplings).
        down_block_types: diffusers down block names, one per level.
        up_block_types: diffusers up block names, one per level.
        layers_per_block: ResNet layers per level.
        attention_head_dim: diffusers attention head setting.
        norm_num_groups: group-norm groups.
        cond_tokens: cross-attention tokens the embedding is projected to.
        prediction_type: ``"v_prediction"`` (default: on the toy overfitting task it learns
            in 150 steps what epsilon prediction has not learnt by then) or ``"epsilon"``.
        num_train_timesteps: diffusion steps of the training noise schedule.
        beta_schedule, beta_start, beta_end: the diffusers beta schedule (default: AudioLDM's;
            ``squaredcos_cap_v2`` ends at a signal scale of 5e-5, which makes the first
            sampling steps blow up any error of an epsilon prediction).
        query_encoder: spec of the CLIP model whose space the condition lives in (an
            open_clip name or a checkpoint folder), recorded so that a ``Generator`` can
            find it; ``None`` when unknown.
        mel: overrides of :class:`~clipcore.spectral.MelConfig` fields.
        time_scale_shift: how the timestep-plus-class embedding enters each ResNet block:
            ``"default"`` adds it to the features; ``"scale_shift"`` (FiLM) scales and
            shifts the normalised features with it, a stronger hold of the condition.
    """

    PRESETS = PRESETS

    def __init__(
        self,
        embed_dim: int = 512,
        block_out_channels: list[int] = PRESETS["tiny"]["block_out_channels"],
        down_block_types: list[str] = PRESETS["tiny"]["down_block_types"],
        up_block_types: list[str] = PRESETS["tiny"]["up_block_types"],
        layers_per_block: int = 1,
        attention_head_dim: int = 8,
        norm_num_groups: int = 8,
        cond_tokens: int = 4,
        prediction_type: str = "v_prediction",
        num_train_timesteps: int = 1000,
        beta_schedule: str = "scaled_linear",
        beta_start: float = 0.0015,
        beta_end: float = 0.0195,
        query_encoder: str | None = None,
        mel: dict | None = None,
        time_scale_shift: str = "default",
    ):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, not {prediction_type!r}.")
        if not (is_whole_number(num_train_timesteps) and num_train_timesteps >= 1):
            raise ValueError(f"num_train_timesteps must be a whole number of at least 1, not {num_train_timesteps!r}.")
        try:  # the schedule every sampler is built with: an unknown name fails here, not after loading
            DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, beta_start=beta_start,
                          beta_end=beta_end)
        except NotImplementedError:
            raise ValueError(f"beta_schedule {beta_schedule!r} is not a diffusers beta schedule.") from None
        self.embed_dim = embed_dim
        self.prediction_type = prediction_type
        self.num_train_timesteps = num_train_timesteps
        self.betas = {"beta_schedule": beta_schedule, "beta_start": beta_start, "beta_end": beta_end}
        self.query_encoder = query_encoder
        self.mel_config = MelConfig(**(mel or {}))
        self.mel = MelSpectrogram(self.mel_config)
        self.downsample_factor = 2 ** (len(block_out_channels) - 1)
        if self.mel_config.n_mels % self.downsample_factor:
            raise ValueError(f"{self.mel_config.n_mels} mel rows do not halve {len(block_out_channels) - 1} times.")
        cross_dim = block_out_channels[-1]
        self.unet = UNet2DConditionModel(
            sample_size=None,
            in_channels=1,
            out_channels=1,
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups,
            cross_attention_dim=cross_dim,
            class_embed_type="projection",
            resnet_time_scale_shift=time_scale_shift,
            projection_class_embeddings_input_dim=embed_dim,
        )
        self.cond_tokens = cond_tokens
        self.to_tokens = nn.Linear(embed_dim, cond_tokens * cross_dim)
        self.null_embedding = nn.Parameter(torch.randn(embed_dim))  # in standardised space
        n_mels = self.mel_config.n_mels
        self.register_buffer("mel_mean", torch.full((n_mels,), PLACEHOLDER_MEL_MEAN))
        self.register_buffer("mel_std", torch.full((n_mels,), PLACEHOLDER_MEL_STD))
        # Condition standardisation: CLIP embeddings of one domain share a large common
        # component (random frames of the toy world have cosine 0.98), so the mean is removed
        # and one scalar scale (the RMS deviation) keeps the geometry; per-dimension scales
        # would blow up the text-image gap of the zero-shot mode in low-variance dimensions.
        # Defaults (mean 0, scale 1/sqrt(D)) map unit vectors to unit-variance entries.
        self.register_buffer("cond_mean", torch.zeros(embed_dim))
        self.register_buffer("cond_std", torch.full((1,), 1 / math.sqrt(embed_dim)))

    # --- presets ------------------------------------------------------------------------

    @classmethod
    def tiny(cls, seed: int | None = 0, **overrides: Any) -> "CLIPSonic":
        """A CPU-sized model: attention only at the lowest of three levels (32-d
        embeddings by default); see :meth:`~clipcore.checkpoint.Pretrained.from_preset`."""
        return cls.from_preset("tiny", seed, **overrides)

    @classmethod
    def paper(cls, seed: int | None = 0, **overrides: Any) -> "CLIPSonic":
        """The GPU-cluster model (ViT-L/14 embeddings by default)."""
        return cls.from_preset("paper", seed, **overrides)

    # --- mel handling -------------------------------------------------------------------

    def padded_frames(self, frames: int) -> int:
        """Smallest frame count >= ``frames`` that the U-Net can halve to its lowest level."""
        return -(-frames // self.downsample_factor) * self.downsample_factor

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """``[B, samples]`` waveforms -> ``[B, n_mels, frames]`` log-mel."""
        return self.mel(wave)

    def normalize(self, log_mel: torch.Tensor) -> torch.Tensor:
        """``[B, n_mels, T]`` log-mel -> ``[B, 1, n_mels, T]`` model space."""
        return ((log_mel - self.mel_mean[:, None]) / self.mel_std[:, None]).unsqueeze(1)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 1, n_mels, T]`` model space -> ``[B, n_mels, T]`` log-mel."""
        return x.squeeze(1) * self.mel_std[:, None] + self.mel_mean[:, None]

    @torch.no_grad()
    def set_statistics(self, mel_mean=None, mel_std=None, cond_mean=None, cond_std=None) -> None:
        """Set the normalization of mels (``[n_mels]`` mean and std per row) and of
        conditions (``[D]`` mean, scalar RMS deviation); ``None`` keeps a value."""
        for name, value in (("mel_mean", mel_mean), ("mel_std", mel_std), ("cond_mean", cond_mean), ("cond_std", cond_std)):
            if value is not None:
                buffer = getattr(self, name)
                value = torch.as_tensor(value, dtype=buffer.dtype, device=buffer.device).reshape(buffer.shape)
                buffer.copy_(value.clamp(min=1e-6) if name.endswith("std") else value)

    @property
    def has_placeholder_statistics(self) -> bool:
        """Whether the mel normalisation is still the placeholder (never set from data)."""
        return bool((self.mel_mean == PLACEHOLDER_MEL_MEAN).all() and (self.mel_std == PLACEHOLDER_MEL_STD).all())

    def set_mel_statistics(self, log_mels: torch.Tensor) -> None:
        """Set the per-row mel normalization from ``[B, n_mels, T]`` training log-mels."""
        rows = log_mels.transpose(0, 1).reshape(log_mels.shape[1], -1)
        self.set_statistics(mel_mean=rows.mean(1), mel_std=rows.std(1).clamp(min=1e-3))

    # --- prediction ---------------------------------------------------------------------

    def sampling_bytes(self, batch: int, frames: int) -> int:
        """The working memory of sampling ``batch`` mel spectrograms of ``frames`` frames at
        once (one guided U-Net pass over ``2 * batch``), in bytes: the activations the U-Net
        holds, about ``(5 + 4 * layers_per_block)`` float32 maps of every level's channels,
        the level's rows and frames. Measured on a CPU (peak resident memory while sampling,
        less that before): the tiny preset, 4 clips of 10 s, 1.01 GB (this gives 0.96), 4 of
        20 s 1.74 (1.92), 8 of 10 s 1.85 (1.92); the quick start's half-width tiny, 16 of
        60 s, 11.0 (11.5); the paper preset, 2 of 5 s, 1.41 (1.49)."""
        config = self.unet.config
        maps = 5 + 4 * config.layers_per_block
        channels = sum(c / 4**level for level, c in enumerate(config.block_out_channels))
        return int(2 * batch * frames * self.mel_config.n_mels * 4 * maps * channels)

    def scheduler_config(self) -> dict[str, Any]:
        """The training noise schedule, as keyword arguments for any diffusers scheduler."""
        return {
            "num_train_timesteps": self.num_train_timesteps,
            **self.betas,
            "prediction_type": self.prediction_type,
        }

    def condition(self, embeddings: torch.Tensor | None, drop: torch.Tensor | None = None, batch: int = 1):
        """The condition inputs of the U-Net.

        Args:
            embeddings: ``[B, D]`` CLIP embeddings, or ``None`` for the null condition.
            drop: ``[B]`` bool, rows replaced by the null condition.
            batch: batch size when ``embeddings`` is ``None``.

        Returns:
            ``(class_input [B, D], tokens [B, cond_tokens, C])``: the standardised
            embedding and its token projection.
        """
        null = self.null_embedding
        if embeddings is None:
            scaled = null.expand(batch, -1)
        else:
            scaled = (embeddings - self.cond_mean) / self.cond_std
            if drop is not None:
                scaled = torch.where(drop[:, None], null.to(scaled.dtype), scaled)
        tokens = self.to_tokens(scaled).view(scaled.shape[0], self.cond_tokens, -1)
        return scaled, tokens

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        embeddings: torch.Tensor | None,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict noise (or v) for noisy normalized mels.

        Args:
            x: ``[B, 1, n_mels, T]`` noisy normalized mels, ``T`` a multiple of
                ``downsample_factor``.
            timesteps: ``[B]`` or scalar diffusion step.
            embeddings: ``[B, D]`` condition, or ``None`` for the null condition.
            drop: ``[B]`` bool, condition dropout mask.

        Returns:
            ``[B, 1, n_mels, T]`` prediction.
        """
        class_input, tokens = self.condition(embeddings, drop, batch=x.shape[0])
        timesteps = torch.as_tensor(timesteps, device=x.device).expand(x.shape[0])
        return self.unet(x, timesteps, encoder_hidden_states=tokens, class_labels=class_input).sample

    def guided(self, x: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor, guidance: float) -> torch.Tensor:
        """Classifier-free guided prediction ``uncond + guidance * (cond - uncond)``.

        The conditional and unconditional branches run as one batch of ``2B``.

        Args:
            x: ``[B, 1, n_mels, T]``; timesteps: scalar or ``[B]``; embeddings: ``[B, D]``.

        Returns:
            ``[B, 1, n_mels, T]``.
        """
        batch = x.shape[0]
        drop = torch.arange(2 * batch, device=x.device) < batch
        timesteps = torch.as_tensor(timesteps, device=x.device).expand(batch)
        both = self(x.repeat(2, 1, 1, 1), timesteps.repeat(2), embeddings.repeat(2, 1), drop=drop)
        uncond, cond = both.chunk(2)
        return uncond + guidance * (cond - uncond)
