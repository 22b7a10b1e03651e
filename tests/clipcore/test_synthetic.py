"""The toy instrument world: deterministic, audibly and visibly distinct instruments."""

import numpy as np
import pytest

from clipcore import synthetic
from clipcore.synthetic import INSTRUMENTS, captions, make_clip, render_frame, synthesize

RATE = 16000


def _log_spectrum(wave: np.ndarray) -> np.ndarray:
    """Average log magnitude in 64 bands (a crude timbre fingerprint)."""
    frames = np.lib.stride_tricks.sliding_window_view(wave, 1024)[::512] * np.hanning(1024)
    power = (np.abs(np.fft.rfft(frames, axis=-1)) ** 2).mean(0)[:512]
    return np.log(power.reshape(64, 8).mean(1) + 1e-8)


def test_at_least_eight_instruments_with_captions():
    assert len(INSTRUMENTS) >= 8 and len(set(INSTRUMENTS)) == len(INSTRUMENTS)
    for name in INSTRUMENTS:
        texts = captions(name)
        assert len(texts) >= 3 and all(name in text for text in texts)
    with pytest.raises(ValueError, match="unknown toy instrument"):
        captions("kazoo")


def test_clips_are_deterministic_and_independent_of_the_number_asked():
    a = make_clip(5, seed=3, duration=2.0, frame_size=64)
    b = list(synthetic.toy_clips(7, seed=3, duration=2.0, frame_size=64))[5]
    assert np.array_equal(a.audio, b.audio) and np.array_equal(a.frames, b.frames)
    c = make_clip(5, seed=4, duration=2.0, frame_size=64)
    assert a.label == c.label and not np.array_equal(a.audio, c.audio)


def test_clip_shapes_levels_and_frames_all_differ():
    clip = make_clip(0, duration=3.0, fps=2.0, frame_size=96)
    assert clip.audio.shape == (3 * RATE,) and clip.audio.dtype == np.float32
    assert clip.frames.shape == (6, 96, 96, 3) and clip.frames.dtype == np.uint8
    assert 0.2 < np.abs(clip.audio).max() < 0.9
    assert len({frame.tobytes() for frame in clip.frames}) == len(clip.frames)


def test_timbres_are_told_apart_by_their_average_spectrum():
    """A nearest-template classifier on log spectra names every instrument of an unseen seed."""
    templates = np.stack([_log_spectrum(synthesize(name, 2.0, RATE, seed=0)) for name in INSTRUMENTS])
    for index, name in enumerate(INSTRUMENTS):
        for seed in (1, 2):
            probe = _log_spectrum(synthesize(name, 2.0, RATE, seed=seed))
            assert np.argmin(((templates - probe) ** 2).sum(1)) == index, (name, seed)


def test_each_frame_shows_its_instrument_colour_and_no_other():
    catalogue = {inst.name: np.array(inst.colour) for inst in synthetic._CATALOGUE}
    for name in INSTRUMENTS:
        frame = render_frame(name, seed=7, size=64).reshape(-1, 3).astype(int)
        counts = {other: int((np.abs(frame - colour).max(1) < 30).sum()) for other, colour in catalogue.items()}
        assert counts[name] > 60, name
        assert all(count == 0 for other, count in counts.items() if other != name), (name, counts)


def test_offscreen_noise_is_added_only_when_asked():
    quiet = make_clip(2, duration=1.0, frame_size=32)
    assert np.array_equal(quiet.audio, quiet.clean)
    noisy = make_clip(2, duration=1.0, frame_size=32, noise=0.5)
    residual = noisy.audio - noisy.clean
    ratio = np.sqrt(np.mean(residual**2) / np.mean(noisy.clean**2))
    assert 0.3 < ratio < 0.7
