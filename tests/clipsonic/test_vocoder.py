import json
import math

import pytest
import torch
from safetensors.torch import save_file
from torch.nn.utils import weight_norm

from clipcore.checkpoint import CheckpointError
from clipcore.spectral import MelSpectrogram
from clipsonic.vocoder import GriffinLim, HiFiGAN, load_vocoder

# A small generator of the 16 kHz / 64-mel / hop-160 convention (5 * 4 * 8 = 160).
SMALL = {
    "model_in_dim": 64,
    "sampling_rate": 16000,
    "upsample_initial_channel": 32,
    "upsample_rates": [5, 4, 8],
    "upsample_kernel_sizes": [10, 8, 16],
    "resblock_kernel_sizes": [3, 5],
    "resblock_dilation_sizes": [[1, 3], [1, 3]],
}


def _log_mel(seconds=0.5):
    t = torch.arange(int(16000 * seconds)) / 16000
    return MelSpectrogram()(0.3 * torch.sin(2 * math.pi * 440 * t))[None]


def test_griffin_lim_inverts_a_tone_to_the_requested_length():
    mel = _log_mel()
    wave = GriffinLim(n_iter=16)(mel, length=8000)
    assert wave.shape == (1, 8000)
    spectrum = torch.fft.rfft(wave[0, 1000:7000]).abs()
    peak_hz = spectrum.argmax().item() * 16000 / 6000
    assert abs(peak_hz - 440) < 20
    assert load_vocoder(None).sample_rate == 16000 and isinstance(load_vocoder("griffinlim"), GriffinLim)


def test_hifigan_loads_from_a_diffusers_vocoder_folder(tmp_path):
    torch.manual_seed(0)
    reference = HiFiGAN(**SMALL).eval()
    folder = tmp_path / "vocoder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**SMALL, "_class_name": "SpeechT5HifiGan", "normalize_before": False}))
    save_file(reference.state_dict(), str(folder / "model.safetensors"))
    loaded = load_vocoder(folder)
    mel = _log_mel()
    with torch.no_grad():
        expected, got = reference(mel, 8000), loaded(mel, 8000)
    assert got.shape == (1, 8000) and got.abs().max() > 0
    torch.testing.assert_close(got, expected)


def test_hifigan_loads_official_weight_normed_generator_files(tmp_path):
    """The official layout: ``ups.*`` names and weight-norm ``weight_g``/``weight_v``."""
    torch.manual_seed(1)
    reference = HiFiGAN(**SMALL).eval()
    state = {}
    for name, module in reference.named_modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
            normed = weight_norm(type(module)(module.in_channels, module.out_channels, module.kernel_size))
            with torch.no_grad():
                v = module.weight * 2.0
                normed.weight_v.copy_(v)
                normed.weight_g.copy_(module.weight.norm(dim=(1, 2), keepdim=True))
            official = name.replace("upsampler.", "ups.")
            state[f"{official}.weight_g"] = normed.weight_g.detach().clone()
            state[f"{official}.weight_v"] = normed.weight_v.detach().clone()
            state[f"{official}.bias"] = module.bias.detach().clone()
    folder = tmp_path / "official"
    folder.mkdir()
    config = {key: value for key, value in SMALL.items() if key != "model_in_dim"} | {"num_mels": 64}
    (folder / "config.json").write_text(json.dumps(config))
    torch.save({"generator": state}, folder / "generator_v1")
    loaded = HiFiGAN.load(folder)
    mel = _log_mel()
    with torch.no_grad():
        torch.testing.assert_close(loaded(mel), reference(mel), atol=1e-5, rtol=1e-4)


def test_project_checkpoint_round_trip_and_bad_folders(tmp_path):
    torch.manual_seed(2)
    model = HiFiGAN(**SMALL)
    model.save_pretrained(tmp_path / "ours")
    loaded = load_vocoder(tmp_path / "ours")
    mel = _log_mel(0.2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(mel), model(mel))
    assert loaded(mel).shape[-1] == (mel.shape[-1] - 1) * 160

    with pytest.raises(CheckpointError, match="no config.json"):
        load_vocoder(tmp_path)
    wrong_hop = tmp_path / "hop"
    HiFiGAN(**{**SMALL, "upsample_rates": [4, 4, 8]}).save_pretrained(wrong_hop)
    with pytest.raises(CheckpointError, match="hop 128"):
        load_vocoder(wrong_hop)
    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / "config.json").write_text(json.dumps(SMALL))
    with pytest.raises(CheckpointError, match="no vocoder weights"):
        load_vocoder(missing)
    (missing / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_vocoder(missing)
