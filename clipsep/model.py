"""The CLIPSep separation network (Dong et al., ICLR 2023), as in the official release.

A mask U-Net reads the log-frequency log magnitude of the mixture once and gives
``mask_channels`` feature maps ``U``; a query (a CLIP embedding) picks a weighted sum of
them as the mask logits of the sound it describes::

    q = sigmoid(query_proj(query))                        # [C]
    mask_logits = sum_c q_c * scale_c * U_c + bias        # [256, T]

The paper's baselines replace the CLIP query by learned vectors (``learned_queries``
rows of an embedding table read through the same ``query_proj``): LabelSep has one row
per instrument label (a supervised reference), PIT one row per output of a query-free
network trained with permutation-invariant training.

Noise heads (noise-invariant training, CLIPSep-NIT) use the same sum with
``p_j = sigmoid(noise_proj[j](mean_k query_proj(query_k)))``: query-free masks that
absorb off-screen sound during training.

The U-Net is the official "unet_block" nesting flattened into a list of levels: level 0
is a plain 4x4 stride-2 convolution of the input, levels ``1 .. L-2`` are LeakyReLU(0.2),
convolution and BatchNorm, the innermost level has no BatchNorm; the way up is ReLU,
bilinear x2 upsampling (``align_corners=True``) and a 3x3 convolution, with BatchNorm on
every level but the outermost, whose convolution has a bias. As in the official code the
LeakyReLU runs in place, so each skip connection carries the activated encoder output.
:mod:`clipsep.convert` maps the official parameter names onto these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipcore.checkpoint import Pretrained
from clipcore.spectral import LOG_ROWS, STFTConfig, warp_to_log

__all__ = ["CLIPSep", "PRESETS", "level_channels"]

MAG_EPS = 1e-10

PRESETS: dict[str, dict] = {
    "paper": {},  # the constructor's defaults: the published network
    "tiny": {"query_dim": 32, "base_channels": 8, "mask_channels": 8},
}
"""Constructor arguments of the named networks."""


def level_channels(base_channels: int, layers: int) -> list[int]:
    """Encoder channels per U-Net level: ``base * 2**min(i, 3)`` (64-128-256-512-512-...)."""
    return [base_channels * 2 ** min(i, 3) for i in range(layers)]


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` with channels-last strides (the weights keep theirs): oneDNN's convolutions and
    their gradients run 1.6x faster on a CPU (a tiny training step: 0.13 -> 0.08 s). A
    one-channel input is ambiguous, so the U-Net sets it at every level until a
    convolution's output has it. Left alone when compiling or exporting (ONNX has no strides)."""
    return x if torch.compiler.is_compiling() else x.contiguous(memory_format=torch.channels_last)


class _Down(nn.Module):
    """One encoder level: ``[LeakyReLU] -> conv 4x4 stride 2 -> [BatchNorm]``."""

    def __init__(self, in_channels: int, out_channels: int, activate: bool, norm: bool):
        super().__init__()
        self.activate = activate
        self.conv = nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(skip, out)``: the (activated) input kept for the skip connection,
        and the level's output at half the height and width."""
        if self.activate:
            x = F.leaky_relu(x, 0.2)
        return x, self.norm(self.conv(x))


