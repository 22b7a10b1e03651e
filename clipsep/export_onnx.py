"""ONNX export of a separator, for plug-in and app developers (``clipsep export --onnx DIR``).

Three files land in ``DIR``:

- ``mask_network.onnx``: ``mag_mix`` float32 ``[B, 1, 513, T]`` (STFT magnitude, ``T`` a
  multiple of ``frames_multiple``) and ``queries`` float32 ``[B, K, D]`` give
  ``mask_logits`` ``[B, K, 256, T]`` (log-frequency rows), ``noise_logits``
  ``[B, M, 256, T]`` (the noise heads; ``M`` may be 0) and ``masks`` ``[B, K, 513, T]``
  (sigmoid of the mask logits on the linear rows: multiply the mixture's complex STFT by
  it). Batch, length and number of queries are dynamic.
- ``text_tower.onnx``: ``tokens`` int64 ``[N, context_length]`` (open_clip's tokenizer)
  give ``embeddings`` float32 ``[N, D]``, CLIP's raw text embeddings.
- ``onnx.json``: the STFT settings, ``frames_multiple``, the prompt templates, and how
  prompts become one query (``query_normalization``: ``unit`` averages the unit-normalized
  embeddings of the templates and normalizes the mean; ``none`` averages raw embeddings).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from clipcore.files import atomic_write
from clipcore.spectral import unwarp_to_linear

__all__ = ["export_onnx", "MAX_FRAMES"]

MAX_FRAMES = 2**20
"""Longest input the exported mask network accepts, in STFT frames (about 4.6 hours at 16 kHz)."""
OPSET = 18


class _MaskNetwork(nn.Module):
    """CLIPSep's forward pass plus the linear-frequency masks, as one graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, mag_mix: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mask_logits, noise_logits = self.model(mag_mix, queries)
        return mask_logits, noise_logits, unwarp_to_linear(torch.sigmoid(mask_logits), mag_mix.shape[2])


class _TextTower(nn.Module):
    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens).float()


def export_onnx(separator, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write a separator's mask network and text tower as ONNX, with their settings.

    Args:
        separator: a :class:`clipsep.separate.Separator`.
        out_dir: folder to write (created; files are replaced atomically).

    Returns:
        ``{"mask_network": path, "text_tower": path, "settings": path}``.
    """
    model = separator.model.float().cpu().eval()
    encoder = separator.query_encoder.float().cpu().eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    multiple = model.frames_multiple
    # Example sizes above 1 (torch.export treats 1 as a constant).
    mag_mix = torch.rand(2, 1, model.stft.n_freqs, 2 * multiple)
    queries = torch.randn(2, 2, model.query_dim)
    blocks = torch.export.Dim("blocks", min=1, max=MAX_FRAMES // multiple)
    batch, count = torch.export.Dim("batch", min=1), torch.export.Dim("queries", min=1)
    paths = {
        "mask_network": _export(_MaskNetwork(model), (mag_mix, queries), out / "mask_network.onnx",
                                ["mag_mix", "queries"], ["mask_logits", "noise_logits", "masks"],
                                {"mag_mix": {0: batch, 3: blocks * multiple}, "queries": {0: batch, 1: count}}),
        "text_tower": _export(_TextTower(encoder.model), (encoder.tokenize(["a", "b"]),), out / "text_tower.onnx",
                              ["tokens"], ["embeddings"], {"tokens": {0: torch.export.Dim("prompts", min=2)}}),
    }
    settings = {
        "sample_rate": model.sample_rate,
        "n_fft": model.stft.n_fft,
        "hop_length": model.stft.hop_length,
        "window": "hann",
        "frames_multiple": multiple,
        "query_dim": model.query_dim,
        "noise_heads": model.num_noise_heads,
        "templates": list(separator.queries.templates),
        "query_normalization": "unit" if separator.queries.normalize_queries else "none",
        "context_length": int(encoder.tokenize(["a"]).shape[-1]),
        "tokenizer": encoder.name,
        "opset": OPSET,
    }
    paths["settings"] = atomic_write(out / "onnx.json", lambda tmp: tmp.write_text(json.dumps(settings, indent=2) + "\n"))
    return paths


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], shapes: dict) -> Path:
    def write(tmp: Path) -> None:
        program = torch.onnx.export(module, args, dynamo=True, input_names=inputs, output_names=outputs,
                                    dynamic_shapes=shapes, opset_version=OPSET, optimize=True, verbose=False)
        program.save(str(tmp))

    with torch.no_grad():
        return atomic_write(path, write)
