"""The HiFi-GAN loaders against a reference generator written from the paper in this file.

The reference below is HiFi-GAN V1's generator (Kong et al., 2020, and the official
``models.py``) in plain functional torch: it reads weights by their published names and
never touches :class:`clipsonic.vocoder.HiFiGAN`. Weights are random tensors with the
shapes the paper's hyper-parameters give, written in the two third-party layouts the
loader promises: a diffusers/AudioLDM ``vocoder/`` folder (``SpeechT5HifiGan`` names,
with ``normalize_before``, ``mean`` and ``scale``) and the official ``config.json`` +
``generator_*`` file (``ups.*`` names, weight-normed ``weight_g``/``weight_v``).
"""

import json
import math

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from clipsonic.vocoder import load_vocoder

CONFIG = {
    "sampling_rate": 16000,
    "upsample_initial_channel": 32,
    "upsample_rates": [5, 4, 8],  # 160 samples per frame: the hop of the project's mels
    "upsample_kernel_sizes": [10, 8, 16],
    "resblock_kernel_sizes": [3, 5],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
}
MELS = 64
SLOPE = 0.1  # LRELU_SLOPE of the official code


def _shapes() -> dict[str, tuple[int, ...]]:
    """Weight shapes of the generator by official name (``ups.i``, ``resblocks.j.convs1.m``)."""
    shapes = {"conv_pre": (CONFIG["upsample_initial_channel"], MELS, 7)}
    channels = CONFIG["upsample_initial_channel"]
    block = 0
    for i, kernel in enumerate(CONFIG["upsample_kernel_sizes"]):
        shapes[f"ups.{i}"] = (channels, channels // 2, kernel)  # ConvTranspose1d: [in, out, k]
        channels //= 2
        for size, dilations in zip(CONFIG["resblock_kernel_sizes"], CONFIG["resblock_dilation_sizes"]):
            for m in range(len(dilations)):
                shapes[f"resblocks.{block}.convs1.{m}"] = (channels, channels, size)
                shapes[f"resblocks.{block}.convs2.{m}"] = (channels, channels, size)
            block += 1
    shapes["conv_post"] = (1, channels, 7)
    return shapes


def _random_weights(seed: int) -> dict[str, torch.Tensor]:
    """Plain weights and biases, scaled so activations stay of order one."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in _shapes().items():
        fan_in = shape[0 if name.startswith("ups.") else 1] * shape[2]
        state[f"{name}.weight"] = torch.randn(shape, generator=g) * 1.5 / math.sqrt(fan_in)
        out_channels = shape[1] if name.startswith("ups.") else shape[0]
        state[f"{name}.bias"] = torch.randn(out_channels, generator=g) * 0.1
    return state


def reference_generator(weights: dict[str, torch.Tensor], mel: torch.Tensor) -> torch.Tensor:
    """HiFi-GAN V1 generator: ``[B, n_mels, T]`` -> ``[B, T * prod(upsample_rates)]``."""

    def conv(x, name, **kwargs):
        return F.conv1d(x, weights[f"{name}.weight"], weights[f"{name}.bias"], **kwargs)

    x = conv(mel, "conv_pre", padding=3)
    kinds = len(CONFIG["resblock_kernel_sizes"])
    for i, (rate, kernel) in enumerate(zip(CONFIG["upsample_rates"], CONFIG["upsample_kernel_sizes"])):
        x = F.leaky_relu(x, SLOPE)
        x = F.conv_transpose1d(x, weights[f"ups.{i}.weight"], weights[f"ups.{i}.bias"], stride=rate,
                               padding=(kernel - rate) // 2)
        total = 0
        for j, (size, dilations) in enumerate(zip(CONFIG["resblock_kernel_sizes"], CONFIG["resblock_dilation_sizes"])):
            block, y = f"resblocks.{i * kinds + j}", x
            for m, dilation in enumerate(dilations):  # ResBlock1: two convolutions per dilation, residual
                t = conv(F.leaky_relu(y, SLOPE), f"{block}.convs1.{m}", dilation=dilation,
                         padding=(size * dilation - dilation) // 2)
                t = conv(F.leaky_relu(t, SLOPE), f"{block}.convs2.{m}", padding=(size - 1) // 2)
                y = y + t
            total = total + y
        x = total / kinds
    x = conv(F.leaky_relu(x), "conv_post", padding=3)  # default slope 0.01 here, as published
    return torch.tanh(x)[:, 0]


def _mel(frames: int = 40, seed: int = 9) -> torch.Tensor:
    return torch.randn(1, MELS, frames, generator=torch.Generator().manual_seed(seed)) - 4.0


def test_diffusers_audioldm_folder_with_normalisation_matches_the_reference(tmp_path):
    weights = _random_weights(seed=1)
    g = torch.Generator().manual_seed(2)
    mean, scale = torch.randn(MELS, generator=g) - 4.0, torch.rand(MELS, generator=g) + 0.5
    folder = tmp_path / "vocoder"
    folder.mkdir()
    names = {k.replace("ups.", "upsampler."): v for k, v in weights.items()}  # SpeechT5HifiGan names
    save_file({**names, "mean": mean, "scale": scale}, str(folder / "model.safetensors"))
    config = {**CONFIG, "model_in_dim": MELS, "normalize_before": True, "leaky_relu_slope": SLOPE,
              "_class_name": "SpeechT5HifiGan"}
    (folder / "config.json").write_text(json.dumps(config))
    mel = _mel()
    vocoder = load_vocoder(folder)
    with torch.no_grad():
        got = vocoder(mel)
        expected = reference_generator(weights, (mel - mean[:, None]) / scale[:, None])
    length = (mel.shape[-1] - 1) * 160
    assert got.shape == (1, length) and expected.std() > 0.05
    torch.testing.assert_close(got, expected[:, :length], atol=1e-5, rtol=1e-4)


def test_official_generator_file_with_weight_norm_matches_the_reference(tmp_path):
    plain = _random_weights(seed=3)
    g = torch.Generator().manual_seed(4)
    state = {}
    for name in _shapes():
        v = torch.randn(plain[f"{name}.weight"].shape, generator=g)
        gain = plain[f"{name}.weight"].flatten(1).norm(dim=1).view(-1, 1, 1)  # weight = gain * v / |v|
        state[f"{name}.weight_v"], state[f"{name}.weight_g"] = v, gain
        state[f"{name}.bias"] = plain[f"{name}.bias"]
        # Salimans & Kingma (2016): w = g v / ||v||, the norm over all but the first dimension.
        plain[f"{name}.weight"] = gain * v / v.flatten(1).norm(dim=1).view(-1, 1, 1)
    folder = tmp_path / "official"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**CONFIG, "num_mels": MELS, "resblock": "1"}))
    torch.save({"generator": state}, folder / "generator_v1")
    mel = _mel(seed=5)
    with torch.no_grad():
        got = load_vocoder(folder)(mel, length=mel.shape[-1] * 160)
        expected = reference_generator(plain, mel)
    assert expected.std() > 0.05 and expected.shape[-1] >= got.shape[-1] == mel.shape[-1] * 160
    torch.testing.assert_close(got, expected[:, : got.shape[-1]], atol=1e-5, rtol=1e-4)
