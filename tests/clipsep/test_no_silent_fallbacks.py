"""Fallbacks that used to hide a problem now say what was missing (CLIPSep side)."""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clipcore.audio import save_audio
from clipcore.errors import ClipAudioError
from clipcore.query import QueryEncoder
from clipcore.training import ExportPretrained
from clipsep.batch import ERROR_LOG
from clipsep.cli import main
from clipsep.model import CLIPSep
from clipsep.separate import Separator


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    Separator(CLIPSep.tiny(query_dim=16), QueryEncoder.tiny(embed_dim=16)).save_pretrained(root / "nit")
    Separator(CLIPSep.tiny(query_dim=16, noise_heads=0), QueryEncoder.tiny(embed_dim=16)).save_pretrained(root / "plain")
    return root


def _noise(samples, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).normal(0, 0.1, (1, samples)).astype("float32"))


def test_noise_stems_of_a_model_without_noise_heads_is_refused(checkpoints, tmp_path, capsys):
    save_audio(tmp_path / "mix.wav", _noise(8000), 16000)
    args = ["separate", "-q", "violin", "--noise-stems", "-o", str(tmp_path / "out"), str(tmp_path / "mix.wav")]
    assert main([*args[:1], "--checkpoint", str(checkpoints / "plain"), *args[1:]]) == 2
    err = capsys.readouterr().err
    assert "--noise-stems" in err and "no noise heads" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert main([*args[:1], "--checkpoint", str(checkpoints / "nit"), *args[1:]]) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "mix").iterdir()) == ["noise-1.wav", "noise-2.wav", "separation.json",
                                                                      "violin.wav"]


def test_noise_stems_through_the_api_name_the_missing_heads(checkpoints):
    wave = _noise(8000)
    plain = Separator.from_pretrained(checkpoints / "plain")
    with pytest.raises(ClipAudioError, match="noise=True: the separation model has no noise heads"):
        plain.separate(wave, 16000, ["violin"], noise=True)
    assert plain.separate(wave, 16000, ["violin"]).noise is None
    noise = Separator.from_pretrained(checkpoints / "nit").separate(wave, 16000, ["violin"], noise=True).noise
    assert noise.shape == (2, 1, 8000) and noise.abs().amax() > 0


def test_a_bug_fails_only_its_file_and_leaves_its_traceback_in_a_log(checkpoints, tmp_path, capsys, monkeypatch):
    stream = Separator.stream

    def buggy(self, blocks, *args, **kwargs):  # a programming error on one file only
        blocks = iter(blocks)
        first = next(blocks)  # the whole of these short files
        if first.shape[-1] == 4321:
            return {}["missing key"]
        return stream(self, itertools.chain([first], blocks), *args, **kwargs)

    monkeypatch.setattr(Separator, "stream", buggy)
    save_audio(tmp_path / "in" / "a.wav", _noise(8000), 16000)
    save_audio(tmp_path / "in" / "b.wav", _noise(4321, seed=1), 16000)
    (tmp_path / "in" / "c.wav").write_bytes(b"RIFF but not really a wave file")
    out = tmp_path / "out"
    status = main(["separate", "--checkpoint", str(checkpoints / "nit"), "-q", "violin", "-o", str(out),
                   str(tmp_path / "in")])
    captured = capsys.readouterr()
    assert status == 1 and "Separated 1 of 3 inputs" in captured.out
    log = out / ERROR_LOG
    lines = {line.split(":", 1)[0].strip(): line for line in captured.err.splitlines() if ".wav:" in line}
    assert "internal error" in lines[str(tmp_path / "in" / "b.wav")] and str(log) in lines[str(tmp_path / "in" / "b.wav")]
    assert "cannot be read as audio" in lines[str(tmp_path / "in" / "c.wav")]
    assert "internal error" not in lines[str(tmp_path / "in" / "c.wav")]  # bad input stays an input failure
    assert "Traceback" not in captured.err
    text = log.read_text()
    assert text.startswith(f"--- {tmp_path / 'in' / 'b.wav'}") and "Traceback" in text and "KeyError: 'missing key'" in text
    assert "c.wav" not in text


class _Module:
    def __init__(self):
        self.exports = []

    def export(self, folder, provenance):
        self.exports.append(folder.name)


def _trainer(tmp_path, metrics):
    return SimpleNamespace(sanity_checking=False, is_global_zero=True, fast_dev_run=False, loggers=[], global_step=0,
                           state=SimpleNamespace(fn="fit"),
                           default_root_dir=str(tmp_path), callback_metrics={k: torch.tensor(v) for k, v in metrics.items()})


def test_best_export_without_the_monitored_metric_warns(tmp_path):
    callback, module = ExportPretrained(str(tmp_path / "pretrained"), best_and_last=True), _Module()
    with pytest.warns(UserWarning, match=r"no 'val/loss' \(it logged val/sdr\), so best/ is not exported"):
        callback.on_validation_end(_trainer(tmp_path, {"val/sdr": 3.0}), module)
    assert module.exports == ["last"]
    callback.on_validation_end(_trainer(tmp_path, {"val/loss": 2.0}), module)
    callback.on_validation_end(_trainer(tmp_path, {"val/loss": 3.0}), module)  # not better: no best/
    assert module.exports == ["last", "last", "best", "last"]


def test_best_export_by_highest_sdri_starts_with_the_first_and_skips_nan_and_lower_values(tmp_path):
    callback, module = ExportPretrained(str(tmp_path / "pretrained"), best_and_last=True, monitor="val/sdri",
                                        mode="max"), _Module()
    for sdri in (float("nan"), -3.0, -0.8, -2.0, 1.5):
        callback.on_validation_end(_trainer(tmp_path, {"val/sdri": sdri, "val/loss": 0.1}), module)
    # the first validation's model is best (best/ always exists), until a finite better one
    assert module.exports == ["last", "best", "last", "best", "last", "best", "last", "last", "best"]
    assert callback.best == -1.5  # stored with the sign that makes lower better


def test_clipsep_keeps_the_checkpoint_of_highest_validation_sdri():
    from clipsep.system import CLIPSepSystem

    (callback,) = CLIPSepSystem(preset="tiny").configure_callbacks()
    assert (callback.monitor, callback.sign) == ("val/sdri", -1.0)
