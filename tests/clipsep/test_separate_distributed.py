"""Many processes on one output folder: claims, a launcher's environment, resuming."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from clipcore.errors import UsageError
from clipcore.query import QueryEncoder
from clipsep.batch_workers import launcher_process
from clipsep.claims import CLAIMS_DIR, claim
from clipsep.model import CLIPSep
from clipsep.separate import Separator
from tests.subprocesses import sigterm_when


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "clipsep"
    torch.manual_seed(0)
    Separator(CLIPSep.tiny(query_dim=16), QueryEncoder.tiny(embed_dim=16)).save_pretrained(folder)
    return folder


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_one_claim_per_input_and_stale_claims_are_taken_over(tmp_path):
    started = time.time()
    first = claim(tmp_path, "take", started)
    assert first is not None and not first.taken_over
    assert claim(tmp_path, "take", started) is None  # held (by this live process)
    marker = tmp_path / CLAIMS_DIR / "take.claim"
    assert json.loads(marker.read_text())["pid"] == os.getpid()
    # The holder died on this host: taken over at once.
    marker.write_text(json.dumps({"host": json.loads(marker.read_text())["host"], "pid": _dead_pid(), "time": 0}))
    second = claim(tmp_path, "take", started)
    assert second is not None and second.taken_over
    # A holder on another host: taken over only once not renewed for the timeout.
    marker.write_text(json.dumps({"host": "elsewhere", "pid": 1, "time": time.time()}))
    assert claim(tmp_path, "take", started, stale_after=60) is None
    os.utime(marker, (time.time() - 120, time.time() - 120))
    assert claim(tmp_path, "take", started, stale_after=60) is not None
    # A failure of this run is not retried in it; a later run retries it.
    claim(tmp_path, "bad", started).fail("cannot be read as audio")
    assert claim(tmp_path, "bad", started) is None
    retried = claim(tmp_path, "bad", time.time() + 1)
    assert retried is not None and not retried.taken_over  # a failure ("it already exists") is no leave to replace
    second.release()
    assert not marker.exists()


def test_a_claim_held_for_another_input_of_that_name_is_a_conflict(tmp_path):
    started = time.time()
    held = claim(tmp_path, "take", started, source="/mixes/a/take.wav")
    assert held is not None
    assert claim(tmp_path, "take", started, source="/mixes/a/take.wav") is None  # the same input: done elsewhere
    with pytest.raises(UsageError, match=r"take/ is being written for /mixes/a/take.wav by another process"):
        claim(tmp_path, "take", started, source="/mixes/b/take.wav")
    held.fail("cannot be read as audio")
    assert json.loads(held.marker.read_text())["input"] == "/mixes/a/take.wav"  # kept with the failure
    with pytest.raises(UsageError, match="/mixes/a/take.wav"):
        claim(tmp_path, "take", started, source="/mixes/b/take.wav")


def test_launcher_environments():
    assert launcher_process({}) == launcher_process({"LOCAL_RANK": "3"})  # no world size: one process
    torchrun = launcher_process({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"})
    assert (torchrun.rank, torchrun.world_size, torchrun.local_rank, torchrun.local_world_size) == (5, 8, 1, 4)
    srun = launcher_process({"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1",
                             "SLURM_NTASKS_PER_NODE": "2(x2)"})
    assert (srun.rank, srun.world_size, srun.local_rank, srun.local_world_size) == (3, 4, 1, 2)


def _inputs(folder, lengths):
    rng = np.random.default_rng(0)
    for index, seconds in enumerate(lengths):
        sf.write(folder / f"take{index}.wav", rng.normal(0, 0.1, int(seconds * 16000)).astype(np.float32), 16000)


def _command(checkpoint, out, inputs):
    return [sys.executable, "-c", "import sys; from clipsep.cli import main; sys.exit(main())", "separate",
            "--checkpoint", str(checkpoint), "-q", "violin", "--device", "cpu", "-o", str(out), str(inputs)]


def _written(stdout):
    """The inputs a process separated, from its summary's ``source -> files`` lines."""
    return re.findall(r"^  (\S+) -> ", stdout, flags=re.M)


