"""Sound of the miniature MUSIC world: melodies played by sampled General MIDI instruments.

The notes are rendered from the General MIDI SoundFont that ``pretty_midi`` ships
(``TimGM6mb.sf2``) by ``tinysoundfont`` (no system library). Every instrument plays
melodies in its real register, so registers overlap as they do in MUSIC: eight of the
eleven instruments can play anywhere between 200 and 1000 Hz, and telling them apart
takes timbre, not a band filter. Melodies vary in tempo, articulation, velocity, key
and contour; renders are deterministic for a given random generator state.

Usage::

    from clipcore.miniature import sound
    wave = sound.play("violin", 4.0, seed=3)        # float32 [64000] at 16 kHz
    notes = sound.melody("violin", 4.0, seed=3)     # the Note events behind it
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import numpy as np

__all__ = ["Voice", "VOICES", "INSTRUMENTS", "OFFSCREEN_PROGRAMS", "Note", "midi_to_hz", "melody", "render",
           "play", "offscreen_sound", "normalize"]


@dataclass(frozen=True)
class Voice:
    """A MUSIC instrument as the SoundFont plays it.

    Attributes:
        name: the MUSIC label.
        program: General MIDI program (0-based).
        low, high: the MIDI notes its melodies are drawn from (its real playing range,
            trimmed of extreme notes).
        sustained: whether a held key keeps sounding (bowed, blown, bellows), so that
            articulation shortens notes; plucked and struck instruments decay anyway.
    """

    name: str
    program: int
    low: int
    high: int
    sustained: bool = True


VOICES: tuple[Voice, ...] = (
    Voice("accordion", 21, 53, 81),  # F3-A5
    Voice("acoustic guitar", 24, 40, 76, sustained=False),  # E2-E5
    Voice("cello", 42, 36, 69),  # C2-A4
    Voice("clarinet", 71, 50, 84),  # D3-C6
    Voice("erhu", 110, 62, 86),  # D4-D6; GM has no erhu: Fiddle, its nearest sound
    Voice("flute", 73, 60, 93),  # C4-A6
    Voice("saxophone", 65, 49, 80),  # alto: Db3-Ab5
    Voice("trumpet", 56, 55, 82),  # G3-Bb5
    Voice("tuba", 58, 28, 58),  # E1-Bb3
    Voice("violin", 40, 55, 93),  # G3-A6
    Voice("xylophone", 13, 65, 96, sustained=False),  # F4-C7
)
INSTRUMENTS: tuple[str, ...] = tuple(voice.name for voice in VOICES)
"""The MUSIC instrument names, in a fixed order."""

_BY_NAME = {voice.name: voice for voice in VOICES}

OFFSCREEN_PROGRAMS: tuple[int, ...] = (0, 4, 11, 19, 48, 52, 68, 104)
"""GM programs heard off screen and never shown: piano, electric piano, vibraphone, organ,
strings, choir, oboe, sitar."""

SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10), "pentatonic": (0, 2, 4, 7, 9)}
ARTICULATIONS = {"legato": 0.97, "normal": 0.8, "staccato": 0.4}
"""Fraction of a note's time slot that its key is held."""


def voice(name: str) -> Voice:
    """The :class:`Voice` of an instrument name; a ``ValueError`` names the choices otherwise."""
    if name not in _BY_NAME:
        raise ValueError(f"unknown instrument {name!r}; choose one of {', '.join(INSTRUMENTS)}.")
    return _BY_NAME[name]


def midi_to_hz(note: float) -> float:
    """Frequency of a MIDI note number (A4 = 69 = 440 Hz)."""
    return 440.0 * 2.0 ** ((note - 69) / 12)


