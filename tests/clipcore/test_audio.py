import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch

from clipcore.audio import AudioError, load_audio, save_audio
from clipcore.audio_blocks import AudioReader


def _tone(seconds=0.25, rate=16000, channels=1):
    t = torch.arange(int(seconds * rate)) / rate
    return torch.stack([0.5 * torch.sin(2 * torch.pi * (220 + 110 * c) * t) for c in range(channels)])


@pytest.mark.parametrize("ext,subtype", [("wav", "PCM_16"), ("flac", "PCM_16"), ("ogg", "VORBIS"), ("mp3", "MPEG_LAYER_III"),
                                        ("aiff", "PCM_16")])
def test_load_formats(tmp_path, ext, subtype):
    path = tmp_path / f"tone.{ext}"
    sf.write(path, _tone(channels=2).numpy().T, 16000, subtype=subtype)
    wave, rate = load_audio(path)
    assert rate == 16000
    assert wave.dtype == torch.float32 and wave.shape[0] == 2
    assert abs(wave.shape[1] - 4000) < 2000  # lossy codecs pad a little
    tone = _tone(channels=2)
    if subtype == "PCM_16":  # lossless: the samples written, to 16-bit rounding
        torch.testing.assert_close(wave, tone, atol=1e-4, rtol=0)
    else:  # lossy: each channel's tone (220 and 330 Hz) at its own pitch, to a 4-Hz bin
        peak_hz = torch.fft.rfft(wave[:, :4000] * torch.hann_window(4000)).abs().argmax(-1) * 16000 / 4000
        torch.testing.assert_close(peak_hz, torch.tensor([220.0, 330.0]), atol=4.0, rtol=0)


def test_downmix_and_resample(tmp_path):
    path = tmp_path / "stereo.wav"
    sf.write(path, _tone(channels=2).numpy().T, 16000)
    wave, rate = load_audio(path, sample_rate=8000, mono=True)
    assert rate == 8000 and wave.shape == (1, 2000)


def test_save_round_trip_bit_depths(tmp_path):
    wave = _tone(channels=2)
    for depth, ext, tol in [("16", "wav", 1e-4), ("24", "wav", 1e-6), ("32f", "wav", 0.0), ("24", "flac", 1e-6)]:
        path = save_audio(tmp_path / f"out{depth}.{ext}", wave, 16000, bit_depth=depth)
        back, rate = load_audio(path)
        assert rate == 16000 and back.shape == wave.shape
        assert (back - wave).abs().max() <= tol
    info = sf.info(tmp_path / "out16.wav")
    assert info.subtype == "PCM_16" and info.format == "WAV"
    assert sf.info(tmp_path / "out32f.wav").subtype == "FLOAT"


def test_save_clips_instead_of_wrapping(tmp_path):
    wave = torch.tensor([[1.7, -2.5, 0.25, 1.0]])
    path = save_audio(tmp_path / "loud.wav", wave, 8000)
    back, _ = load_audio(path)
    assert back[0, 0] > 0.99 and back[0, 1] < -0.99  # no wrap-around to the other sign
    assert back[0, 2] == pytest.approx(0.25, abs=1e-4)


@pytest.mark.parametrize("depth", ["16", "32f"])
def test_clip_modes(tmp_path, depth):
    wave = torch.tensor([[0.5, -2.0, 0.25, 1.5]])
    back = {mode: load_audio(save_audio(tmp_path / f"{mode}.wav", wave, 8000, bit_depth=depth, clip=mode))[0]
            for mode in ("rescale", "clamp", "none")}
    assert back["rescale"] == pytest.approx(wave / 2.02, abs=1e-4)  # the whole file, peak just below 1
    assert back["clamp"] == pytest.approx(wave.clamp(-1, 1), abs=1e-4)
    assert back["none"] == pytest.approx(wave if depth == "32f" else wave.clamp(-1, 1), abs=1e-4)
    quiet = torch.tensor([[0.5, -0.25]])
    assert load_audio(save_audio(tmp_path / "quiet.wav", quiet, 8000, clip="rescale"))[0] == pytest.approx(quiet, abs=1e-4)
    with pytest.raises(AudioError, match="unknown clip mode 'wrap'"):
        save_audio(tmp_path / "bad.wav", wave, 8000, clip="wrap")


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="nope.wav: no such file"):
        load_audio(tmp_path / "nope.wav")


def test_not_audio(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio")
    with pytest.raises(AudioError, match="notes.wav: cannot be read as audio"):
        load_audio(path)


def test_zero_samples(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0, 1), dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="empty.wav: contains zero samples"):
        load_audio(path)


