"""Clips of the miniature MUSIC world: eleven sampled instruments, pictured, in three splits.

A clip shows one instrument (:mod:`clipcore.miniature.drawings`) and plays a melody on it
(:mod:`clipcore.miniature.sound`). Training clips also carry off-screen sound the picture
does not show (another instrument, drums or noise), as MUSIC's YouTube videos do. The
three splits are separate worlds, each with its own seed: ``train`` (fit), ``validation``
(every choice of guidance, steps, checkpoint or threshold) and ``test`` (reported only).
Clip ``i`` of a split is always the same, whatever the number of clips asked for.

Usage::

    from clipcore.miniature import world
    clip = world.make_clip(0, "train", offscreen=0.3)        # a clipcore.synthetic.ToyClip
    world.write_videos("videos/test", 64, "test")             # <label>/<id>.mp4
    world.captions("cello")                                   # phrasings for alignment
    world.heldout_prompts("cello")                            # phrasings never aligned on
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from clipcore import synthetic
from clipcore.miniature import sound
from clipcore.miniature.drawings import draw

__all__ = ["INSTRUMENTS", "SPLITS", "ALIGNMENT_TEMPLATES", "HELDOUT_TEMPLATES", "captions", "heldout_prompts",
           "make_clip", "clips", "write_videos", "write_shards"]

INSTRUMENTS = sound.INSTRUMENTS

SPLITS: dict[str, int] = {"train": 1300, "validation": 1301, "test": 1302}
"""The seed of each split."""

ALIGNMENT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}", "a drawing of a {}", "a picture of the {}", "playing the {}", "a person playing the {}",
    "the sound of a {}", "a {} solo", "a video of a {} performance", "{}", "a {} on stage", "an old {}",
    "a musician with a {}", "listen to the {}", "a close-up of a {}", "a concert for {}", "a student practising {}",
)
"""Phrasings the toy CLIP is aligned on."""

HELDOUT_TEMPLATES: tuple[str, ...] = (
    "someone plays the {}", "{} music", "a recording of {} playing", "the {} being played",
    "a song performed on the {}", "here is how a {} sounds",
)
"""Phrasings never seen in alignment, for evaluating text queries."""


def _check(name: str) -> None:
    sound.voice(name)  # a ValueError naming the choices for unknown names


def captions(name: str) -> list[str]:
    """Alignment captions of an instrument, one per :data:`ALIGNMENT_TEMPLATES`."""
    _check(name)
    return [template.format(name) for template in ALIGNMENT_TEMPLATES]


def heldout_prompts(name: str) -> list[str]:
    """Evaluation prompts of an instrument, one per :data:`HELDOUT_TEMPLATES`."""
    _check(name)
    return [template.format(name) for template in HELDOUT_TEMPLATES]


def split_seed(split: str | int) -> int:
    """The seed of a split name, or an integer seed as it is."""
    if isinstance(split, str):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
        return SPLITS[split]
    return int(split)


def make_clip(
    index: int,
    split: str | int = "train",
    duration: float = 5.0,
    sample_rate: int = 16000,
    fps: float = 1.0,
    frame_size: int = 224,
    offscreen: float = 0.0,
    instrument: str | None = None,
    transpose: int = 0,
) -> synthetic.ToyClip:
    """Clip ``index`` of a split.

    Args:
        index: clip number; the instrument is ``INSTRUMENTS[index % 11]`` unless given.
        split: ``"train"``, ``"validation"``, ``"test"`` or an integer seed.
        duration: seconds.
        sample_rate: audio rate.
        fps: frame rate (frames at ``(k + 0.5) / fps`` seconds).
        frame_size: square frame side in pixels.
        offscreen: level of off-screen sound relative to the instrument (RMS ratio, scaled
            by a random factor in 0.5-1.5 per clip; 0 = none).
        instrument: force an instrument.
        transpose: semitones added to every note (see :func:`clipcore.miniature.sound.play`).

    Returns:
        A :class:`clipcore.synthetic.ToyClip`: ``audio`` (with off-screen sound) and
        ``clean`` (the instrument alone), float32 ``[S]``; frames uint8 ``[F, H, W, 3]``.
    """
    from clipcore.video import frame_times

    name = instrument or INSTRUMENTS[index % len(INSTRUMENTS)]
    _check(name)
    rng = np.random.default_rng([split_seed(split), index])
    clean, _ = sound.normalize(sound.play(name, duration, sample_rate, rng, transpose), rng)
    audio = clean
    if offscreen > 0:
        extra, _ = sound.offscreen_sound(rng, len(clean), sample_rate, exclude=name)
        rms = np.sqrt(np.mean(clean**2))
        audio = clean + offscreen * rng.uniform(0.5, 1.5) * rms * extra
        peak = np.abs(audio).max()
        if peak > 0.95:
            audio, clean = audio * (0.95 / peak), clean * (0.95 / peak)
    frames = np.stack([draw(name, rng, frame_size) for _ in frame_times(duration, fps)])
    return synthetic.ToyClip(f"{index:06d}", name, audio.astype(np.float32), clean.astype(np.float32), frames,
                             sample_rate, fps)


def clips(n_clips: int, split: str | int = "train", start: int = 0, **kwargs) -> Iterator[synthetic.ToyClip]:
    """Clips ``start .. start+n_clips-1`` of a split (``kwargs`` go to :func:`make_clip`);
    each clip depends only on the split and its index."""
    for index in range(start, start + n_clips):
        yield make_clip(index, split, **kwargs)


def write_videos(out_dir: str | os.PathLike, n_clips: int, split: str | int = "train", container: str = "mp4",
                 start: int = 0, **kwargs) -> list[Path]:
    """Write clips ``start .. start+n_clips-1`` of a split as video files
    (``<label>/<video_id>.<container>``)."""
    return synthetic.write_videos(clips(n_clips, split, start, **kwargs), out_dir, container)


def write_shards(out_dir: str | os.PathLike, n_clips: int, split: str | int = "train", shard_size: int = 32,
                 encoder=None, **kwargs) -> list[Path]:
    """Write a split's clips straight into webdataset shards named after the split."""
    dataset = split if isinstance(split, str) else "music"
    return synthetic.write_shards(clips(n_clips, split, **kwargs), out_dir, shard_size, encoder, dataset)