@dataclass(frozen=True)
class Note:
    """One note event: ``onset`` and ``length`` (key held) in seconds, MIDI ``key``, ``velocity`` 1-127."""

    onset: float
    length: float
    key: int
    velocity: int


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def melody(name: str, duration: float, seed: int | np.random.Generator = 0,
           low: int | None = None, high: int | None = None) -> list[Note]:
    """A random melody within an instrument's range.

    A random walk on a scale (major, minor or pentatonic, random tonic) around a random
    centre of the range, at a random tempo (70-160 beats per minute) and articulation,
    with rhythms of half to two beats, occasional rests and leaps, and a velocity that
    follows a phrase curve with per-note accents.

    Args:
        name: one of :data:`INSTRUMENTS`.
        duration: seconds covered by onsets.
        seed: an integer or a numpy ``Generator``.
        low, high: MIDI bounds (default: the instrument's range).

    Returns:
        Notes in time order, every key within ``[low, high]``.
    """
    inst, rng = voice(name), _rng(seed)
    low, high = inst.low if low is None else low, inst.high if high is None else high
    scale = SCALES[str(rng.choice(list(SCALES)))]
    tonic = int(rng.integers(0, 12))
    keys = np.array([k for k in range(low, high + 1) if (k - tonic) % 12 in scale])
    beat = 60.0 / rng.uniform(70, 160)
    gate = ARTICULATIONS[str(rng.choice(list(ARTICULATIONS)))] if inst.sustained else 0.9
    loudness = rng.uniform(55, 115)
    position = int(rng.integers(len(keys) // 4, max(len(keys) // 4 + 1, 3 * len(keys) // 4)))
    notes, onset = [], float(rng.uniform(0.0, 0.5 * beat))
    while onset < duration:
        slot = beat * float(rng.choice([0.5, 1.0, 1.0, 1.5, 2.0], p=[0.3, 0.3, 0.15, 0.1, 0.15]))
        if rng.random() < 0.1:  # a rest
            onset += slot
            continue
        step = int(rng.choice([-4, -2, -1, -1, 0, 1, 1, 2, 4])) if rng.random() > 0.08 else int(rng.integers(-7, 8))
        position = int(np.clip(position + step, 0, len(keys) - 1))
        phrase = np.sin(np.pi * (onset % (8 * beat)) / (8 * beat))  # swell and fade over two bars
        velocity = int(np.clip(loudness + 20 * (phrase - 0.5) + rng.normal(0, 8), 20, 127))
        notes.append(Note(onset, max(0.05, gate * slot), int(keys[position]), velocity))
        onset += slot
    return notes


@functools.lru_cache(maxsize=1)
def _soundfont_bytes() -> bytes:
    """The General MIDI SoundFont pretty_midi ships (read once per process)."""
    return resources.files("pretty_midi").joinpath("TimGM6mb.sf2").read_bytes()


def _synth(sample_rate: int):
    """A fresh synthesizer with the SoundFont loaded (25 ms): a reused one carries state
    from one render into the next, so renders would depend on what was played before."""
    import tinysoundfont

    synth = tinysoundfont.Synth(samplerate=sample_rate)
    return synth, synth.sfload(_soundfont_bytes())


def render(program: int, notes: list[Note], total: int, sample_rate: int = 16000, drums: bool = False) -> np.ndarray:
    """Play note events on a General MIDI program.

    Args:
        program: GM program (0-based), or the drum kit when ``drums``.
        notes: the events; notes past ``total`` samples are cut.
        total: samples to return.
        sample_rate: output rate.
        drums: use the percussion bank (keys name drums).

    Returns:
        float64 mono ``[total]`` (the mean of the synth's two channels).
    """
    synth, sfid = _synth(sample_rate)
    synth.program_select(9 if drums else 0, sfid, 128 if drums else 0, program, is_drums=drums)
    channel = 9 if drums else 0
    events = sorted([(round(n.onset * sample_rate), 1, n.key, n.velocity) for n in notes]
                    + [(round((n.onset + n.length) * sample_rate), 0, n.key, 0) for n in notes])
    out, now = [], 0
    for time, is_on, key, velocity in events:
        time = min(time, total)
        if time > now:
            out.append(np.frombuffer(synth.generate(time - now), dtype=np.float32))
            now = time
        if now >= total:
            break
        if is_on:
            synth.noteon(channel, key, velocity)
        else:
            synth.noteoff(channel, key)
    if now < total:
        out.append(np.frombuffer(synth.generate(total - now), dtype=np.float32))
    stereo = np.concatenate(out).reshape(-1, 2) if out else np.zeros((total, 2), np.float32)
    return stereo.mean(1).astype(np.float64)


def play(name: str, duration: float, sample_rate: int = 16000, seed: int | np.random.Generator = 0,
         transpose: int = 0) -> np.ndarray:
    """A random melody (:func:`melody`) rendered on an instrument, unnormalized.

    Args:
        transpose: semitones added to every key (out of the instrument's range if need be:
            a test of pitch invariance).

    Returns:
        float64 ``[round(duration * sample_rate)]``.
    """
    total = round(duration * sample_rate)
    notes = [Note(n.onset, n.length, n.key + transpose, n.velocity) for n in melody(name, duration, seed)]
    return render(voice(name).program, notes, total, sample_rate)


def _drum_pattern(rng: np.random.Generator, duration: float) -> list[Note]:
    beat = 60.0 / rng.uniform(80, 150)
    kit = [(36, 0.0), (38, 1.0), (42, 0.5), (42, 1.5), (46, 1.5), (39, 1.0)]  # kick, snare, hats, clap
    chosen = [kit[i] for i in sorted(rng.choice(len(kit), size=int(rng.integers(2, 5)), replace=False))]
    notes = []
    for bar in range(int(duration / (2 * beat)) + 1):
        for key, offset in chosen:
            onset = (2 * bar + offset) * beat
            if onset < duration and rng.random() < 0.9:
                notes.append(Note(onset, 0.1, key, int(rng.integers(50, 120))))
    return notes


def _noise(rng: np.random.Generator, total: int, sample_rate: int) -> np.ndarray:
    t = np.arange(total) / sample_rate
    if rng.random() < 0.4:  # mains hum
        base = rng.choice([50.0, 60.0]) * rng.uniform(0.98, 1.02)
        return sum(np.sin(2 * np.pi * k * base * t) / k for k in range(1, 6))
    spectrum = np.fft.rfft(rng.standard_normal(total))  # crowd or wind: band noise that swells
    freqs = np.fft.rfftfreq(total, 1.0 / sample_rate)
    low = rng.uniform(100.0, 2000.0)
    spectrum[(freqs < low) | (freqs > low * rng.uniform(2.0, 6.0))] = 0.0
    return np.fft.irfft(spectrum, total) * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.1, 0.6) * t))


