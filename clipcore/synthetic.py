"""The toy instrument world: small generated video clips for tests and the quick start.

Eight instruments, each with its own timbre and register (audio) and its own shape and
colour (frames), so that a tiny separation model learns to tell them apart in minutes on
a CPU and a tiny CLIP learns to match captions to frames. Everything is deterministic:
clip ``i`` of seed ``s`` is always the same, whatever the number of clips asked for.

Usage::

    from clipcore import synthetic
    clip = synthetic.make_clip(0, seed=0)            # audio [S], frames [F, H, W, 3]
    synthetic.write_toy_videos("toy/videos", 16)      # mp4 files (H.264 + AAC)
    synthetic.write_toy_shards("toy/shards", 64)      # webdataset shards, ready to train
    image = synthetic.render_frame("flute", seed=3)   # an image query
    synthetic.captions("flute")                       # ["a photo of a flute", ...]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "INSTRUMENTS",
    "CAPTION_TEMPLATES",
    "Instrument",
    "ToyClip",
    "captions",
    "synthesize",
    "render_frame",
    "make_clip",
    "toy_clips",
    "write_toy_videos",
    "write_toy_shards",
    "write_videos",
    "write_shards",
]


@dataclass(frozen=True)
class Instrument:
    """One toy instrument: how it sounds and how it looks.

    Attributes:
        name: the label (also the word captions use).
        low_hz, high_hz: the register its melodies are drawn from.
        shape: the shape drawn in its frames.
        colour_name, colour: the colour of that shape (RGB).
    """

    name: str
    low_hz: float
    high_hz: float
    shape: str
    colour_name: str
    colour: tuple[int, int, int]


_CATALOGUE = (
    Instrument("cello", 65.0, 131.0, "bar", "red", (230, 30, 30)),
    Instrument("clarinet", 147.0, 294.0, "diamond", "blue", (30, 70, 245)),
    Instrument("trumpet", 262.0, 523.0, "triangle", "yellow", (245, 230, 20)),
    Instrument("harp", 392.0, 784.0, "ring", "magenta", (230, 40, 220)),
    Instrument("flute", 784.0, 1568.0, "circle", "cyan", (20, 225, 235)),
    Instrument("bell", 1568.0, 3136.0, "star", "white", (250, 250, 250)),
    Instrument("drum", 50.0, 150.0, "square", "orange", (255, 140, 0)),
    Instrument("shaker", 4000.0, 7500.0, "cross", "green", (30, 205, 40)),
)
_BY_NAME = {instrument.name: instrument for instrument in _CATALOGUE}

INSTRUMENTS: tuple[str, ...] = tuple(instrument.name for instrument in _CATALOGUE)
"""The instrument names, in a fixed order (clip ``i`` plays ``INSTRUMENTS[i % 8]``)."""

CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of a {name}",
    "playing the {name}",
    "the sound of a {name}",
    "someone playing a {name}",
    "a {colour} {shape} that sounds like a {name}",
)
"""Caption templates; ``{name}``, ``{colour}`` and ``{shape}`` are filled per instrument."""


def _instrument(name: str) -> Instrument:
    if name not in _BY_NAME:
        raise ValueError(f"unknown toy instrument {name!r}; choose one of {', '.join(INSTRUMENTS)}.")
    return _BY_NAME[name]


def captions(name: str) -> list[str]:
    """All captions of an instrument, one per template of :data:`CAPTION_TEMPLATES`."""
    inst = _instrument(name)
    return [t.format(name=inst.name, colour=inst.colour_name, shape=inst.shape) for t in CAPTION_TEMPLATES]


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


# ----------------------------------------------------------------------------- audio


def _notes(rng: np.random.Generator, inst: Instrument, duration: float) -> list[tuple[float, float, float]]:
    """A random melody: ``(onset seconds, length seconds, frequency Hz)`` per note."""
    octaves = np.log2(inst.high_hz / inst.low_hz)
    scale = np.array([0, 2, 4, 7, 9])  # major pentatonic, in semitones
    steps = np.concatenate([scale + 12 * o for o in range(int(np.ceil(octaves)) + 1)])
    steps = steps[steps <= 12 * octaves]
    notes, onset = [], float(rng.uniform(0.0, 0.15))
    while onset < duration:
        length = float(rng.choice([0.25, 0.375, 0.5, 0.75]))
        freq = inst.low_hz * 2.0 ** (rng.choice(steps) / 12.0)
        notes.append((onset, length, float(freq)))
        onset += length + float(rng.choice([0.0, 0.0, 0.125]))
    return notes


def _harmonic(t, freq, amps, rng, vibrato=0.0):
    """Sum of harmonics ``k * freq`` with amplitudes ``amps[k-1]`` (below Nyquist handled by caller)."""
    rate = rng.uniform(4.5, 6.5)
    inst_freq = freq * (1.0 + vibrato * np.sin(2 * np.pi * rate * t))
    phase = 2 * np.pi * np.cumsum(inst_freq) * (t[1] - t[0] if len(t) > 1 else 0.0)
    return sum(a * np.sin(k * phase + rng.uniform(0, 2 * np.pi)) for k, a in enumerate(amps, 1))


def _envelope(n: int, rate: int, attack: float, release: float, decay: float | None = None) -> np.ndarray:
    t = np.arange(n) / rate
    env = np.minimum(1.0, t / max(attack, 1e-4)) * np.minimum(1.0, (n / rate - t) / max(release, 1e-4))
    if decay is not None:
        env = env * np.exp(-t / decay)
    return np.clip(env, 0.0, 1.0)


def _bandpass_noise(rng, n, rate, low, high):
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / rate)
    spectrum[(freqs < low) | (freqs > high)] = 0.0
    noise = np.fft.irfft(spectrum, n)
    return noise / (np.abs(noise).max() + 1e-9)


def _note(inst: Instrument, freq: float, n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / rate
    nyquist = rate / 2 - 200

    def amps(count, rule):
        return [rule(k) if k * freq < nyquist else 0.0 for k in range(1, count + 1)]

    name = inst.name
    if name == "cello":  # bowed: sawtooth-like, slow attack, vibrato
        tone = _harmonic(t, freq, amps(24, lambda k: 1.0 / k), rng, vibrato=0.006)
        return tone * _envelope(n, rate, 0.08, 0.05)
    if name == "clarinet":  # odd harmonics only
        tone = _harmonic(t, freq, amps(15, lambda k: (1.0 / k) if k % 2 else 0.0), rng, vibrato=0.002)
        return tone * _envelope(n, rate, 0.03, 0.04)
    if name == "trumpet":  # bright brass: strong upper harmonics
        tone = _harmonic(t, freq, amps(12, lambda k: 1.0 / (1.0 + 0.15 * (k - 3) ** 2)), rng, vibrato=0.003)
        return tone * _envelope(n, rate, 0.02, 0.03)
    if name == "harp":  # plucked: upper harmonics die first
        tone = sum(
            a * np.sin(2 * np.pi * k * freq * t) * np.exp(-t * (2.0 + 3.0 * k))
            for k, a in enumerate(amps(8, lambda k: 1.0 / k**1.5), 1)
        )
        return tone * _envelope(n, rate, 0.002, 0.02)
    if name == "flute":  # nearly a sine, vibrato and breath
        tone = _harmonic(t, freq, amps(3, lambda k: [1.0, 0.2, 0.05][k - 1]), rng, vibrato=0.008)
        breath = 0.05 * _bandpass_noise(rng, n, rate, freq * 0.8, freq * 1.3)
        return (tone + breath) * _envelope(n, rate, 0.06, 0.05)
    if name == "bell":  # inharmonic partials, long exponential decay
        ratios, weights = (1.0, 2.756, 5.404, 8.933), (1.0, 0.6, 0.35, 0.2)
        tone = sum(
            w * np.sin(2 * np.pi * r * freq * t) * np.exp(-t * (1.5 + r))
            for r, w in zip(ratios, weights)
            if r * freq < nyquist
        )
        return tone * _envelope(n, rate, 0.001, 0.02)
    if name == "drum":  # pitch-swept thump plus a click of noise
        sweep = freq * (1.0 + 2.0 * np.exp(-t * 30.0))
        thump = np.sin(2 * np.pi * np.cumsum(sweep) / rate) * np.exp(-t * 12.0)
        click = 0.3 * _bandpass_noise(rng, n, rate, 100.0, 1500.0) * np.exp(-t * 60.0)
        return (thump + click) * _envelope(n, rate, 0.001, 0.01)
    if name == "shaker":  # short bursts of high noise
        noise = _bandpass_noise(rng, n, rate, inst.low_hz, min(inst.high_hz, nyquist))
        return noise * np.exp(-t * 25.0) * _envelope(n, rate, 0.005, 0.01)
    raise AssertionError(name)


def synthesize(
    name: str, duration: float, sample_rate: int = 16000, seed: int | np.random.Generator = 0
) -> np.ndarray:
    """A random melody on one instrument.

    Args:
        name: one of :data:`INSTRUMENTS`.
        duration: seconds.
        sample_rate: samples per second.
        seed: an integer or a numpy ``Generator``.

    Returns:
        float32 ``[round(duration * sample_rate)]``, RMS about 0.1, peak below 0.9.
    """
    inst, rng = _instrument(name), _rng(seed)
    total = int(round(duration * sample_rate))
    wave = np.zeros(total)
    for onset, length, freq in _notes(rng, inst, duration):
        start = int(onset * sample_rate)
        n = min(int(length * sample_rate), total - start)
        if n > 16:
            wave[start : start + n] += _note(inst, freq, n, sample_rate, rng)
    return _normalize(wave, rng)


def _normalize(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rms = np.sqrt(np.mean(wave**2)) + 1e-9
    wave = wave * (0.1 * 10 ** (rng.uniform(-3, 3) / 20) / rms)
    peak = np.abs(wave).max()
    if peak > 0.89:
        wave = wave * (0.89 / peak)
    return wave.astype(np.float32)


def _offscreen_noise(rng: np.random.Generator, total: int, rate: int) -> np.ndarray:
    """Sound with no visible source: mains hum, or band noise swelling and fading."""
    t = np.arange(total) / rate
    if rng.random() < 0.5:
        base = rng.choice([50.0, 60.0]) * rng.uniform(0.98, 1.02)
        noise = sum(np.sin(2 * np.pi * k * base * t) / k for k in range(1, 6))
    else:
        low = rng.uniform(200.0, 2000.0)
        noise = _bandpass_noise(rng, total, rate, low, low * rng.uniform(1.5, 3.0))
        noise = noise * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t))
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-9)


# ----------------------------------------------------------------------------- frames


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        corners = [(np.cos(a), np.sin(a)) for a in angle + np.array([-90, 30, 150]) * np.pi / 180]
    elif shape == "diamond":
        corners = [(0, -1), (0.6, 0), (0, 1), (-0.6, 0)]
    elif shape == "star":
        corners = [
            ((1.0 if i % 2 == 0 else 0.45) * np.cos(angle + i * np.pi / 5 - np.pi / 2),
             (1.0 if i % 2 == 0 else 0.45) * np.sin(angle + i * np.pi / 5 - np.pi / 2))
            for i in range(10)
        ]
    elif shape == "cross":
        w = 0.3
        corners = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
    elif shape == "bar":
        corners = [(-0.35, -1), (0.35, -1), (0.35, 1), (-0.35, 1)]
    else:  # square
        corners = [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    return [(cx + r * x, cy + r * y) for x, y in corners]


def render_frame(name: str, seed: int | np.random.Generator = 0, size: int = 224) -> np.ndarray:
    """One frame showing an instrument's visual signature.

    The instrument's shape in its colour, at a random position and size, over a dark
    background with grey clutter (lines and blobs), so that no two frames are equal.

    Args:
        name: one of :data:`INSTRUMENTS`.
        seed: an integer or a numpy ``Generator``.
        size: the frame is ``size x size`` pixels.

    Returns:
        uint8 ``[size, size, 3]`` (RGB).
    """
    inst, rng = _instrument(name), _rng(seed)
    background = tuple(int(v) for v in rng.integers(10, 40, size=3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 8))):  # clutter: greys, never saturated
        grey = int(rng.integers(50, 140))
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, size=4))
        if rng.random() < 0.5:
            draw.line((x0, y0, x1, y1), fill=(grey, grey, grey), width=int(rng.integers(1, 4)))
        else:
            r = rng.uniform(0.03, 0.08) * size
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=(grey, grey, grey))
    # A large shape on a dark background: even a randomly initialised CLIP tells them apart.
    r = rng.uniform(0.28, 0.42) * size
    cx, cy = (float(v) for v in rng.uniform(r, size - r, size=2))
    if inst.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=inst.colour)
    elif inst.shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=inst.colour, width=max(2, int(r * 0.3)))
    else:
        draw.polygon(_polygon(inst.shape, cx, cy, r, float(rng.uniform(-0.3, 0.3))), fill=inst.colour)
    return np.asarray(image, dtype=np.uint8).copy()


# ----------------------------------------------------------------------------- clips


@dataclass
class ToyClip:
    """One generated clip.

    Attributes:
        video_id: ``"000042"`` for clip 42.
        label: the instrument name.
        audio: float32 ``[S]``: the instrument plus any off-screen noise.
        clean: float32 ``[S]``: the instrument alone.
        frames: uint8 ``[F, H, W, 3]``, frame ``k`` shows time ``(k + 0.5) / fps``.
        sample_rate: samples per second.
        fps: frames per second.
    """

    video_id: str
    label: str
    audio: np.ndarray
    clean: np.ndarray
    frames: np.ndarray
    sample_rate: int
    fps: float

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.audio) / self.sample_rate


def make_clip(
    index: int,
    seed: int = 0,
    duration: float = 5.0,
    sample_rate: int = 16000,
    fps: float = 1.0,
    frame_size: int = 224,
    noise: float = 0.0,
    instrument: str | None = None,
) -> ToyClip:
    """Clip ``index`` of the toy world of ``seed``.

    Args:
        index: clip number; the instrument is ``INSTRUMENTS[index % 8]`` unless given.
        seed: world seed.
        duration: seconds.
        sample_rate: audio rate.
        fps: frame rate (frames at ``(k + 0.5) / fps`` seconds).
        frame_size: square frame side in pixels.
        noise: level of off-screen noise relative to the instrument (RMS ratio, 0 = none).
        instrument: force an instrument.
    """
    from clipcore.video import frame_times

    name = instrument or INSTRUMENTS[index % len(INSTRUMENTS)]
    rng = np.random.default_rng([seed, index])
    clean = synthesize(name, duration, sample_rate, rng)
    audio = clean
    if noise > 0:
        rms = np.sqrt(np.mean(clean.astype(np.float64) ** 2))
        audio = clean + (noise * rms * _offscreen_noise(rng, len(clean), sample_rate)).astype(np.float32)
        peak = np.abs(audio).max()
        if peak > 0.95:
            audio, clean = audio * (0.95 / peak), clean * (0.95 / peak)
    frames = np.stack([render_frame(name, rng, frame_size) for _ in frame_times(duration, fps)])
    return ToyClip(f"{index:06d}", name, audio.astype(np.float32), clean.astype(np.float32), frames, sample_rate, fps)


def toy_clips(n_clips: int, seed: int = 0, **kwargs) -> Iterator[ToyClip]:
    """Clips ``0 .. n_clips-1`` of the world of ``seed`` (``kwargs`` go to :func:`make_clip`)."""
    for index in range(n_clips):
        yield make_clip(index, seed, **kwargs)


def write_toy_videos(
    out_dir: str | os.PathLike, n_clips: int, seed: int = 0, container: str = "mp4", **kwargs
) -> list[Path]:
    """Write clips as real video files (``<label>/<video_id>.<container>``).

    Args:
        out_dir: target folder.
        n_clips: how many.
        seed: world seed.
        container: ``"mp4"`` (H.264 + AAC, as found in the wild) or ``"mkv"`` (H.264 +
            FLAC: lossless audio, so decoding can be checked sample by sample).
        **kwargs: passed to :func:`make_clip`.

    Returns:
        The written paths.
    """
    return write_videos(toy_clips(n_clips, seed, **kwargs), out_dir, container)


def write_videos(clips: Iterable[ToyClip], out_dir: str | os.PathLike, container: str = "mp4") -> list[Path]:
    """Write any world's clips as video files (``<label>/<video_id>.<container>``); see
    :func:`write_toy_videos`."""
    from clipcore.video import write_video

    paths = []
    for clip in clips:
        path = Path(out_dir) / clip.label / f"{clip.video_id}.{container}"
        write_video(path, clip.frames, clip.fps, clip.audio, clip.sample_rate)
        paths.append(path)
    return paths


def write_toy_shards(
    out_dir: str | os.PathLike,
    n_clips: int,
    seed: int = 0,
    shard_size: int = 32,
    encoder=None,
    dataset: str = "toy",
    **kwargs,
) -> list[Path]:
    """Write clips straight into webdataset shards (no video files involved).

    Args:
        out_dir: target folder; shards are ``<dataset>-000000.tar``, ...
        n_clips: how many clips.
        seed: world seed.
        shard_size: clips per shard.
        encoder: a ``clipcore.query.QueryEncoder`` (or anything with ``name`` and
            ``encode_image``); when given, each sample also stores ``<encoder.name>.npy``.
        dataset: the dataset name in keys and metadata.
        **kwargs: passed to :func:`make_clip`.

    Returns:
        The shard paths.
    """
    return write_shards(toy_clips(n_clips, seed, **kwargs), out_dir, shard_size, encoder, dataset)


def write_shards(
    clips: Iterable[ToyClip], out_dir: str | os.PathLike, shard_size: int = 32, encoder=None, dataset: str = "toy"
) -> list[Path]:
    """Write any world's clips into webdataset shards; see :func:`write_toy_shards`."""
    from clipcore.shards import ShardSample, frame_embeddings, write_shard

    paths, batch = [], []
    for clip in clips:
        embeddings = {} if encoder is None else {encoder.name: frame_embeddings(encoder, clip.frames)}
        batch.append(
            ShardSample(dataset, clip.video_id, 0.0, clip.audio, clip.sample_rate, clip.frames, clip.fps, clip.label, embeddings)
        )
        if len(batch) == shard_size:
            paths.append(write_shard(Path(out_dir) / f"{dataset}-{len(paths):06d}.tar", batch))
            batch = []
    if batch:
        paths.append(write_shard(Path(out_dir) / f"{dataset}-{len(paths):06d}.tar", batch))
    return paths
