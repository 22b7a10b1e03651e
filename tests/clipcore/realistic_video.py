"""Video files that look like downloaded VGGSound, MUSIC and film material, made by the tests.

The toy world writes small square videos with a mono track; real downloads are 720p H.264
at NTSC rates with AAC in stereo or 5.1, tracks of unequal length, variable frame rates,
rotation tags, missing tracks and cut-off files. :func:`write_realistic_video` makes any
of these from a few arguments, quickly enough for the test suite (x264 ``ultrafast``).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

__all__ = ["write_realistic_video", "cut_off", "picture", "bar_column"]


def picture(index: int, width: int, height: int) -> np.ndarray:
    """Frame ``index``: a colour gradient with a white bar at columns ``bar_column(index, width)``
    and 40 pixels wide; uint8 ``[H, W, 3]``."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = (x + 7 * index) % 256
    image[..., 1] = (y + 3 * index) % 256
    image[..., 2] = (x + y) / 4
    start = bar_column(index, width)
    image[:, start : start + 40] = 255
    return image


def bar_column(index: int, width: int) -> int:
    """First column of frame ``index``'s white bar."""
    return (13 * index) % max(1, width - 40)


def write_realistic_video(
    path: str | Path,
    video_seconds: float | None = 4.0,
    audio_seconds: float | None = 4.0,
    size: tuple[int, int] = (1280, 720),
    fps: Fraction = Fraction(24000, 1001),
    sample_rate: int = 48000,
    layout: str = "stereo",
    variable_frame_rate: bool = False,
    rotation: int | None = None,
    gop: int = 48,
    seed: int = 0,
    video_start: float = 0.0,
) -> Path:
    """Write an H.264 + AAC file like a real download.

    Args:
        path: target (``.mp4``, ``.mov`` or ``.mkv``).
        video_seconds: length of the picture; None writes no video track.
        audio_seconds: length of the sound (a 440 Hz tone with noise); None writes no
            audio track.
        size: ``(width, height)`` in pixels, both even.
        fps: nominal frame rate (NTSC 24000/1001 by default).
        sample_rate: audio rate.
        layout: audio channel layout (``mono``, ``stereo``, ``5.1``).
        variable_frame_rate: frame intervals alternate between 0.5x and 1.5x the nominal one.
        rotation: display rotation in degrees (90, 180, 270) stored as the stream's tag.
        gop: frames between key frames.
        seed: noise seed.
        video_start: seconds into the file at which the picture starts (a recording whose
            camera started after its sound).

    Returns:
        The written path.
    """
    import av

    path = Path(path)
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        streams = {}
        if video_seconds is not None:
            video = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "g": str(gop)})
            video.width, video.height = size
            video.pix_fmt = "yuv420p"
            video.codec_context.time_base = Fraction(1, 24000) if variable_frame_rate else 1 / fps
            if rotation is not None:
                video.set_display_rotation(rotation)
            streams["video"] = video
        if audio_seconds is not None:
            audio = out.add_stream("aac", rate=sample_rate, layout=layout)
            streams["audio"] = audio
        if "video" in streams:
            _write_frames(out, streams["video"], video_seconds, size, fps, variable_frame_rate, video_start)
        if "audio" in streams:
            _write_audio(out, streams["audio"], audio_seconds, sample_rate, layout, rng)
    return path


def _write_frames(out, stream, seconds: float, size: tuple[int, int], fps: Fraction, variable: bool,
                  start: float = 0.0) -> None:
    import av

    base = stream.codec_context.time_base
    time, index = Fraction(0), 0
    while time < seconds:
        frame = av.VideoFrame.from_ndarray(picture(index, *size), format="rgb24")
        frame.pts = round((time + Fraction(start)) / base)
        frame.time_base = base
        out.mux(stream.encode(frame))
        step = 1 / fps
        if variable:
            step *= Fraction(1, 2) if index % 2 else Fraction(3, 2)
        time, index = time + step, index + 1
    out.mux(stream.encode())


def _write_audio(out, stream, seconds: float, rate: int, layout: str, rng: np.random.Generator) -> None:
    import av

    channels = av.AudioLayout(layout).nb_channels
    total, chunk = round(seconds * rate), 1024
    for offset in range(0, total, chunk):
        count = min(chunk, total - offset)
        t = (offset + np.arange(count)) / rate
        tone = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(count)
        samples = np.repeat(tone[:, None].astype(np.float32), channels, axis=1).reshape(1, -1)  # interleaved:
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout=layout)  # PyAV's planar frames stop at 8
        frame.sample_rate = rate
        frame.pts = offset
        frame.time_base = Fraction(1, rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode())


def cut_off(source: str | Path, target: str | Path, fraction: float = 0.5) -> Path:
    """Copy the first ``fraction`` of a file's bytes, as an interrupted download leaves it."""
    data = Path(source).read_bytes()
    Path(target).write_bytes(data[: int(len(data) * fraction)])
    return Path(target)
