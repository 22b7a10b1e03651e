"""Streaming separation: block-wise input equals the whole-file path; interruptions leave
no stem behind."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from clipcore.audio import AudioError
from clipcore.audio_blocks import AudioReader
from clipcore.query import QueryEncoder
from clipsep.model import CLIPSep
from clipsep.separate import Separator
from clipsep.streaming import OverlapAdd, segment_starts

# Streamed and whole-file output run the same segments, batches, windows and resampler
# (soxr's stream gives the same samples however the input is cut), so they should agree
# to float32 rounding: measured here, identical (max difference 0.0). The tolerance,
# 1e-5 of full scale, leaves room for rounding that depends on the CPU and thread count,
# and is far below the stems' own size (about 0.1 on this noise), which any misplaced
# segment, sample or resampler state would disturb.
TOLERANCE = 1e-5


def _model():
    """A tiny CLIPSep with two noise heads, re-initialised so that its masks vary."""
    model = CLIPSep.tiny(query_dim=16, seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / module.weight[0].numel()) ** 0.5)
    return model


@pytest.fixture(scope="module")
def separator():
    return Separator(_model(), QueryEncoder.tiny(embed_dim=16), segment=1.0, overlap=0.25, batch_size=2)


def _noise(channels, samples, seed=0):
    return np.random.default_rng(seed).normal(0, 0.2, (samples, channels)).astype(np.float32)


def test_overlap_add_in_blocks_equals_one_block():
    # The network part replaced by a position-dependent map, so that any segment placed,
    # batched or windowed differently than in one pass changes the output.
    def segments(batch):  # [B, C, L] -> [B, 2, C, L]
        ramp = torch.linspace(0.5, 1.5, batch.shape[-1])
        return torch.stack([batch * ramp, batch.flip(-1)], dim=1)

    signal_ = torch.randn(2, 10007, generator=torch.Generator().manual_seed(0))
    for length in (1, 999, 1000, 1001, 3300, 10007):
        wave = signal_[:, :length]

        def run(cuts):
            engine, out = OverlapAdd(segments, 2, 2, 1000, 250, 3), []
            for block in torch.tensor_split(wave, cuts, dim=-1):
                out.extend(engine.push(block))
            out.extend(engine.finish())
            return torch.cat(out, dim=-1)

        whole = run([])
        assert whole.shape == (2, 2, length)
        starts = segment_starts(length, 1000, 250)
        assert len(starts) == (1 if length <= 1000 else 1 + -(-(length - 1000) // 750))
        for cuts in ([1], [500, 501, 2000], list(range(7, length, 333))):
            cuts = [c for c in cuts if c < length]
            torch.testing.assert_close(run(cuts), whole, rtol=0, atol=1e-6)


def test_stream_equals_separate_at_any_block_size(separator):
    wave = torch.from_numpy(_noise(2, 3 * 44100 + 17).T.copy())
    whole = separator.separate(wave, 44100, ["violin", "dog"], noise=True)
    expected = torch.cat([whole.stems, whole.noise])
    for block in (1000, 44100, 100003):
        mixes, outs = zip(*separator.stream(torch.split(wave, block, dim=-1), 44100, ["violin", "dog"], noise=True))
        torch.testing.assert_close(torch.cat(mixes, -1), wave, rtol=0, atol=0)
        torch.testing.assert_close(torch.cat(outs, -1), expected, rtol=0, atol=TOLERANCE)
    assert (expected[0] - expected[1]).abs().max() > 100 * TOLERANCE  # the queries differ: the test can fail


def test_separate_file_writes_what_separate_gives(separator, tmp_path):
    source = tmp_path / "take.wav"
    sf.write(source, _noise(2, 5 * 48000 + 123), 48000, subtype="FLOAT")
    seconds = []
    written = separator.separate_file(source, ["violin", "dog"], tmp_path / "out", residual=True, noise=True,
                                      bit_depth="32f", clip="none", block_seconds=0.37, progress=seconds.append)
    assert list(written) == ["violin", "dog", "residual", "noise-1", "noise-2"]
    assert sum(seconds) == pytest.approx((5 * 48000 + 123) / 48000)
    wave = torch.from_numpy(sf.read(source, dtype="float32", always_2d=True)[0].T.copy())
    whole = separator.separate(wave, 48000, ["violin", "dog"], residual=True, noise=True)
    for path, expected in zip(written.values(), [*whole.stems, whole.residual, *whole.noise]):
        data, rate = sf.read(path, dtype="float32", always_2d=True)
        assert rate == 48000 and sf.info(path).subtype == "FLOAT"
        torch.testing.assert_close(torch.from_numpy(data.T.copy()), expected, rtol=0, atol=TOLERANCE)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in written.values())


def test_rescale_uses_the_peak_of_the_whole_stem(separator, tmp_path):
    # A loud end: the gain that keeps it under full scale applies to the start too, as
    # with the whole file in memory.
    data = _noise(1, 4 * 16000)
    data[-16000:] *= 20
    source = tmp_path / "loud.wav"
    sf.write(source, data, 16000, subtype="FLOAT")
    written = separator.separate_file(source, ["violin"], tmp_path / "out", residual=True, bit_depth="32f",
                                      clip="rescale", block_seconds=0.5)
    wave = torch.from_numpy(data.T.copy())
    whole = separator.separate(wave, 16000, ["violin"], residual=True)
    assert max(whole.stems.abs().max(), whole.residual.abs().max()) > 1  # a file needs the gain
    for path, expected in zip(written.values(), [whole.stems[0], whole.residual]):
        stem = torch.from_numpy(sf.read(path, dtype="float32", always_2d=True)[0].T.copy())
        torch.testing.assert_close(stem, expected / max(1.01 * expected.abs().max().item(), 1.0), rtol=0,
                                   atol=TOLERANCE)


def test_a_failing_read_mid_file_leaves_no_stem(separator, tmp_path, monkeypatch):
    source = tmp_path / "take.wav"
    sf.write(source, _noise(2, 6 * 16000), 16000)
    blocks = AudioReader.blocks
    read = []

    def failing(self, frames, mono=False):
        for block in blocks(self, frames, mono):
            read.append(block.shape[-1])
            if len(read) == 4:  # after stems have been spooled for 3 blocks
                raise AudioError(f"{self.path}: cannot be read as audio (disk went away).")
            yield block

    monkeypatch.setattr(AudioReader, "blocks", failing)
    out = tmp_path / "out"
    with pytest.raises(AudioError, match="disk went away"):
        separator.separate_file(source, ["violin", "dog"], out, residual=True, block_seconds=1.0)
    assert len(read) == 4
    assert not out.exists()  # no stem, no temporary file, nor the folder the call made for them


SCRIPT = """
import signal, sys, torch
signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started from a shell that ignores SIGINT
from clipcore.query import QueryEncoder
from clipsep.model import CLIPSep
from clipsep.separate import Separator
separator = Separator(CLIPSep.tiny(query_dim=16), QueryEncoder.tiny(embed_dim=16), segment=1.0)
print("ready", flush=True)
separator.separate_file(sys.argv[1], ["violin", "dog"], sys.argv[2], block_seconds=0.25)
print("done", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_a_killed_process_leaves_no_stem(tmp_path, how):
    source = tmp_path / "long.wav"
    sf.write(source, _noise(1, 120 * 16000), 16000)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, str(source), str(out)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out.is_dir() and any(p.stat().st_size > 100_000 for p in out.iterdir())):  # spooling
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.05)
        process.send_signal(how)
        process.wait(timeout=60)
    finally:
        process.kill()
    assert "done" not in process.stdout.read()
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert not [name for name in left if not name.startswith(".")]  # no stem under its name
    if how == signal.SIGINT:  # an exception: the temporary files are removed too, and the folder made for them
        assert not out.exists()
    else:  # SIGKILL: hidden temporary files stay (a rerun under claims removes them)
        assert left and all(name.endswith(".part") for name in left)
