"""Video files through PyAV (which bundles FFmpeg): the audio track and sampled frames.

Frame ``k`` of a clip is the picture shown at ``start + (k + 0.5) / fps`` seconds (the
middle of its interval, as the official CLIPSep preprocessing does at 1 fps), turned
upright when the file carries a display rotation (phone videos).

Decoding uses FFmpeg's frame threads only while PyAV's logging is off (its default).
With ``av.logging.set_level(...)`` in effect, FFmpeg's threads call back into Python to
log and need the GIL, while the main thread holds it closing the decoder after a clip
ends early: a deadlock, seen at random on 720p H.264 and never on small videos. Whoever
wants FFmpeg quieter uses ``av.logging.set_libav_level``, which installs no callback.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipcore.errors import ClipAudioError
from clipcore.files import atomic_write

__all__ = ["VIDEO_EXTENSIONS", "VideoError", "VideoInfo", "Clip", "frame_times", "probe", "read_clip", "write_video"]

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")
"""File extensions the project treats as video when it searches folders."""


TRUNCATION_TOLERANCE = 0.5
"""Seconds of audio that may be missing at the end before a file counts as truncated."""

START_TOLERANCE = 0.5
"""Seconds a track may start after the file's start and still count as starting with it
(the clip then starts at 0: its audio padded with that much silence, or its first frame
shown that much early); a track that starts later moves the clips' start."""


class VideoError(ClipAudioError):
    """A video file that cannot be used, described in one sentence naming the file."""


@dataclass
class VideoInfo:
    """What :func:`probe` finds.

    Attributes:
        duration: seconds from the file's start to the latest stated end (a stream's, or the
            container's).
        has_audio: the file has an audio track.
        has_video: the file has a video track.
        common_start: seconds from the file's start at which both tracks hold data: the
            later track's start, where it starts more than :data:`START_TOLERANCE` in; else 0.
        common_end: seconds from the file's start at which the first track ends, where the
            streams state their lengths (mp4 and mov in their headers, Matroska and WebM in
            their ``DURATION`` tags); else ``duration``.
    """

    duration: float
    has_audio: bool
    has_video: bool
    common_start: float = 0.0
    common_end: float | None = None

    def __post_init__(self) -> None:
        if self.common_end is None:
            self.common_end = self.duration


@dataclass
class Clip:
    """A decoded stretch of a video.

    Attributes:
        audio: float32 ``[S]`` mono.
        frames: uint8 ``[F, H, W, 3]`` RGB; frame ``k`` shows ``start + (k + 0.5) / fps``.
        sample_rate: audio rate.
        fps: frame rate.
        start: seconds from the start of the file.
    """

    audio: np.ndarray
    frames: np.ndarray
    sample_rate: int
    fps: float
    start: float

    @property
    def duration(self) -> float:
        """Length of the audio in seconds."""
        return len(self.audio) / self.sample_rate


def _reason(error: Exception) -> str:
    text = str(getattr(error, "strerror", None) or error).strip()
    return (text.splitlines()[0] if text else type(error).__name__).rstrip(".")


def _open(path: Path):
    import av

    if not path.is_file():
        raise VideoError(f"{path}: no such file.")
    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise VideoError(f"{path}: cannot be read as video ({_reason(error)}).") from None


def probe(path: str | os.PathLike) -> VideoInfo:
    """Duration and streams of a video file, read from its header (fast).

    Raises:
        VideoError: missing or unreadable file, or no known duration.
    """
    path = Path(path)
    with _open(path) as container:
        spans = [_span(s) for s in container.streams if s.type in ("audio", "video")]
        durations = [end for _, end in spans if end is not None]
        if container.duration:  # a length: from the container's first timestamp (an MPEG-TS starts at 1.4 s)
            durations.append((container.duration + max(container.start_time or 0, 0)) / 1_000_000)
        if not durations:
            raise VideoError(f"{path}: its duration is unknown (no stream states it).")
        tracks = [_span(s[0]) for s in (container.streams.audio[:1], container.streams.video[:1]) if s]
        start = max((first for first, _ in tracks), default=0.0)
        ends = [end for _, end in tracks if end is not None]
        return VideoInfo(
            duration=max(durations),
            has_audio=bool(container.streams.audio),
            has_video=bool(container.streams.video),
            common_start=start if start > START_TOLERANCE else 0.0,
            common_end=min(ends) if len(ends) == 2 else None,
        )


def _span(stream) -> tuple[float, float | None]:
    """Seconds from the file's start at which a stream starts (at least 0) and ends (None
    where neither its header nor a Matroska ``DURATION`` tag states its length)."""
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base else 0.0
    if stream.duration and stream.time_base:
        length: float | None = float(stream.duration * stream.time_base)
    else:
        tag = next((value for key, value in stream.metadata.items() if key.upper().startswith("DURATION")), None)
        length = _clock_seconds(tag)
    return max(start, 0.0), (start + length if length else None)


