"""Decoding video files with PyAV: audio and frames where they belong, clear reasons for bad files."""

import numpy as np
import pytest

from clipcore import synthetic
from clipcore.video import VideoError, frame_times, probe, read_clip, write_video

RATE = 16000


@pytest.fixture(scope="module")
def clip():
    return synthetic.make_clip(1, seed=0, duration=3.0, frame_size=96)


@pytest.fixture(scope="module")
def videos(tmp_path_factory, clip):
    root = tmp_path_factory.mktemp("videos")
    paths = {}
    for suffix in ("mkv", "mp4", "mov", "webm"):
        paths[suffix] = write_video(root / f"clip.{suffix}", clip.frames, clip.fps, clip.audio, RATE)
    return paths


def test_frame_times_are_interval_midpoints():
    assert frame_times(3.0, 1.0) == [0.5, 1.5, 2.5]
    assert frame_times(2.4, 1.0) == [0.5, 1.5]
    assert frame_times(1.0, 4.0) == [0.125, 0.375, 0.625, 0.875]


def test_lossless_track_decodes_sample_exact_with_its_frames(videos, clip):
    info = probe(videos["mkv"])
    assert info.has_audio and info.has_video and info.duration == pytest.approx(3.0, abs=0.05)
    decoded = read_clip(videos["mkv"], sample_rate=RATE, fps=1.0, short_side=96)
    assert decoded.audio.shape == clip.audio.shape
    assert np.abs(decoded.audio - clip.audio).max() < 1e-4  # FLAC, 16 bits
    assert decoded.frames.shape == clip.frames.shape
    for k in range(len(clip.frames)):  # H.264 is lossy: close to its own frame, far from others
        errors = [np.abs(decoded.frames[k].astype(int) - other).mean() for other in clip.frames]
        assert np.argmin(errors) == k and errors[k] < 6


def test_window_and_resampling(videos, clip):
    decoded = read_clip(videos["mkv"], start=1.0, end=2.5, sample_rate=RATE, fps=2.0, short_side=48)
    assert decoded.audio.shape == (int(1.5 * RATE),)
    assert np.abs(decoded.audio - clip.audio[RATE : int(2.5 * RATE)]).max() < 1e-4
    assert decoded.frames.shape == (3, 48, 48, 3)  # at 1.25, 1.75, 2.25 s
    half = read_clip(videos["mkv"], sample_rate=8000, short_side=96)
    assert half.audio.shape == (3 * 8000,)


@pytest.mark.parametrize("suffix", ["mp4", "mov", "webm"])
def test_lossy_tracks_are_aligned(videos, clip, suffix):
    decoded = read_clip(videos[suffix], sample_rate=RATE, end=3.0)
    assert decoded.audio.shape == clip.audio.shape and len(decoded.frames) == 3
    error = np.sqrt(np.mean((decoded.audio - clip.audio) ** 2) / np.mean(clip.audio**2))
    assert error < 0.1  # AAC or Opus at the default bit rate, and no offset


def test_short_side_is_resized_keeping_the_aspect(tmp_path):
    frames = np.full((2, 64, 96, 3), 128, np.uint8)
    path = write_video(tmp_path / "wide.mkv", frames, 1.0, np.zeros(2 * RATE, np.float32), RATE)
    assert read_clip(path).frames.shape == (2, 224, 336, 3)


def test_bad_files_give_one_clear_reason(tmp_path, videos):
    truncated = tmp_path / "truncated.mkv"
    truncated.write_bytes(videos["mkv"].read_bytes()[: videos["mkv"].stat().st_size // 2])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    cases = {
        truncated: "truncated",
        garbage: "cannot be read as video",
        tmp_path / "missing.mp4": "no such file",
    }
    import av

    silent = tmp_path / "silent.mp4"
    with av.open(str(silent), "w") as out:
        stream = out.add_stream("libx264", rate=1)
        stream.width = stream.height = 32
        for _ in range(2):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")))
        out.mux(stream.encode())
    cases[silent] = "has no audio track"
    for path, reason in cases.items():
        with pytest.raises(VideoError) as error:
            read_clip(path)
        message = str(error.value)
        assert str(path) in message and reason in message and "\n" not in message