def _env(**extra):
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.slow
def test_two_ranks_split_a_folder(checkpoint, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    _inputs(inputs, [30, 2, 3, 2, 4, 2, 3, 2])  # a long file first: the other rank takes the rest meanwhile
    ranks = [subprocess.Popen(_command(checkpoint, out, inputs), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=_env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                                                  LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1"))
             for rank in range(2)]
    outputs = [rank.communicate(timeout=600) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], "\n".join(  # each rank's failures, whole
        f"rank {index} stdout:\n{stdout[-1500:]}\nrank {index} stderr:\n{stderr[-3000:]}"
        for index, (stdout, stderr) in enumerate(outputs))
    done = [set(_written(stdout)) for stdout, _ in outputs]
    assert not done[0] & done[1]  # no input done twice
    assert done[0] | done[1] == {str(path) for path in sorted(inputs.iterdir())}  # none missed
    for stdout, _ in outputs:
        assert re.search(r"^\[rank \d of 2\] Separated \d of \d inputs", stdout, flags=re.M)
        assert "Traceback" not in _
    for index in range(8):
        assert (out / f"take{index}" / "violin.wav").is_file() and (out / f"take{index}" / "separation.json").is_file()
    assert not (out / CLAIMS_DIR).exists()  # every claim released, their folder removed


@pytest.mark.slow
def test_a_killed_run_resumes_without_redoing_finished_files(checkpoint, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    _inputs(inputs, [2, 2, 600, 2])
    process = subprocess.Popen(_command(checkpoint, out, inputs), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=_env())
    try:
        deadline = time.monotonic() + 300
        spools = out / "take2"
        while not (spools.is_dir() and any(p.name.endswith(".part") for p in spools.iterdir())):  # on take2
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)  # as a node lost: nothing is cleaned up
        process.wait(timeout=60)
    finally:
        process.kill()
    finished = {path: path.stat().st_mtime_ns for name in ("take0", "take1") for path in (out / name).iterdir()}
    assert len(finished) == 4  # violin.wav and separation.json of each
    assert not (out / "take2" / "violin.wav").exists() and (out / CLAIMS_DIR / "take2.claim").exists()

    rerun = subprocess.run(_command(checkpoint, out, inputs), capture_output=True, text=True, env=_env(), timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "2 input(s) already separated" in rerun.stdout
    assert sorted(_written(rerun.stdout)) == [str(inputs / "take2.wav"), str(inputs / "take3.wav")]
    assert {path: path.stat().st_mtime_ns for path in finished} == finished  # not redone
    for name in ("take2", "take3"):
        assert sorted(p.name for p in (out / name).iterdir()) == ["separation.json", "violin.wav"]  # no .part left
    assert sf.info(out / "take2" / "violin.wav").frames == 600 * 16000
    assert not (out / CLAIMS_DIR).exists()  # every claim released, their folder removed


@pytest.mark.slow
def test_sigterm_removes_temporary_files_and_releases_the_claim(checkpoint, tmp_path):
    # What srun and torchrun send on preemption or scancel.
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    _inputs(inputs, [600])
    process, err = sigterm_when(
        _command(checkpoint, out, inputs),
        lambda _: (out / "take0").is_dir() and any(p.name.endswith(".part") for p in (out / "take0").iterdir()),
        timeout=300, env=_env(RANK="0", WORLD_SIZE="1"))
    assert process.returncode not in (0, None) and "Traceback" not in err and "interrupted" in err
    assert not (out / "take0").exists()  # no stem, no temporary file, nor the folder they were to go in
    assert not (out / CLAIMS_DIR / "take0.claim").exists()


def test_an_interruption_just_after_claiming_releases_the_claim(checkpoint, tmp_path):
    from clipsep.batch import OutputOptions, plan, run_jobs

    inputs = tmp_path / "in"
    inputs.mkdir()
    _inputs(inputs, [16])
    separator = Separator.from_pretrained(checkpoint)
    jobs = plan(sorted(inputs.iterdir()), tmp_path / "out", ["violin"], OutputOptions(), 0)

    claim_file = tmp_path / "out" / CLAIMS_DIR / f"{jobs[0].folder.name}.claim"
    held = []

    def report(kind, index, payload):
        if kind == "start":  # claimed, not yet separating: Ctrl-C here
            held.append(claim_file.exists())
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_jobs(jobs, separator, separator.encode_queries(["violin"]), OutputOptions(), report)
    assert held == [True] and not claim_file.exists()
    assert claim(tmp_path / "out", jobs[0].folder.name, time.time()) is not None  # a rerun takes it at once
