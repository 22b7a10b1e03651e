"""Video files through PyAV (which bundles FFmpeg): the audio track and sampled frames.

Frame ``k`` of a clip is the picture shown at ``start + (k + 0.5) / fps`` seconds (the
middle of its interval, as the official CLIPSep preprocessing does at 1 fps).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from clipcore.files import atomic_write

__all__ = ["VIDEO_EXTENSIONS", "frame_times", "write_video"]

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")
"""File extensions the project treats as video when it searches folders."""


def frame_times(duration: float, fps: float) -> list[float]:
    """Times (seconds from the clip start) of the frames of a clip: ``(k + 0.5) / fps < duration``."""
    count = max(0, math.ceil(duration * fps - 0.5 - 1e-9))
    return [(k + 0.5) / fps for k in range(count)]


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray,
    sample_rate: int,
) -> Path:
    """Write a video file (atomically): H.264 frames plus a mono audio track.

    The container follows the extension: ``.mp4``/``.mov`` get AAC audio, ``.mkv`` gets
    FLAC (lossless), ``.webm`` gets VP9 + Opus.

    Args:
        path: target file.
        frames: uint8 ``[F, H, W, 3]`` RGB, H and W even; frame ``k`` is shown from
            ``k / fps`` to ``(k + 1) / fps``.
        fps: frames per second (a whole number or a simple fraction).
        audio: float32 ``[S]`` in ``[-1, 1]``.
        sample_rate: audio rate.

    Returns:
        The written path.
    """
    import av
    from fractions import Fraction

    path = Path(path)
    suffix = path.suffix.lower()
    video_codec, audio_codec = {
        ".mp4": ("libx264", "aac"),
        ".mov": ("libx264", "aac"),
        ".mkv": ("libx264", "flac"),
        ".webm": ("libvpx-vp9", "libopus"),
    }[suffix]
    rate = Fraction(fps).limit_denominator(1001)

    def write(tmp: Path) -> None:
        with av.open(str(tmp), "w", format={".mkv": "matroska", ".mov": "mov"}.get(suffix, suffix[1:])) as out:
            vstream = out.add_stream(video_codec, rate=rate)
            vstream.width, vstream.height = frames.shape[2], frames.shape[1]
            vstream.pix_fmt = "yuv420p"
            astream = out.add_stream(audio_codec, rate=48000 if audio_codec == "libopus" else sample_rate)
            astream.layout = "mono"
            for image in frames:
                out.mux(vstream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
            out.mux(vstream.encode())
            chunk = 1024
            for offset in range(0, len(audio), chunk):
                piece = np.ascontiguousarray(audio[None, offset : offset + chunk], dtype=np.float32)
                frame = av.AudioFrame.from_ndarray(piece, format="flt", layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = offset
                frame.time_base = Fraction(1, sample_rate)
                out.mux(astream.encode(frame))
            out.mux(astream.encode())

    return atomic_write(path, write)