def _clock_seconds(text: str | None) -> float | None:
    """``"HH:MM:SS.fraction"`` (Matroska's ``DURATION`` tag) in seconds; None if it is not one."""
    try:
        hours, minutes, seconds = (text or "").strip().split(":")
        value = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def read_clip(
    path: str | os.PathLike,
    start: float = 0.0,
    end: float | None = None,
    sample_rate: int = 16000,
    fps: float = 1.0,
    short_side: int = 224,
) -> Clip:
    """Decode the audio (the channels' mean, resampled) and frames (at ``fps``, resized) of a stretch.

    Args:
        path: a video file FFmpeg reads (mp4, mkv, webm, avi, mov, ...).
        start: seconds from the start of the file.
        end: seconds; None reads to the end.
        sample_rate: audio rate of the result.
        fps: frames per second of the result.
        short_side: frames are resized so that their short side has this many pixels.

    Returns:
        A :class:`Clip` whose audio has exactly ``round((end - start) * sample_rate)``
        samples when ``end`` is given.

    Raises:
        VideoError: missing or unreadable file, no audio or no video track, a decoding
            error, or a truncated file (data ends before ``end`` or the stated duration).
    """
    import av
    import av.logging

    path = Path(path)
    with _open(path) as container:
        if not container.streams.audio:
            raise VideoError(f"{path}: has no audio track.")
        if not container.streams.video:
            raise VideoError(f"{path}: has no video track.")
        stated = container.duration / 1_000_000 if container.duration else None
        astream, vstream = container.streams.audio[0], container.streams.video[0]
        if av.logging.get_level() is None:  # see the module notes: threads that log deadlock
            vstream.thread_type = "AUTO"
        # The channels resampled as they are, then averaged: FFmpeg's own downmix to mono adds
        # them (a stereo track of one signal came out 1.41 times as loud, 5.1 3.41 times).
        resampler = av.AudioResampler(format="flt", rate=sample_rate)  # packed: planar 7.1 crashed PyAV
        chunks: list[np.ndarray] = []
        audio_start: float | None = None
        images: list[np.ndarray] = []
        previous = None
        audio_done = video_done = False
        try:
            if start > 0:
                container.seek(int(start * 1_000_000), backward=True)
            for packet in container.demux(astream, vstream):
                for frame in packet.decode():
                    if frame.pts is None:
                        continue
                    time = float(frame.pts * frame.time_base)
                    if packet.stream is astream:
                        if audio_done:
                            continue
                        if audio_start is None:
                            audio_start = time
                        chunks.extend(_mono(out) for out in resampler.resample(frame))
                        audio_done = end is not None and time > end
                    else:
                        previous = previous or frame
                        while not video_done and start + (len(images) + 0.5) / fps < time:
                            images.append(_picture(previous, short_side))
                            video_done = end is not None and start + (len(images) + 0.5) / fps >= end
                        previous = frame
                if audio_done and video_done:
                    break
            chunks.extend(_mono(out) for out in resampler.resample(None))
        except av.FFmpegError as error:
            raise VideoError(f"{path}: decoding failed ({_reason(error)}).") from None
        if audio_start is None or not chunks:
            raise VideoError(f"{path}: its audio track holds no samples.")
        audio = _align(np.concatenate(chunks), audio_start, start, sample_rate)
        target = (end if end is not None else stated or start + len(audio) / sample_rate) - start
        if len(audio) / sample_rate < target - TRUNCATION_TOLERANCE:
            raise VideoError(
                f"{path}: is truncated (audio stops at {start + len(audio) / sample_rate:.1f} s "
                f"of {start + target:.1f} s)."
            )
        audio = np.pad(audio, (0, max(0, round(target * sample_rate) - len(audio))))[: round(target * sample_rate)]
        while previous is not None and len(images) < len(frame_times(target, fps)):
            images.append(_picture(previous, short_side))
        if not images:
            raise VideoError(f"{path}: has no frames between {start:.1f} s and {start + target:.1f} s.")
        return Clip(audio.astype(np.float32), np.stack(images), sample_rate, fps, start)


def _mono(frame) -> np.ndarray:
    """float32 ``[S]``: the mean of a packed float audio frame's channels."""
    return frame.to_ndarray().reshape(-1, len(frame.layout.channels)).mean(1)


def _align(audio: np.ndarray, audio_start: float, start: float, rate: int) -> np.ndarray:
    """Cut (or zero-pad) decoded audio that begins at ``audio_start`` so it begins at ``start``."""
    offset = round((start - audio_start) * rate)
    return audio[offset:] if offset >= 0 else np.concatenate([np.zeros(-offset, np.float32), audio])


def _picture(frame, short_side: int) -> np.ndarray:
    """uint8 ``[H, W, 3]`` RGB with the short side ``short_side``, turned upright."""
    scale = short_side / min(frame.width, frame.height)
    width, height = round(frame.width * scale), round(frame.height * scale)
    image = frame.to_ndarray(format="rgb24", width=width, height=height)
    quarter_turns = round((frame.rotation or 0) / 90) % 4  # counter-clockwise, as FFmpeg shows it
    return np.ascontiguousarray(np.rot90(image, quarter_turns)) if quarter_turns else image


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
    from fractions import Fraction

    import av

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
