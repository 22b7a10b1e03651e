"""README: weights are never unpickled. ``clipsep convert`` and the vocoder loader meet a
file whose pickle would run code when loaded (it creates a marker file): each refuses
it in one sentence naming the file, and the code never runs."""

import json

import pytest
import torch

from clipcore.checkpoint import CheckpointError
from clipsep.cli import main
from clipsonic.vocoder import load_vocoder
from tests.clipsonic.test_vocoder import SMALL


class _RunsCode:
    """Unpickling this calls ``open(marker, "w")``: what a malicious checkpoint can do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil(path, marker, wrap=None):
    payload = {"conv_pre.weight": torch.zeros(1), "hook": _RunsCode(marker)}
    torch.save({wrap: payload} if wrap else payload, path)
    return path


def test_convert_never_unpickles(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    path = _evil(tmp_path / "best_model.pt", marker, wrap="state_dict")
    assert main(["convert", "official", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "best_model.pt" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, wrap", [("generator_v1", "generator"), ("pytorch_model.bin", None),
                                        ("g_02500000.pt", "generator")])
def test_vocoder_loader_never_unpickles(tmp_path, name, wrap):
    marker = tmp_path / "code-ran"
    folder = tmp_path / "vocoder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(SMALL))
    _evil(folder / name, marker, wrap=wrap)
    with pytest.raises(CheckpointError, match=name):
        load_vocoder(folder)
    assert not marker.exists()
