import math

import pytest
import torch

from clipcore import spectral
from clipcore.spectral import MelConfig, MelSpectrogram, STFTConfig


def test_stft_round_trip_error_below_1e5():
    wave = torch.randn(3, 2, 16000) * 0.3
    spec = spectral.stft(wave)
    assert spec.shape == (3, 2, 513, 16000 // 256 + 1)
    back = spectral.istft(spec, length=16000)
    assert (back - wave).abs().max() < 1e-5


def test_official_segment_gives_256_frames():
    spec = spectral.stft(torch.zeros(1, 65535))
    assert spec.shape == (1, 513, 256)


def test_magnitude_phase_recombine():
    spec = spectral.stft(torch.randn(1, 4000))
    mag, phase = spectral.magnitude_phase(spec)
    assert torch.allclose(torch.polar(mag, phase), spec, atol=1e-5)


def test_warp_heights_match_reference_formula():
    heights = spectral.log_warp_heights()
    assert heights.shape == (256,) and heights.dtype == torch.float32
    for row in (0, 1, 100, 255):
        y = -1 + 2 * row / 255
        expected = (21 ** ((y + 1) / 2) - 11) / 10
        assert heights[row].item() == pytest.approx(expected, abs=1e-6)
    unwarp = spectral.log_unwarp_heights()
    assert unwarp.shape == (513,)
    for row in (0, 7, 300, 512):
        y = -1 + 2 * row / 512
        expected = math.log(10 * y + 11) / math.log(21) * 2 - 1
        assert unwarp[row].item() == pytest.approx(expected, abs=1e-6)


def test_warp_leaves_frames_alone():
    spec = torch.rand(2, 3, 513, 9)
    warped = spectral.warp_to_log(spec)
    for frame in range(9):  # each frame is warped on its own: the same result alone
        torch.testing.assert_close(warped[..., frame : frame + 1], spectral.warp_to_log(spec[..., frame : frame + 1]))


def test_warp_reads_input_rows_by_the_formula():
    # A spectrogram whose value is its own row index lets us read where each row samples.
    rows = torch.arange(513, dtype=torch.float32)[None, None, :, None].expand(2, 1, 513, 4)
    warped = spectral.warp_to_log(rows)
    assert warped.shape == (2, 1, 256, 4)
    y = torch.linspace(-1, 1, 256)
    height = (21 ** ((y + 1) / 2) - 11) / 10
    expected_rows = (height + 1) / 2 * 512
    assert torch.allclose(warped[0, 0, :, 0], expected_rows, atol=1e-3)


def test_warp_then_unwarp_of_smooth_spectrogram():
    freq = torch.linspace(0, 1, 513)[:, None]
    time = torch.linspace(0, 1, 32)[None, :]
    smooth = (torch.sin(2.5 * freq + 1.0) * torch.cos(3 * time) + 2)[None, None]
    back = spectral.unwarp_to_linear(spectral.warp_to_log(smooth))
    assert back.shape == smooth.shape
    # The log grid is sparse at high frequencies, so a smooth signal comes back closely.
    assert (back - smooth).abs().max() < 5e-3


@pytest.mark.parametrize("autocast", [False, True])
def test_unwarp_of_a_bf16_mask_reads_the_rows_a_float32_mask_reads(autocast):
    # A bf16 mask (a network's output under bf16 mixed precision): heights rounded to bf16 read
    # up to a row away (0.9 off in a [0, 1] mask before), so the resampling runs in float32.
    mask = torch.rand(2, 3, 256, 20, generator=torch.Generator().manual_seed(0)).bfloat16()
    reference = spectral.unwarp_to_linear(mask.float())
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        unwarped = spectral.unwarp_to_linear(mask)
    assert unwarped.dtype == torch.bfloat16
    torch.testing.assert_close(unwarped, reference.bfloat16(), rtol=0, atol=0)


def test_mel_shape_and_defaults():
    mel = MelSpectrogram()
    wave = torch.randn(2, 16000) * 0.1
    log_mel = mel(wave)
    assert log_mel.shape == (2, 64, 16000 // 160 + 1)
    assert torch.isfinite(log_mel).all()
    assert log_mel.min() >= math.log(MelConfig().log_floor) - 1e-6


def test_griffin_lim_output_length_and_content():
    mel = MelSpectrogram()
    t = torch.arange(8000) / 16000
    wave = 0.5 * torch.sin(2 * math.pi * 440 * t)[None]
    log_mel = mel(wave)
    out = mel.inverse(log_mel, n_iter=16)
    assert out.shape == (1, (log_mel.shape[-1] - 1) * 160)
    assert mel.inverse(log_mel, n_iter=2, length=8000).shape == (1, 8000)
    # Griffin-Lim recovers the spectral envelope: its mel is close to the original's.
    again = mel(out[..., :8000])
    active = log_mel > log_mel.max() - 6
    assert (again - log_mel)[active].abs().mean() < 1.0


def test_mel_and_its_inverse_stay_in_full_precision_under_bf16_autocast():
    # Under bf16 mixed precision (Lightning's bf16-mixed) the mel is a diffusion model's target,
    # and Griffin-Lim has no bf16 complex type: both run in float32 whatever autocast says.
    mel = MelSpectrogram()
    wave = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0)) * 0.1
    reference = mel(wave)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = mel(wave)
        from_bf16 = mel.inverse(reference.bfloat16(), n_iter=2)
    assert under_autocast.dtype == torch.float32 and torch.equal(under_autocast, reference)
    assert from_bf16.dtype == torch.float32 and torch.isfinite(from_bf16).all()
    torch.testing.assert_close(from_bf16, mel.inverse(reference.bfloat16().float(), n_iter=2))
    assert mel(wave.double()).dtype == torch.float64  # float64 is kept


def test_custom_stft_config():
    config = STFTConfig(n_fft=512, hop_length=128, win_length=512)
    wave = torch.randn(1, 3000)
    spec = spectral.stft(wave, config)
    assert spec.shape[-2] == config.n_freqs == 257
    assert (spectral.istft(spec, 3000, config) - wave).abs().max() < 1e-5