def test_a_rate_below_audio_is_refused_by_both_readers(tmp_path):
    path = tmp_path / "one-hertz.wav"  # was separated, and written back at 1 Hz
    sf.write(path, np.zeros((100, 1), dtype=np.float32), 1)
    for read in (load_audio, AudioReader):
        with pytest.raises(AudioError, match=r"one-hertz.wav: has a sample rate of 1 Hz; audio needs 1000 to 768000 Hz\.$"):
            read(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(tmp_path, bad):
    path = tmp_path / "bad.wav"
    data = np.zeros((100, 1), dtype=np.float32)
    data[10] = bad
    sf.write(path, data, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="bad.wav: contains non-finite samples"):
        load_audio(path)


def test_unsupported_channel_count(tmp_path):
    path = tmp_path / "many.wav"
    sf.write(path, np.zeros((100, 12), dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="many.wav: has 12 channels"):
        load_audio(path)
    with pytest.raises(AudioError, match="cannot write a waveform of shape"):
        save_audio(tmp_path / "out.wav", torch.zeros(12, 100), 16000)


def test_non_finite_is_never_written(tmp_path):
    wave = torch.zeros(1, 100)
    wave[0, 5] = float("nan")
    target = tmp_path / "out.wav"
    with pytest.raises(AudioError, match="out.wav: refusing to write non-finite"):
        save_audio(target, wave, 16000)
    assert list(tmp_path.iterdir()) == []


def test_bad_format_and_depth(tmp_path):
    with pytest.raises(AudioError, match="unsupported bit depth '8'"):
        save_audio(tmp_path / "a.wav", torch.zeros(1, 10), 16000, bit_depth="8")
    with pytest.raises(AudioError, match="FLAC stores 16 or 24 bits"):
        save_audio(tmp_path / "a.flac", torch.zeros(1, 10), 16000, bit_depth="32f")
    assert list(tmp_path.iterdir()) == []


def test_existing_file_survives_a_failed_write(tmp_path, monkeypatch):
    target = tmp_path / "keep.wav"
    save_audio(target, _tone(), 16000)
    before = target.read_bytes()

    def broken_write(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(sf, "write", broken_write)
    with pytest.raises(OSError):
        save_audio(target, _tone(seconds=1), 16000)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.wav"]


def test_interrupted_write_leaves_no_partial_file(tmp_path):
    # A child process is killed while soundfile is writing a long file: the final name
    # must not exist (only a hidden temporary may be left behind).
    target = tmp_path / "long.wav"
    script = textwrap.dedent(
        f"""
        import os, signal, soundfile, torch
        from clipcore.audio import save_audio
        real_write = soundfile.write
        def slow_write(path, data, *args, **kwargs):
            with open(path, "wb") as handle:
                handle.write(b"RIFF partial")
                handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        soundfile.write = slow_write
        save_audio({str(target)!r}, torch.zeros(1, 16000), 16000)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == -signal.SIGKILL
    assert not target.exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert all(name.startswith(".long.wav.") and name.endswith(".part") for name in leftovers)


def test_written_files_get_the_usual_permissions(tmp_path):
    from clipcore import files

    path = save_audio(tmp_path / "shared.wav", _tone(), 16000)
    # As open() would create it: 0644 under the usual umask 022, not mkstemp's private 0600.
    assert path.stat().st_mode & 0o777 == 0o666 & ~files._UMASK


@pytest.mark.parametrize("rate,out_rate", [(44100, 16000), (16000, 16000), (48000, 11025), (8000, 22050)])
@pytest.mark.parametrize("span", [(0.0, 0.5), (1.3, 2.1), (2.6, 3.0), (2.9, 4.0), (5.0, 6.0)])
def test_a_span_is_the_whole_files_samples(tmp_path, rate, out_rate, span):
    """Reading a span reads only its frames (and the resampler's margin), and gives the samples of
    the whole file read and resampled, sliced: to float rounding, at the file's ends too."""
    path = tmp_path / "take.wav"
    noise = np.random.default_rng(rate).uniform(-0.9, 0.9, size=(3 * rate, 2)).astype(np.float32)
    sf.write(path, noise, rate, subtype="FLOAT")
    whole, _ = load_audio(path, out_rate, mono=True)
    part, got_rate = load_audio(path, out_rate, mono=True, span=span)
    expected = whole[:, int(round(span[0] * out_rate)):int(round(span[1] * out_rate))]
    assert got_rate == out_rate and part.shape == expected.shape
    torch.testing.assert_close(part, expected, atol=1e-6, rtol=0)


def test_a_span_reads_only_its_frames_and_a_bad_span_is_one_sentence(tmp_path, monkeypatch):
    path = tmp_path / "take.wav"
    sf.write(path, np.zeros((44100 * 60, 1), np.float32), 44100)
    counts = []
    read = sf.SoundFile.read
    monkeypatch.setattr(sf.SoundFile, "read", lambda self, frames=-1, **kw: counts.append(frames) or read(self, frames, **kw))
    assert load_audio(path, 16000, span=(30.0, 31.0))[0].shape == (1, 16000)
    assert 44100 <= counts[-1] < 44100 + 2000  # a second and the resampler's margins, of a minute
    for span in ((-1.0, 1.0), (2.0, 1.0), (float("nan"), 1.0), (0.0, float("inf"))):
        with pytest.raises(AudioError, match=r"take.wav: cannot read the span .* \(a start from 0 to its end\)"):
            load_audio(path, 16000, span=span)