def offscreen_sound(rng: np.random.Generator, total: int, sample_rate: int = 16000,
                    exclude: str | None = None) -> tuple[np.ndarray, str]:
    """Sound whose source the picture does not show, at unit RMS.

    One of: another instrument (a MUSIC one other than ``exclude``, or a GM program of
    :data:`OFFSCREEN_PROGRAMS`), a drum kit pattern, or noise (hum, band noise).

    Returns:
        float64 ``[total]`` and its kind (``"instrument:<name>"``, ``"drums"``, ``"noise"``).
    """
    kind = str(rng.choice(["instrument", "drums", "noise"]))
    duration = total / sample_rate
    if kind == "instrument":
        others = [name for name in INSTRUMENTS if name != exclude]
        if rng.random() < 0.5:
            name = str(rng.choice(others))
            wave, kind = render(voice(name).program, melody(name, duration, rng), total, sample_rate), f"instrument:{name}"
        else:
            program = int(rng.choice(OFFSCREEN_PROGRAMS))
            notes = melody("accordion", duration, rng, low=48, high=84)  # any register will do
            wave, kind = render(program, notes, total, sample_rate), f"program:{program}"
    elif kind == "drums":
        wave = render(0, _drum_pattern(rng, duration), total, sample_rate, drums=True)
    else:
        wave = _noise(rng, total, sample_rate)
    rms = np.sqrt(np.mean(wave**2))
    return (wave / rms if rms > 1e-6 else wave), kind


def normalize(wave: np.ndarray, rng: np.random.Generator, level: float = 0.1) -> tuple[np.ndarray, float]:
    """Scale to RMS ``level`` within +-3 dB (random) with peak at most 0.89.

    Returns:
        The scaled wave and the gain applied.
    """
    rms = np.sqrt(np.mean(wave**2)) + 1e-9
    gain = level * 10 ** (rng.uniform(-3, 3) / 20) / rms
    peak = np.abs(wave).max() * gain
    if peak > 0.89:
        gain *= 0.89 / peak
    return wave * gain, float(gain)
