"""Figures people can read: titled spectrogram panels for the training logger, and the
results page's per-instrument SDRi bar chart and mel-spectrogram grid.

matplotlib is imported inside the functions and drives the Agg canvas directly, without
pyplot: importing this module stays light, and no figure ever needs a display.

Example::

    figure = spectrogram_figure([[("mixture", db_mix), ("estimate", db_est)]],
                                seconds_per_frame=256 / 16000, bin_hz=linear_bins(513, 16000),
                                value_range=(-80.0, 0.0), colorbar_label="dB")
    pixels = figure_pixels(figure)  # [H, W, 3] uint8, about 1200 px wide
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from clipcore.files import atomic_write

if TYPE_CHECKING:
    from clipcore.spectral import MelConfig

__all__ = [
    "linear_bins", "mel_bins", "spectrogram_figure", "mel_figure", "figure_pixels", "save_figure", "sdri_figure",
    "sdri_bars", "mel_grid",
]

WIDTH_INCHES = 12.0
"""Figure width; at :data:`DPI` the images are 1200 pixels wide."""
DPI = 100
PANEL_HEIGHT_INCHES = 3.0
COLOR_MAP = "magma"
OCTAVE_TICKS_HZ = (0, 125, 250, 500, 1000, 2000, 4000, 8000, 16000)
"""Frequency ticks on a non-linear (mel) axis."""


def linear_bins(n_freqs: int, sample_rate: int) -> np.ndarray:
    """``[n_freqs]`` centre frequencies (Hz) of the bins of a one-sided STFT."""
    return np.linspace(0.0, sample_rate / 2, n_freqs)


def mel_bins(n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """``[n_mels]`` centre frequencies (Hz) of Slaney mel bands between ``f_min`` and
    ``f_max`` (the scale of :class:`clipcore.spectral.MelSpectrogram`)."""
    import librosa

    return librosa.mel_frequencies(n_mels + 2, fmin=f_min, fmax=f_max, htk=False)[1:-1]


def _as_array(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float32)


def _hz_label(hz: float) -> str:
    return f"{hz / 1000:g}k" if hz >= 1000 else f"{hz:g}"


def _frequency_ticks(bin_hz: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Tick positions (in bins) and labels (Hz): round linear steps on a linear axis,
    octaves on a mel axis, at least an eighth of the axis apart."""
    from matplotlib.ticker import MaxNLocator

    steps = np.diff(bin_hz)
    if np.allclose(steps, steps[0]):
        round_steps = MaxNLocator(5, steps=[1, 2, 5, 10]).tick_values(bin_hz[0], bin_hz[-1])
        candidates = [hz for hz in round_steps if bin_hz[0] <= hz <= bin_hz[-1]]
    else:
        candidates = [hz for hz in OCTAVE_TICKS_HZ if bin_hz[0] <= hz <= bin_hz[-1]]
    positions, labels = [], []
    for hz in candidates:
        position = float(np.interp(hz, bin_hz, np.arange(len(bin_hz))))
        if not positions or position - positions[-1] >= len(bin_hz) / 8:
            positions.append(position)
            labels.append(_hz_label(round(hz)))
    return np.array(positions), labels


def spectrogram_figure(
    rows: Sequence[Sequence[tuple[str, torch.Tensor | np.ndarray]]],
    seconds_per_frame: float,
    bin_hz: np.ndarray,
    value_range: tuple[float, float],
    colorbar_label: str,
    title: str | None = None,
    frequency_label: str = "frequency (Hz)",
):
    """Titled spectrogram panels in a grid with time and frequency axes and one colour bar.

    Args:
        rows: rows of ``(title, values)`` panels; ``values`` is ``[F, T]`` (row 0 the lowest
            frequency), every panel of the same ``F``.
        seconds_per_frame: hop length over sample rate, for the time axis.
        bin_hz: ``[F]`` centre frequency of each row, for the frequency axis.
        value_range: ``(low, high)``: the ends of the colour map, shared by all panels.
        colorbar_label: what the colours measure, e.g. ``"dB"``.
        title: above the whole figure.
        frequency_label: the frequency axis' label.

    Returns:
        a :class:`matplotlib.figure.Figure` with an Agg canvas, :data:`WIDTH_INCHES` wide.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_rows, n_cols = len(rows), max(len(row) for row in rows)
    figure = Figure(figsize=(WIDTH_INCHES, 0.9 + PANEL_HEIGHT_INCHES * n_rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(n_rows, n_cols, squeeze=False, sharex=True, sharey=True)
    ticks, tick_labels = _frequency_ticks(np.asarray(bin_hz, dtype=np.float64))
    image = None
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            if c >= len(row):
                ax.set_visible(False)
                continue
            name, values = row[c]
            values = _as_array(values)
            image = ax.imshow(values, origin="lower", aspect="auto", interpolation="nearest", cmap=COLOR_MAP,
                              vmin=value_range[0], vmax=value_range[1],
                              extent=(0.0, values.shape[-1] * seconds_per_frame, -0.5, values.shape[0] - 0.5))
            ax.set_title(name)
            ax.set_yticks(ticks, tick_labels)
            if r == n_rows - 1:
                ax.set_xlabel("time (s)")
            if c == 0:
                ax.set_ylabel(frequency_label)
    figure.colorbar(image, ax=axes, label=colorbar_label, shrink=0.9)
    if title:
        figure.suptitle(title)
    return figure


def figure_pixels(figure) -> np.ndarray:
    """Render a figure from this module to ``[H, W, 3]`` uint8 RGB pixels."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def save_figure(figure, path: str | Path) -> Path:
    """Write a figure as a PNG file, atomically; returns ``path``."""
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=DPI))


