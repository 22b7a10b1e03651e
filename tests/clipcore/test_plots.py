"""Figures people can read: titled panels with axes and a colour map, about 1200 px wide."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipcore.plots import figure_pixels, linear_bins, mel_figure, mel_grid, sdri_bars, sdri_figure
from clipcore.spectral import MelConfig, MelSpectrogram, STFTConfig
from clipsep.system import validation_figure

ROOT = Path(__file__).resolve().parents[2]


def readable_image_problems(pixels: np.ndarray) -> list[str]:
    """What keeps an ``[H, W, 3]`` uint8 logged image from being readable (empty if nothing)."""
    problems = []
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        return [f"not [H, W, 3] uint8 but {pixels.shape} {pixels.dtype}"]
    height, width, _ = pixels.shape
    if not (1000 <= width <= 1600 and 250 <= height <= 1200):
        problems.append(f"{width} x {height} pixels, not about 1200 wide")
    channels = pixels.astype(np.int16)
    coloured = (channels.max(axis=2) - channels.min(axis=2) > 40).mean()
    if coloured < 0.01:
        problems.append(f"only {coloured:.1%} of the pixels are coloured: no colour map")
    if channels.std() < 20:
        problems.append("nearly flat")
    return problems


def test_the_old_grey_strip_is_not_readable():
    strip = np.random.default_rng(0).integers(0, 256, (1539, 64), dtype=np.uint8)
    problems = readable_image_problems(np.repeat(strip[..., None], 3, axis=2))
    assert any("wide" in p for p in problems) and any("colour map" in p for p in problems)


def tones(frequencies_hz: list[float], seconds: float = 1.0, sample_rate: int = 16000) -> torch.Tensor:
    t = torch.arange(round(seconds * sample_rate)) / sample_rate
    return sum(torch.sin(2 * math.pi * f * t) for f in frequencies_hz) * 0.3


def test_clipsep_validation_figure_has_titled_panels_axes_and_a_colour_map():
    config = STFTConfig()
    waves = {"mixture": tones([440, 3000]), "estimate": tones([440]) * 0.5, "target": tones([440])}
    figure = validation_figure(waves, config, 16000, "validation example 0, query: violin")
    panels = [ax for ax in figure.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["mixture", "estimate", "target"]
    assert figure.get_suptitle() == "validation example 0, query: violin"
    assert all(ax.get_xlabel() == "time (s)" for ax in panels)
    assert panels[0].get_ylabel() == "frequency (Hz)"
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ["0", "2k", "4k", "6k", "8k"]
    assert panels[0].get_xlim() == pytest.approx((0, 63 * 256 / 16000))  # 63 frames of a 1 s clip
    (colour_bar,) = [ax for ax in figure.axes if ax.get_ylabel().startswith("dB")]
    # Low frequencies at the bottom: the 440 Hz tone is the brightest row of the target.
    target = np.asarray(panels[2].images[0].get_array())
    assert abs(target.max(axis=1).argmax() - 440 / 8000 * 512) <= 1
    # One colour scale: the quieter estimate is darker than the target.
    assert panels[1].images[0].get_clim() == panels[2].images[0].get_clim() == (-80, 0)
    assert max(np.asarray(ax.images[0].get_array()).max() for ax in panels) == pytest.approx(0, abs=1e-4)
    assert np.asarray(panels[1].images[0].get_array()).max() == pytest.approx(target.max() - 20 * math.log10(2), abs=0.1)
    assert not readable_image_problems(figure_pixels(figure))


def test_mel_figure_has_a_mel_scaled_frequency_axis():
    log_mel = MelSpectrogram(MelConfig())(tones([500, 2000]))
    figure = mel_figure([[("real", log_mel), ("generated (image query)", log_mel - 1)]], (math.log(1e-5), 4.0),
                        MelConfig(), "validation example 1 (cello)")
    panels = [ax for ax in figure.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["real", "generated (image query)"]
    assert panels[0].get_ylabel() == "frequency (Hz, mel scale)"
    labels = [t.get_text() for t in panels[0].get_yticklabels()]
    positions = panels[0].get_yticks()
    assert {"500", "1k", "2k", "4k"} <= set(labels)
    # Octaves lie further apart in bins at low frequencies than a linear axis would put them.
    assert positions[labels.index("1k")] - positions[labels.index("500")] > 64 * 500 / 8000
    brightest = np.asarray(panels[0].images[0].get_array()).max(axis=1).argmax()
    assert abs(brightest - positions[labels.index("2k")]) <= 2 or abs(brightest - positions[labels.index("500")]) <= 2
    assert not readable_image_problems(figure_pixels(figure))


def test_linear_bins_span_zero_to_nyquist():
    assert linear_bins(513, 16000)[[0, 256, -1]] == pytest.approx([0, 4000, 8000])


TABLE = {
    "image": {"violin": {"mean": 6.0, "low": 5.0, "high": 7.5}, "flute": {"mean": 2.0, "low": -0.5, "high": 3.0}},
    "text": {"violin": {"mean": 4.0, "low": 3.0, "high": 5.0}},
}


def test_sdri_figure_draws_means_and_95_percent_intervals():
    figure = sdri_figure(TABLE)
    (ax,) = figure.axes
    heights = sorted(round(patch.get_height(), 3) for patch in ax.patches)
    assert heights == [2.0, 4.0, 6.0]
    ends = sorted(tuple(np.round(sorted(segment[:, 1]), 3)) for line in ax.collections for segment in line.get_segments())
    assert ends == [(-0.5, 3.0), (3.0, 5.0), (5.0, 7.5)]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["violin", "flute"]
    assert ax.get_ylabel() == "SDR improvement (dB)" and "95%" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["image", "text"]


def test_sdri_bars_writes_a_png(tmp_path):
    path = sdri_bars(TABLE, tmp_path / "sdri.png")
    with Image.open(path) as image:
        assert image.size == (1200, 500)
    with pytest.raises(ValueError, match="at least one instrument"):
        sdri_bars({"text": {}}, tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def test_mel_grid_writes_one_row_per_mode(tmp_path):
    mels = torch.randn(3, 64, 98)
    one = np.asarray(Image.open(mel_grid({"image": mels}, tmp_path / "one.png", labels=["a", "b", "c"])))
    two = np.asarray(Image.open(mel_grid({"image": mels, "pd": mels}, tmp_path / "two.png")))
    assert one.shape[1] == two.shape[1] == 1200 and two.shape[0] > one.shape[0] + 200
    assert not readable_image_problems(two[..., :3])
    with pytest.raises(ValueError, match="equal"):
        mel_grid({"image": mels, "pd": mels[:2]}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="2 labels for 3"):
        mel_grid({"image": mels}, tmp_path / "bad.png", labels=["a", "b"])


def test_models_and_the_plots_module_import_neither_matplotlib_nor_lightning():
    # (The training systems do import matplotlib: torchmetrics imports it when installed.)
    code = ("import sys, clipsep.model, clipsonic.model, clipcore.plots; "
            "heavy = [m for m in ('lightning', 'matplotlib') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
