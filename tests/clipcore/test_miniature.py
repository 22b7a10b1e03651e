"""The miniature MUSIC world: deterministic renders, real instruments in overlapping registers."""

import math

import numpy as np
import pytest
from scipy.signal import find_peaks

from clipcore.miniature import sound, world
from clipcore.miniature.drawings import draw

RATE = 16000


def test_eleven_music_instruments_with_distinct_programs():
    assert len(world.INSTRUMENTS) >= 10
    assert {"accordion", "acoustic guitar", "cello", "clarinet", "erhu", "flute", "saxophone", "trumpet", "tuba",
            "violin", "xylophone"} <= set(world.INSTRUMENTS)
    assert len({v.program for v in sound.VOICES}) == len(sound.VOICES)
    with pytest.raises(ValueError, match="unknown instrument 'kazoo'"):
        world.make_clip(0, instrument="kazoo")
    with pytest.raises(ValueError, match="unknown split"):
        world.make_clip(0, "holdout")


def test_clips_are_deterministic_per_seed_whatever_was_rendered_before():
    first = world.make_clip(4, "validation", duration=2.0, frame_size=48, offscreen=0.3)
    list(world.clips(3, "train", duration=1.0, frame_size=32, offscreen=0.5))  # other renders in between
    again = world.make_clip(4, "validation", duration=2.0, frame_size=48, offscreen=0.3)
    assert np.array_equal(first.audio, again.audio) and np.array_equal(first.frames, again.frames)
    assert np.array_equal(first.clean, again.clean)
    other = world.make_clip(4, "test", duration=2.0, frame_size=48, offscreen=0.3)
    assert other.label == first.label and not np.allclose(other.audio, first.audio)
    assert not np.array_equal(other.frames, first.frames)


def test_clip_levels_shapes_and_offscreen_sound():
    clip = world.make_clip(2, "train", duration=3.0, fps=2.0, frame_size=64, offscreen=0.5)
    assert clip.audio.shape == (3 * RATE,) and clip.audio.dtype == np.float32
    assert clip.frames.shape == (6, 64, 64, 3) and clip.frames.dtype == np.uint8
    assert 0.05 < np.abs(clip.clean).max() <= 0.95 and np.abs(clip.audio).max() <= 0.95 + 1e-6
    residual = np.sqrt(np.mean((clip.audio - clip.clean) ** 2)) / np.sqrt(np.mean(clip.clean**2))
    assert 0.2 < residual < 0.8  # off-screen sound at 0.5 x (0.5 to 1.5) of the instrument
    quiet = world.make_clip(2, "train", duration=3.0, fps=2.0, frame_size=64)
    assert np.array_equal(quiet.audio, quiet.clean)
    assert len({frame.tobytes() for frame in clip.frames}) == len(clip.frames)


def test_melodies_stay_in_each_instruments_range_and_ranges_overlap():
    in_band = {}
    for inst in sound.VOICES:
        keys = [n.key for seed in range(8) for n in sound.melody(inst.name, 4.0, seed=seed)]
        assert inst.low <= min(keys) and max(keys) <= inst.high, inst.name
        assert max(keys) - min(keys) >= 12, inst.name  # melodies span at least an octave
        hz = np.array([sound.midi_to_hz(k) for k in keys])
        in_band[inst.name] = float(np.mean((hz >= 200) & (hz <= 1000)))
    shared = [name for name, fraction in in_band.items() if fraction > 0.5]
    assert len(shared) == 10, in_band  # the README: ten of the eleven play most of their notes in 200-1000 Hz
    assert in_band["tuba"] < 0.2 and in_band["xylophone"] < 0.9  # and the range is not all one register


@pytest.mark.parametrize("name,key", [("violin", 69), ("clarinet", 62), ("cello", 57), ("trumpet", 72)])
def test_a_rendered_note_sounds_at_its_pitch(name, key):
    wave = sound.render(sound.voice(name).program, [sound.Note(0.0, 0.9, key, 100)], RATE, RATE)
    spectrum = np.abs(np.fft.rfft(wave[1600:14400] * np.hanning(12800)))
    f0 = sound.midi_to_hz(key)
    # The five strongest partials (spectral peaks at least half the note's frequency apart)...
    peaks, _ = find_peaks(spectrum, distance=round(0.5 * f0 / (RATE / 12800)))
    ratios = np.fft.rfftfreq(12800, 1 / RATE)[peaks[np.argsort(spectrum[peaks])[-5:]]] / f0
    # ... are harmonics of the note, and not all of a multiple of it: a note an octave (or a
    # twelfth) too high has only even (or only every third) harmonics of the one asked for.
    harmonics = [round(ratio) for ratio in ratios]
    assert all(h >= 1 and abs(ratio - h) < 0.03 for ratio, h in zip(ratios, harmonics)), (ratios, f0)
    assert math.gcd(*harmonics) == 1, harmonics


def test_drawings_vary_and_differ_between_instruments():
    frames = {name: draw(name, seed=5, size=64) for name in world.INSTRUMENTS}
    assert all(f.shape == (64, 64, 3) and f.dtype == np.uint8 for f in frames.values())
    assert len({f.tobytes() for f in frames.values()}) == len(frames)
    assert not np.array_equal(draw("cello", seed=1, size=64), draw("cello", seed=2, size=64))
    assert np.array_equal(draw("cello", seed=1, size=64), draw("cello", seed=1, size=64))


def test_heldout_prompts_were_never_alignment_captions():
    for name in world.INSTRUMENTS:
        assert not set(world.heldout_prompts(name)) & set(world.captions(name))
        assert all(name in prompt for prompt in world.heldout_prompts(name))
