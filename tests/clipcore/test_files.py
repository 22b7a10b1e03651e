"""Files made under interruption: a signal between creating a file and recording it."""

import os
import signal

import pytest
import torch

import clipcore.audio_blocks as audio_blocks
from clipcore.audio_blocks import StemSpool
from clipcore.cli import stop_on_sigterm
from clipcore.files import atomic_write, interrupts_held


@pytest.fixture
def sigterm_interrupts():
    """SIGTERM raises KeyboardInterrupt, through the CLIs' own handler."""
    previous = stop_on_sigterm()
    yield
    signal.signal(signal.SIGTERM, previous)


def test_a_signal_in_a_held_block_arrives_as_the_block_ends(sigterm_interrupts):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("after the signal")
    assert done == ["after the signal"]
    with interrupts_held():  # nothing is left pending
        pass
    with pytest.raises(KeyboardInterrupt):  # and the handler is back
        os.kill(os.getpid(), signal.SIGTERM)


def test_an_interrupted_atomic_write_leaves_nothing(tmp_path, sigterm_interrupts):
    def write(tmp):
        tmp.write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "out.json", write)
    assert list(tmp_path.iterdir()) == []


def test_the_replaced_callback_records_the_file_before_an_interruption_lands(tmp_path, sigterm_interrupts):
    recorded = []

    def replaced():
        os.kill(os.getpid(), signal.SIGTERM)
        recorded.append("written")

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "out.txt", lambda tmp: tmp.write_text("whole"), replaced=replaced)
    assert recorded == ["written"] and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_spool_interrupted_while_it_opens_removes_its_temporary_file(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(audio_blocks.sf, "SoundFile", interrupted)
    with pytest.raises(KeyboardInterrupt):
        StemSpool(tmp_path / "violin.wav", 16000, 1)
    assert list(tmp_path.iterdir()) == []


def test_a_committed_spool_is_marked_and_its_temporary_file_removed(tmp_path):
    spool = StemSpool(tmp_path / "violin.wav", 16000, 1)
    spool.write(torch.full((1, 160), 0.25))
    spool.commit()
    assert spool.committed and [p.name for p in tmp_path.iterdir()] == ["violin.wav"]
