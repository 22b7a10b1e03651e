"""``clipsep separate --devices N``: files shared out across worker processes."""

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from clipcore.audio import save_audio
from clipcore.errors import EXIT_PARTIAL
from clipcore.query import QueryEncoder
from clipsep.cli import main
from clipsep.model import CLIPSep
from clipsep.separate import Separator

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "clipsep"
    torch.manual_seed(0)
    Separator(CLIPSep.tiny(query_dim=16), QueryEncoder.tiny(embed_dim=16)).save_pretrained(folder)
    return folder


def _contents(folder):
    """Each file's format and exact samples (float WAV headers hold a time stamp, so not
    the bytes); each separation.json but the time it took; the names of the claims left
    (the failed inputs'; they hold a process id)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.parent.name == ".claims":
            out[path.relative_to(folder).as_posix()] = "claim"
        elif path.name == "separation.json":
            record = json.loads(path.read_text())
            del record["seconds_taken"]
            out[path.relative_to(folder).as_posix()] = record
        elif path.is_file():
            data, rate = sf.read(path, dtype="float32", always_2d=True)
            out[path.relative_to(folder).as_posix()] = (rate, sf.info(path).subtype, data.shape,
                                                        hashlib.sha256(data.tobytes()).hexdigest())
    return out


@pytest.mark.slow
def test_two_workers_write_what_one_process_writes(checkpoint, tmp_path, capsys):
    stems = tmp_path / "stems"
    rng = np.random.default_rng(0)
    files = [(40000, 16000, 1), (30000, 44100, 2), (9000, 22050, 1), (20000, 16000, 1), (3000, 16000, 2)]
    seconds = sum(samples / rate for samples, rate, _ in files)
    for index, (samples, rate, channels) in enumerate(files):
        wave = torch.from_numpy(rng.normal(0, 0.1, (channels, samples)).astype("float32"))
        save_audio(stems / f"take{index}.wav", wave, rate)
    (stems / "broken.wav").write_bytes(b"RIFF but not really a wave file")
    outputs = {}
    for devices in (1, 2):
        out = tmp_path / f"out{devices}"
        status = main(["separate", "--checkpoint", str(checkpoint), "-q", "violin", "-q", "drums", "--residual",
                       "--mask-power", "1.5", "--device", "cpu", "--devices", str(devices), "--bit-depth", "32f",
                       "-o", str(out), str(stems)])
        captured = capsys.readouterr()
        assert status == 1  # the broken file fails; the others are written
        assert captured.out.count("Separated 5 of 6 inputs: 15 files written") == 1  # one summary
        assert "broken.wav: cannot be read as audio" in captured.err and "Traceback" not in captured.err
        bar = captured.err.split("\n")[0]  # one bar over all the audio, rising to complete
        shown = [float(n) for n in re.findall(rf"\| ([0-9.]+)/{seconds:.1f} s", bar)]
        assert bar.startswith("\rseparating:") and shown == sorted(shown) and shown[-1] == round(seconds, 1)
        outputs[devices] = _contents(out)
    assert len(outputs[1]) == 21 and outputs[2] == outputs[1]  # 5 x (3 stems + record), sample for sample
    # The mask power travels to the workers (in SeparatorSpec): their stems equal the one process's.
    assert outputs[1]["take0/separation.json"]["settings"]["mask_power"] == 1.5


def test_devices_must_be_available(checkpoint, tmp_path, capsys, monkeypatch):
    # One CUDA device, whatever this machine has, so that two are refused everywhere.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    save_audio(tmp_path / "a.wav", torch.zeros(1, 1600), 16000)
    for device, count in (("cpu", 0), ("cuda", 2)):
        status = main(["separate", "--checkpoint", str(checkpoint), "-q", "violin", "--device", device,
                       "--devices", str(count), "-o", str(tmp_path / "out"), str(tmp_path / "a.wav")])
        err = capsys.readouterr().err
        assert status != 0 and "Traceback" not in err
        assert ("--devices must be at least 1" if count == 0 else "--devices 2: only 1 CUDA device(s)") in err
    assert not (tmp_path / "out").exists()


# Installed as sitecustomize.py in the command's processes: any process but the first
# (a worker, however the pool starts it) is killed outright when it opens this file.
_KILLER = '''
import os
import signal

import soundfile

FIRST = int(os.environ.setdefault("CLIPAUDIO_TEST_FIRST_PID", str(os.getpid())))


class _SoundFileThatKills(soundfile.SoundFile):
    def __init__(self, file, *args, **kwargs):
        named = isinstance(file, (str, os.PathLike)) and os.path.basename(os.fspath(file)) == "kills-its-worker.wav"
        if named and os.getpid() != FIRST:
            os.kill(os.getpid(), signal.SIGKILL)
        super().__init__(file, *args, **kwargs)


soundfile.SoundFile = _SoundFileThatKills
'''


@pytest.mark.slow
def test_a_worker_that_dies_fails_only_its_file(checkpoint, tmp_path):
    names = ["a", "kills-its-worker", "c", "d"]
    for index, name in enumerate(names):
        wave = torch.from_numpy(np.random.default_rng(index).normal(0, 0.1, (1, 8000)).astype("float32"))
        save_audio(tmp_path / "in" / f"{name}.wav", wave, 16000)
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(_KILLER)
    env = {key: value for key, value in os.environ.items() if key != "CLIPAUDIO_TEST_FIRST_PID"}
    env.update(PYTHONPATH=os.pathsep.join([str(tmp_path / "inject"), str(ROOT)]), OMP_NUM_THREADS="1")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "clipsep.cli", "separate", "--checkpoint", str(checkpoint), "-q", "violin",
               "--device", "cpu", "--devices", "2", "-o", str(out), str(tmp_path / "in")]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        _, err = process.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):  # no worker outlives the test
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == EXIT_PARTIAL, err[-3000:]
    for name in ("a", "c", "d"):
        assert sf.info(str(out / name / "violin.wav")).frames == 8000
    assert not (out / "kills-its-worker" / "violin.wav").exists()
    (line,) = [line for line in err.splitlines() if "kills-its-worker.wav" in line]
    assert re.search(r"died|killed|signal|ended", line) and "Traceback" not in err


def test_a_worker_interrupted_while_it_starts_goes_on_without_a_traceback(checkpoint, tmp_path):
    """Ctrl-C reaches the whole process group, and is the main process's to handle: a worker
    still importing when it came printed a KeyboardInterrupt traceback and died."""
    import time

    save_audio(tmp_path / "in" / "a.wav", torch.zeros(1, 8000), 16000)
    command = [sys.executable, "-m", "clipsep.cli", "separate", "--checkpoint", str(checkpoint), "-q", "violin",
               "--device", "cpu", "--devices", "2", "-o", str(tmp_path / "out"), str(tmp_path / "in")]
    process = subprocess.Popen(command, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def workers() -> list[int]:
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        return [int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]

    try:
        deadline = time.monotonic() + 120
        while len(workers()) < 2:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.005)
        time.sleep(0.3)  # importing torch (about 2 s)
        for pid in workers():
            os.kill(pid, signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0 and "Traceback" not in err, err
    assert sf.info(str(tmp_path / "out" / "a" / "violin.wav")).frames == 8000
