"""Files made under interruption: a signal between creating a file and recording it; where files
cannot be written; standard JSON."""

import json
import os
import signal

import pytest
import torch

import clipcore.audio_blocks as audio_blocks
from clipcore.audio_blocks import StemSpool
from clipcore.cli import stop_on_sigterm
from clipcore.errors import UsageError
from clipcore.files import ImageError, atomic_write, check_not_an_input, interrupts_held, load_image, write_json


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


def test_a_file_cannot_be_written_where_a_folder_is_or_below_a_file(tmp_path):
    (tmp_path / "notes").write_text("keep me")
    (tmp_path / "stems").mkdir()
    for target, message in ((tmp_path / "stems", f"{tmp_path / 'stems'}: is a folder; a file cannot be written there."),
                            (tmp_path / "notes" / "x.json", f"{tmp_path / 'notes'}: is a file, not a folder."),
                            (tmp_path / "notes" / "a" / "x.json", f"{tmp_path / 'notes' / 'a'}: lies below the file "
                                                                  f"{tmp_path / 'notes'}, not a folder.")):
        with pytest.raises(UsageError) as raised:
            atomic_write(target, lambda tmp: tmp.write_text("new"))
        assert str(raised.value) == message
    assert (tmp_path / "notes").read_text() == "keep me" and not any((tmp_path / "stems").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "stems"]


def test_json_is_standard_and_an_input_is_never_an_output(tmp_path):
    path = write_json(tmp_path / "r.json", {"mean": 1.5, "low": float("nan"), "seeds": [float("inf"), 2]})
    text = path.read_text()
    assert json.loads(text) == {"mean": 1.5, "low": None, "seeds": [None, 2]}
    assert "NaN" not in text and "Infinity" not in text
    (tmp_path / "pairs.npz").write_bytes(b"x")
    with pytest.raises(UsageError, match=r"pairs.npz: is the input of --pairs; writing it there would destroy it."):
        check_not_an_input(tmp_path / "sub" / ".." / "pairs.npz", {"--other": None, "--pairs": tmp_path / "pairs.npz"})
    check_not_an_input(tmp_path / "gap.json", {"--pairs": tmp_path / "pairs.npz"})


def test_an_image_too_large_to_read_safely_is_one_sentence(tmp_path, monkeypatch):
    from PIL import Image

    Image.new("RGB", (40, 40)).save(tmp_path / "large.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 40 x 40 image stands for a 20000 x 10000 one
    with pytest.raises(ImageError, match=r"large.png: is too large an image to read safely \(more than 200 pixels\)"):
        load_image(tmp_path / "large.png")
