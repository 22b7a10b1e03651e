"""``evaluate_clipsep --protocol music+`` on a small fake data root made from the shipped
lists' first rows: the paths, the official interference choice and the mixture scores."""

import csv
import json
import random

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from clipcore.query import QueryEncoder
from clipsep.model import CLIPSep
from clipsep.separate import Separator
from recipes.evaluate_clipsep import PROTOCOL_DIR, main

RATE = 16000


def _rows(name):
    with (PROTOCOL_DIR / name).open(newline="") as handle:
        return [row for row in csv.reader(handle) if len(row) >= 4]


def _write(root, row, hz, amplitude):
    """The row's audio (a tone covering its middle frame's segment) and its middle frames."""
    audio, frames, count = root / row[0], root / row[1], int(row[2])
    seconds = count // 2 + 3  # the segment is centred at (count // 2 - 0.5) s and lasts 4.1 s
    audio.parent.mkdir(parents=True, exist_ok=True)
    sf.write(audio, amplitude * np.sin(2 * np.pi * hz * np.arange(seconds * RATE) / RATE), RATE, subtype="PCM_16")
    frames.mkdir(parents=True, exist_ok=True)
    for frame in range(count // 2 - 1, count // 2 + 2):  # the three middle frames, 1-based names
        Image.new("RGB", (32, 32), (frame % 255, 80, 160)).save(frames / f"{frame:06d}.jpg")


def test_music_plus_protocol_on_a_fake_data_root(tmp_path):
    targets, interference = _rows("MUSIC/test.csv"), _rows("vggsound/test-good-no-music.csv")
    chosen = [random.Random(i).randint(0, len(interference) - 1) for i in range(2)]  # the official rule
    for row in targets[:2]:
        _write(tmp_path, row, 440.0, 0.5)
    for index in chosen:
        _write(tmp_path, interference[index], 1000.0, 0.25)
    Separator(CLIPSep.tiny(query_dim=32), QueryEncoder.tiny(embed_dim=32)).save_pretrained(tmp_path / "model")
    out = tmp_path / "results.json"
    assert main(["--checkpoint", str(tmp_path / "model"), "--protocol", "music+", "--data-root", str(tmp_path),
                 "--limit", "2", "--device", "cpu", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["skipped"] == [] and len(results["items"]) == 2
    for item, row, index in zip(results["items"], targets, chosen):
        assert item["target"] == row[0].rsplit("/", 1)[1].removesuffix(".wav") and item["label"] == row[3]
        assert item["interference"] == interference[index][0].rsplit("/", 1)[1].removesuffix(".wav")
        assert item["interference_label"] == interference[index][3]
        for mode in ("image", "text", "ensemble"):
            scores = item["scores"][mode]
            # Target tone at twice the interference's amplitude, orthogonal to it: the
            # mixture's SDR and SI-SDR are 20 log10(2) = 6.02 dB.
            assert scores["sdr_mix"] == pytest.approx(6.02, abs=0.05)
            assert scores["si_sdr"] - scores["si_sdri"] == pytest.approx(6.02, abs=0.05)
            assert scores["sdri"] == pytest.approx(scores["sdr"] - scores["sdr_mix"], abs=1e-9)
    assert results["settings"]["protocol"] == "music+"
    assert results["settings"]["targets"].endswith("MUSIC/test.csv")