def sdri_figure(table: Mapping[str, Mapping[str, Mapping[str, float]]],
                title: str = "SDR improvement per instrument"):
    """Grouped bar chart of SDR improvement per instrument with 95% interval error bars.

    Args:
        table: query mode (one bar colour, e.g. ``"image"``, ``"text"``) -> instrument ->
            ``{"mean": dB, "low": dB, "high": dB}`` (the interval's ends). Instruments are
            the union over modes, in order of first appearance; a missing one leaves a gap.
        title: above the chart.

    Returns:
        a :class:`matplotlib.figure.Figure` with an Agg canvas, 1200 x 500 pixels.

    Raises:
        ValueError: no mode has any instrument.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    modes = list(table)
    instruments = list(dict.fromkeys(name for mode in modes for name in table[mode]))
    if not instruments:
        raise ValueError("sdri_bars needs at least one instrument with a score.")
    figure = Figure(figsize=(WIDTH_INCHES, 5.0), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    width = 0.8 / len(modes)
    for m, mode in enumerate(modes):
        names = [name for name in instruments if name in table[mode]]
        x = [instruments.index(name) + (m - (len(modes) - 1) / 2) * width for name in names]
        means = np.array([table[mode][name]["mean"] for name in names])
        errors = np.array([[table[mode][name]["mean"] - table[mode][name]["low"] for name in names],
                           [table[mode][name]["high"] - table[mode][name]["mean"] for name in names]])
        ax.bar(x, means, width, yerr=errors, capsize=3, label=mode)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(instruments)), instruments, rotation=30 if len(instruments) > 8 else 0)
    ax.set_ylabel("SDR improvement (dB)")
    ax.set_title(f"{title} (error bars: 95% interval)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="query")
    return figure


def sdri_bars(table: Mapping[str, Mapping[str, Mapping[str, float]]], path: str | Path,
              title: str = "SDR improvement per instrument") -> Path:
    """Write :func:`sdri_figure` of ``table`` (mode -> instrument -> ``{"mean", "low",
    "high"}`` in dB) as a PNG file; returns ``path``. Raises ValueError for an empty table."""
    return save_figure(sdri_figure(table, title), path)


def mel_figure(
    rows: Sequence[Sequence[tuple[str, torch.Tensor | np.ndarray]]],
    value_range: tuple[float, float],
    config: MelConfig | None = None,
    title: str | None = None,
):
    """Titled log-mel panels in a grid, with time and (mel-scaled) frequency axes.

    Args:
        rows: rows of ``(title, log_mel)`` panels, ``log_mel`` ``[n_mels, T]`` natural-log
            mel magnitudes (row 0 the lowest band).
        value_range: ``(low, high)`` ends of the colour map, shared by all panels.
        config: the mel transform's settings, for the axes (default :class:`MelConfig`).
        title: above the whole figure.

    Returns:
        a :func:`spectrogram_figure`.
    """
    if config is None:
        from clipcore.spectral import MelConfig

        config = MelConfig()
    n_mels = _as_array(rows[0][0][1]).shape[0]
    return spectrogram_figure(rows, config.hop_length / config.sample_rate, mel_bins(n_mels, config.f_min, config.f_max),
                              value_range, "log mel", title=title, frequency_label="frequency (Hz, mel scale)")


def mel_grid(mels_by_mode: Mapping[str, torch.Tensor | np.ndarray], path: str | Path,
             labels: Sequence[str] | None = None, config: MelConfig | None = None,
             value_range: tuple[float, float] | None = None, title: str | None = None) -> Path:
    """A grid of log-mel spectrograms: one row per generation mode, one column per example.

    Args:
        mels_by_mode: mode (e.g. ``"image"``, ``"zs"``, ``"pd"``) -> ``[N, n_mels, T]``
            natural-log mel spectrograms (row 0 the lowest band), every mode the same shape.
        path: the PNG file to write.
        labels: ``N`` column names (e.g. the queried instruments), in the panel titles.
        config: the mel transform's settings, for the axes (default :class:`MelConfig`).
        value_range: ends of the colour map; by default the smallest and largest value.
        title: above the grid.

    Returns:
        ``path``.
    """
    grids = {mode: _as_array(mels) for mode, mels in mels_by_mode.items()}
    shapes = {grid.shape for grid in grids.values()}
    if not grids or len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"mel_grid needs modes of equal [N, n_mels, T] shape, got {sorted(shapes)}.")
    n = next(iter(shapes))[0]
    if labels is not None and len(labels) != n:
        raise ValueError(f"mel_grid got {len(labels)} labels for {n} examples.")
    if value_range is None:
        value_range = (min(float(g.min()) for g in grids.values()), max(float(g.max()) for g in grids.values()))
    rows = [[(f"{mode}: {labels[i]}" if labels is not None else f"{mode} {i}", grid[i]) for i in range(n)]
            for mode, grid in grids.items()]
    return save_figure(mel_figure(rows, value_range, config, title), path)
