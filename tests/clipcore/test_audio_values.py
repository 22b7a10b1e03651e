"""Audio values against independent references: librosa's mel, and sample values of
downmixing and resampling (not only shapes)."""

import math

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from clipcore.audio import load_audio, resample
from clipcore.spectral import MelConfig, MelSpectrogram


def test_mel_filterbank_is_librosas_slaney_filterbank():
    config = MelConfig()
    expected = librosa.filters.mel(sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels,
                                   fmin=config.f_min, fmax=config.f_max, htk=False, norm="slaney")  # [M, F]
    got = MelSpectrogram(config).fbank.T.numpy()
    assert got.shape == expected.shape == (64, 513)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=1e-4)


def test_log_mel_values_are_librosas():
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(16000)).astype(np.float32)
    wave[12000:] = 0  # silence, so the floor is exercised too
    config = MelConfig()
    mel = librosa.feature.melspectrogram(y=wave, sr=config.sample_rate, n_fft=config.n_fft,
                                         hop_length=config.hop_length, win_length=config.win_length,
                                         window="hann", center=True, pad_mode="reflect", power=1.0,
                                         n_mels=config.n_mels, fmin=config.f_min, fmax=config.f_max,
                                         htk=False, norm="slaney")
    expected = np.log(np.maximum(mel, config.log_floor))
    got = MelSpectrogram(config)(torch.from_numpy(wave)).numpy()
    assert got.shape == expected.shape == (64, 101)
    assert (expected == math.log(config.log_floor)).any()
    # float32 STFTs: values agree to 1e-3 in log (0.1 % in magnitude) where the mel is above the floor.
    np.testing.assert_allclose(got, expected, atol=2e-3)


def test_downmix_is_the_mean_of_the_channels_sample_by_sample(tmp_path):
    rng = np.random.default_rng(1)
    stereo = rng.uniform(-0.9, 0.9, (2000, 3)).astype(np.float32)
    path = tmp_path / "three.wav"
    sf.write(path, stereo, 16000, subtype="FLOAT")
    wave, rate = load_audio(path, mono=True)
    assert rate == 16000 and wave.shape == (1, 2000)
    np.testing.assert_allclose(wave[0].numpy(), stereo.mean(axis=1), atol=1e-7)
    both, _ = load_audio(path)
    np.testing.assert_array_equal(both.numpy(), stereo.T)


@pytest.mark.parametrize("orig, new", [(48000, 16000), (22050, 16000), (8000, 16000)])
def test_resampling_keeps_a_tone_sample_by_sample(orig, new):
    seconds, hz = 0.5, 440.0
    wave = torch.sin(2 * math.pi * hz * torch.arange(int(orig * seconds), dtype=torch.float64) / orig)
    got = resample(wave.float(), orig, new)
    expected = torch.sin(2 * math.pi * hz * torch.arange(got.shape[-1], dtype=torch.float64) / new)
    assert got.shape[-1] == math.ceil(orig * seconds * new / orig)
    inner = slice(new // 50, -new // 50)  # away from the edges, where the sinc filter sees zeros
    np.testing.assert_allclose(got[inner].numpy(), expected[inner].numpy(), atol=2e-3)


def test_resampling_removes_what_the_new_rate_cannot_hold(tmp_path):
    t = np.arange(48000) / 48000
    low, high = 0.4 * np.sin(2 * np.pi * 1000 * t), 0.4 * np.sin(2 * np.pi * 11000 * t)  # 11 kHz > 8 kHz Nyquist
    path = tmp_path / "tones.wav"
    sf.write(path, np.stack([low + high, low - high], axis=1).astype(np.float32), 48000, subtype="FLOAT")
    wave, rate = load_audio(path, sample_rate=16000, mono=True)  # the downmix cancels `high` exactly
    expected = 0.4 * np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    assert rate == 16000 and wave.shape == (1, 16000)
    np.testing.assert_allclose(wave[0, 400:-400].numpy(), expected[400:-400], atol=2e-3)
    alone = resample(torch.from_numpy(high).float(), 48000, 16000)
    assert alone[400:-400].abs().max() < 0.02  # an aliased 5 kHz would have amplitude 0.4