class _Up(nn.Module):
    """One decoder level: ``ReLU -> bilinear x2 (align_corners) -> conv 3x3 -> [BatchNorm]``."""

    def __init__(self, in_channels: int, out_channels: int, outermost: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=outermost)
        self.norm = nn.Identity() if outermost else nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(F.relu(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.norm(self.conv(x))


def _official_init(module: nn.Module) -> None:
    """The official initialisation: convolutions N(0, 1e-3), BatchNorm scales N(1, 0.02)
    with zero shifts, linear weights N(0, 1e-4) (biases keep PyTorch's default)."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 1e-3)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, 1e-4)


class CLIPSep(Pretrained, nn.Module):
    """Query-conditioned mask U-Net with optional noise heads.

    Args:
        query_dim: size of the query embedding (512 for CLIP ViT-B/32).
        base_channels: channels of the first U-Net level (64 in the paper).
        mask_channels: U-Net output channels mixed by the query (32 in the paper).
        layers: U-Net levels (7 in the paper); the number of frames must be a multiple
            of ``2**layers``.
        noise_heads: noise heads of noise-invariant training (0 = plain CLIPSep,
            2 = CLIPSep-NIT).
        sample_rate: audio rate the model was trained at.
        segment_samples: training segment length (65535 samples = 256 STFT frames).
        n_fft: STFT size (window length equals it).
        hop_length: STFT hop.
        learned_queries: rows of the learned query table ``learned_query`` (0 = none;
            LabelSep: one per label, PIT: one per output mask); its rows are queries like
            CLIP embeddings.
        query_scale: factor on every query before ``query_proj`` (1 = the published
            network, which read raw CLIP embeddings of norm about 10). Unit-norm queries
            differ by a fraction of a unit between classes, so at 1 the channel weights
            ``sigmoid(query_proj(q))`` start (and long stay) the same for every query.
        init: ``"official"`` (convolutions N(0, 1e-3), linear weights N(0, 1e-4)) or
            ``"pytorch"`` (PyTorch's default Kaiming-uniform initialisation): a small
            network trained for minutes has no time to grow out of the official one.
    """

    PRESETS = PRESETS

    def __init__(
        self,
        query_dim: int = 512,
        base_channels: int = 64,
        mask_channels: int = 32,
        layers: int = 7,
        noise_heads: int = 2,
        sample_rate: int = 16000,
        segment_samples: int = 65535,
        n_fft: int = 1024,
        hop_length: int = 256,
        learned_queries: int = 0,
        query_scale: float = 1.0,
        init: str = "official",
    ):
        super().__init__()
        if layers < 2:
            raise ValueError(f"CLIPSep needs at least 2 U-Net layers, got {layers}.")
        if init not in ("official", "pytorch"):
            raise ValueError(f"init must be 'official' or 'pytorch', got {init!r}.")
        if not query_scale > 0:
            raise ValueError(f"query_scale must be positive, got {query_scale}.")
        self.query_scale = float(query_scale)
        self.query_dim = query_dim
        self.mask_channels = mask_channels
        self.num_noise_heads = noise_heads
        self.sample_rate = sample_rate
        self.segment_samples = segment_samples
        self.stft = STFTConfig(n_fft=n_fft, hop_length=hop_length, win_length=n_fft)
        self.frames_multiple = 2**layers

        chans = level_channels(base_channels, layers)
        self.input_norm = nn.BatchNorm2d(1)
        self.down = nn.ModuleList(
            _Down(
                1 if i == 0 else chans[i - 1],
                chans[i],
                activate=i > 0,
                norm=0 < i < layers - 1,
            )
            for i in range(layers)
        )
        # up[i] undoes down[i]: it reads the level's skip-concatenated output (only the
        # innermost level has none) and gives the channels of the level above.
        self.up = nn.ModuleList(
            _Up(
                chans[i] if i == layers - 1 else 2 * chans[i],
                mask_channels if i == 0 else chans[i - 1],
                outermost=i == 0,
            )
            for i in range(layers)
        )
        self.query_proj = nn.Linear(query_dim, mask_channels)
        self.noise_proj = nn.ModuleList(nn.Linear(mask_channels, mask_channels) for _ in range(noise_heads))
        self.mask_scale = nn.Parameter(torch.ones(mask_channels))
        self.mask_bias = nn.Parameter(torch.zeros(1))
        # MAG_EPS as a one-element tensor, not a Python float: ONNX graph optimizers drop
        # additions of a scalar within 1e-8 of zero (onnxscript's add-zero rule), which made
        # the exported network's logits NaN wherever a frame is silent. Not saved.
        self.register_buffer("mag_eps", torch.full((1,), MAG_EPS), persistent=False)
        if init == "official":
            self.apply(_official_init)
        # After the official initialisation: the rows keep PyTorch's N(0, 1), as the official nn.Embedding does.
        self.learned_query = nn.Embedding(learned_queries, query_dim) if learned_queries else None

    @classmethod
    def paper(cls, seed: int | None = 0, **overrides) -> "CLIPSep":
        """The published network (30,292,771 parameters with 2 noise heads); see
        :meth:`~clipcore.checkpoint.Pretrained.from_preset` for ``seed``."""
        return cls.from_preset("paper", seed, **overrides)

    @classmethod
    def tiny(cls, seed: int | None = 0, **overrides) -> "CLIPSep":
        """A small network of the same structure (``PRESETS["tiny"]`` with ``overrides``,
        e.g. ``query_dim=16, layers=5``), initialised from ``seed``; for tests and the toy world."""
        return cls.from_preset("tiny", seed, **overrides)

    def features(self, mag_mix: torch.Tensor) -> torch.Tensor:
        """U-Net features of a mixture.

        Args:
            mag_mix: ``[B, 1, 513, T]`` linear-frequency magnitude, ``T`` a multiple of
                ``frames_multiple``.

        Returns:
            ``[B, mask_channels, 256, T]``.
        """
        if mag_mix.dim() != 4 or mag_mix.shape[1] != 1 or mag_mix.shape[2] != self.stft.n_freqs:
            raise ValueError(
                f"mag_mix must be [B, 1, {self.stft.n_freqs}, T], got {list(mag_mix.shape)}."
            )
        if mag_mix.shape[-1] % self.frames_multiple:
            raise ValueError(
                f"the number of frames ({mag_mix.shape[-1]}) must be a multiple of "
                f"{self.frames_multiple} for a {len(self.down)}-level U-Net."
            )
        x = self.input_norm(torch.log(warp_to_log(mag_mix + self.mag_eps, LOG_ROWS)))
        skips = []
        for level in self.down:
            skip, x = level(_channels_last(x))
            skips.append(skip)
        x = self.up[-1](x)
        for i in range(len(self.down) - 2, -1, -1):
            # Level i+1's output: its (activated) input next to what the deeper levels made.
            x = self.up[i](torch.cat([skips[i + 1], x], dim=1))
        return x

    def _synthesize(self, weights: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """``[B, K, C]`` channel weights x ``[B, C, H, T]`` features -> ``[B, K, H, T]`` logits."""
        return torch.einsum("bkc,bcht->bkht", weights * self.mask_scale, feats) + self.mask_bias

    def _query_features(self, queries: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` or ``[B, K, D]`` -> pre-sigmoid ``[B, K, C]``."""
        if queries.dim() == 2:
            queries = queries[:, None]
        if queries.dim() != 3 or queries.shape[-1] != self.query_dim:
            raise ValueError(f"queries must be [B, {self.query_dim}] or [B, K, {self.query_dim}], got {list(queries.shape)}.")
        return self.query_proj(queries * self.query_scale)  # exact at the published scale 1

    def _noise_weights(self, query_feats: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid query features ``[B, K, C]`` -> noise channel weights ``[B, M, C]``."""
        pooled = query_feats.mean(dim=1)
        if not self.noise_proj:
            return pooled.new_zeros(pooled.shape[0], 0, self.mask_channels)
        return torch.stack([torch.sigmoid(head(pooled)) for head in self.noise_proj], dim=1)

    def forward(self, mag_mix: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask and noise logits with one U-Net pass.

        Args:
            mag_mix: ``[B, 1, 513, T]`` mixture magnitude.
            queries: ``[B, K, D]`` embeddings of the K sources in the mixture (or ``[B, D]``).

        Returns:
            ``(mask_logits [B, K, 256, T], noise_logits [B, M, 256, T])``; the noise heads
            read the mean of the K pre-sigmoid query features.
        """
        feats = self.features(mag_mix)
        query_feats = self._query_features(queries.to(feats.dtype))
        mask = self._synthesize(torch.sigmoid(query_feats), feats)
        noise = self._synthesize(self._noise_weights(query_feats), feats)
        return mask, noise

    def mask_logits(self, mag_mix: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Mask logits on the 256 log-frequency rows.

        Args:
            mag_mix: ``[B, 1, 513, T]`` mixture magnitude.
            queries: ``[B, D]`` or ``[B, K, D]``; the U-Net runs once per mixture.

        Returns:
            ``[B, 1, 256, T]`` or ``[B, K, 256, T]``; ``clipcore.spectral.unwarp_to_linear``
            maps them (or their sigmoid) back to 513 rows.
        """
        feats = self.features(mag_mix)
        return self._synthesize(torch.sigmoid(self._query_features(queries.to(feats.dtype))), feats)

    def noise_logits(self, mag_mix: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Noise-head logits ``[B, M, 256, T]`` (``queries`` as in :meth:`mask_logits`)."""
        return self(mag_mix, queries)[1]
