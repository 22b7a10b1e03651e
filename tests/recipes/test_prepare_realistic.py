"""prepare_shards on material like real downloads: every file ends, within a timeout, with
the right clips written or the right reason given; a clip that hangs is abandoned."""

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import psutil
import pytest

from tests.clipcore.realistic_video import cut_off, write_realistic_video

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "prepare_shards.py"


def _prepare(videos: Path, out: Path, *options, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the recipe as a user does; a hang fails the test instead of stalling the suite."""
    return subprocess.run([sys.executable, str(RECIPE), str(videos), str(out), *map(str, options)],
                          capture_output=True, text=True, timeout=timeout)


def _clips(out: Path) -> list[str]:
    keys = []
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            keys += [name[: -len(".flac")] for name in tar.getnames() if name.endswith(".flac")]
    return keys


def _skipped(out: Path) -> dict[str, str]:
    lines = (out / "skipped.tsv").read_text().splitlines()
    return {Path(line.split("\t")[0]).name: line.split("\t")[1] for line in lines}


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    root = tmp_path_factory.mktemp("downloads")
    write_realistic_video(root / "audio_longer.mp4", 6.0, 7.0)  # 720p, 24000/1001, AAC 48 kHz stereo
    write_realistic_video(root / "video_longer.mov", 6.0, 4.5, size=(640, 360), sample_rate=44100, layout="5.1")
    vfr = write_realistic_video(root / "vfr.mkv", 4.0, 4.0, size=(320, 240), sample_rate=44100,
                                variable_frame_rate=True)
    write_realistic_video(root / "rotated.mp4", 2.0, 2.0, size=(320, 240), rotation=90)
    write_realistic_video(root / "silent.mp4", 2.0, None, size=(320, 240))
    cut_off(root / "audio_longer.mp4", root / "cut.mp4")
    cut_off(vfr, root / "cut.mkv", 0.5)
    return root


@pytest.mark.parametrize("workers", [1, 2])
def test_realistic_files_give_their_clips_or_their_reason(downloads, tmp_path, workers):
    out = tmp_path / "shards"
    result = _prepare(downloads, out, "--clip-seconds", 1.5, "--workers", workers, "--short-side", 64)
    assert result.returncode == 0, result.stderr[-2000:]
    per_file = {}
    for key in _clips(out):
        per_file[key.split("/")[1]] = per_file.get(key.split("/")[1], 0) + 1
    # Clips lie where both tracks have data: 6 s of picture, 4.5 s of sound, 4 s, 2 s.
    assert per_file == {"audio_longer": 4, "video_longer": 3, "vfr": 2, "rotated": 1, "cut": 1}
    skipped = _skipped(out)
    assert set(skipped) == {"silent.mp4", "cut.mp4", "cut.mkv"}
    assert "has no audio track" in skipped["silent.mp4"]
    assert "cannot be read as video" in skipped["cut.mp4"]
    assert "is truncated" in skipped["cut.mkv"]


@pytest.mark.slow
def test_hundreds_of_clips_with_two_workers_and_a_hanging_one(tmp_path):
    """A worker frozen by SIGSTOP hangs for real (no Python can interrupt it): the watchdog
    kills it, lists its clip as abandoned, and the other clips are all written."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for index in range(20):
        write_realistic_video(videos / f"take{index:02d}.mp4", 15.0, 15.0, size=(160, 120), seed=index)
    out = tmp_path / "shards"
    command = [sys.executable, str(RECIPE), str(videos), str(out), "--clip-seconds", 1, "--workers", 2,
               "--short-side", 32, "--shard-size", 64, "--clip-timeout", 5]
    process = subprocess.Popen(list(map(str, command)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    frozen = _freeze_a_worker(process, out)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-2000:]
    abandoned = [line for line in (out / "skipped.tsv").read_text().splitlines() if "took longer than 5 s" in line]
    assert frozen and 1 <= len(abandoned) <= 2
    assert len(_clips(out)) + len(abandoned) == 300
    assert f"wrote {300 - len(abandoned)} clips in 5 shards" in stdout


def _freeze_a_worker(process: subprocess.Popen, out: Path) -> bool:
    """Stop the writing workers (grandchildren under the forkserver) once shards are planned."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "plan.json").exists():
            workers = [p for child in psutil.Process(process.pid).children() for p in child.children()]
            if workers:
                for worker in workers:
                    os.kill(worker.pid, signal.SIGSTOP)
                return True
        time.sleep(0.05)
    return False
