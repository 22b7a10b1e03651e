"""What the audition pages of ``clipsep audition`` and ``clipsonic audition`` share: the
server options, Gradio (an optional extra), a new folder for each run, a spectrogram of an
audio file of any length, and the archive of a run's files.

The pages are Gradio apps bound to 127.0.0.1 unless ``--host`` says otherwise. Gradio is
imported only when a page starts (``pip install 'clipaudio[app]'``); Gradio's usage
statistics are switched off before it is imported, as nothing here may call out.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from clipcore.audio_blocks import AudioReader
from clipcore.cli import stop_on_sigterm
from clipcore.errors import UsageError
from clipcore.files import atomic_write, check_output_folder
from clipcore.plots import linear_bins, save_figure, spectrogram_figure

__all__ = ["add_server_arguments", "check_server_arguments", "import_gradio", "serve", "new_run_folder",
           "overview_spectrogram", "spectrogram_png", "zip_folder"]

DEFAULT_PORT = 7860
N_FFT = 1024
COLUMNS = 600
"""Time columns of a spectrogram image, whatever the file's length."""
FLOOR_DB = -80.0


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """``--host``, ``--port`` and ``--work-dir`` of an audition page."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default: 127.0.0.1, this machine only; 0.0.0.0 serves the network)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    parser.add_argument("--work-dir", type=Path, default=None, metavar="DIR",
                        help="where the page writes what it makes (default: a temporary folder, removed at exit)")


def check_server_arguments(args: argparse.Namespace) -> None:
    """Refuse, before any model loads, server options that cannot serve: a port out of
    range or taken, an empty host or one this machine does not have, a ``--work-dir`` where
    a file is.

    Raises:
        UsageError: naming the option and its value.
    """
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, got {args.port}.")
    if not args.host.strip():
        raise UsageError("--host: the address is empty.")
    if args.work_dir is not None:
        check_output_folder(args.work_dir, "--work-dir")
    with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as probe:
        try:  # a port taken or a host this machine lacks, said before a model loads
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
            probe.bind((args.host, args.port))
        except OSError as error:
            raise UsageError(f"--host {args.host} --port {args.port}: cannot serve there "
                             f"({error.strerror or error}).") from None


def import_gradio():
    """The ``gradio`` module, or a one-sentence error saying how to install it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise UsageError("the audition page needs Gradio: pip install 'clipaudio[app]'.") from None
    return gradio


def serve(build_page: Callable[[Path], object], args: argparse.Namespace, name: str) -> None:
    """Build a Gradio page (Blocks) on its work folder and serve it on
    ``args.host:args.port`` until Ctrl-C or SIGTERM.

    Args:
        build_page: the work folder -> the page (what the page makes goes there).
        args: the parsed server options (:func:`add_server_arguments`).
        name: the command's name, for the temporary work folder (removed at exit) used
            when ``--work-dir`` is not given.

    Raises:
        UsageError: the options are refused (:func:`check_server_arguments`), or the page
            cannot be served there (a port taken, a host this machine does not have).
    """
    check_server_arguments(args)
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as temporary:
        work_dir = (args.work_dir or Path(temporary)).resolve()
        page = build_page(work_dir)
        page.queue(default_concurrency_limit=1)  # one separation or generation at a time: they use every core
        stop_on_sigterm()  # a clean stop: the temporary folder is removed
        print(f"Serving on http://{args.host}:{args.port} (Ctrl-C stops it).", flush=True)
        try:
            page.launch(server_name=args.host, server_port=args.port, allowed_paths=[str(work_dir)],
                        show_error=True, quiet=True, inbrowser=False)
        except OSError as error:
            reason = str(error).split(". ")[0].rstrip(".")  # its first sentence: Gradio's advice names its settings
            raise UsageError(f"--host {args.host} --port {args.port}: cannot serve there ({reason}).") from None


def overview_spectrogram(path: str | os.PathLike, columns: int = COLUMNS) -> tuple[np.ndarray, float, int]:
    """The spectrogram of an audio file of any length, read block by block: each of at most
    ``columns`` time columns is the mean power of the Hann-windowed 1024-point frames (hop
    512) of its stretch of the channel average.

    Returns:
        ``(db, seconds_per_column, sample_rate)``: ``db`` is ``[513, T]`` in dB relative to
        its loudest cell, floored at -80.

    Raises:
        AudioError: the file cannot be read.
    """
    hop = N_FFT // 2
    window = np.hanning(N_FFT).astype(np.float32)
    power = []
    with AudioReader(path) as reader:
        per_column = max(1, math.ceil(reader.frames / hop / columns))
        carry = np.zeros(N_FFT - hop, np.float32)  # the first frame is centred on sample 0 like the rest
        for block in reader.blocks(per_column * hop, mono=True):
            samples = np.concatenate([carry, block[0].numpy()])
            if len(samples) < N_FFT:
                samples = np.pad(samples, (0, N_FFT - len(samples)))
            count = (len(samples) - N_FFT) // hop + 1
            frames = np.lib.stride_tricks.sliding_window_view(samples, N_FFT)[::hop][:count] * window
            power.append((np.abs(np.fft.rfft(frames, axis=-1)) ** 2).mean(0))
            carry = samples[count * hop:]
        rate = reader.sample_rate
    values = np.stack(power, axis=1)
    db = 10 * np.log10(np.maximum(values, 1e-12))
    return np.maximum(db - db.max(), FLOOR_DB), per_column * hop / rate, rate


def new_run_folder(work_dir: str | os.PathLike) -> Path:
    """A new, empty ``work_dir/run-<n>`` (``n`` the lowest free number), made atomically: a
    page restarted on the same ``--work-dir``, or two pages on one, never share a run folder."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    number = 1
    while True:
        folder = work_dir / f"run-{number}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            number += 1


def spectrogram_png(audio: str | os.PathLike, png: str | os.PathLike, title: str) -> Path:
    """Write the titled :func:`overview_spectrogram` of ``audio`` as a PNG file; returns ``png``."""
    db, seconds_per_column, rate = overview_spectrogram(audio)
    figure = spectrogram_figure([[(title, db)]], seconds_per_column, linear_bins(db.shape[0], rate),
                                (FLOOR_DB, 0.0), "dB")
    figure.set_size_inches(12.0, 3.2)
    return save_figure(figure, png)


def zip_folder(folder: str | os.PathLike, archive: str | os.PathLike) -> Path:
    """Write every file under ``folder`` into the zip ``archive`` (paths relative to
    ``folder``, audio stored as it is), atomically; returns ``archive``."""
    folder = Path(folder)
    files = sorted(path for path in folder.rglob("*") if path.is_file())

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as handle:
            for path in files:
                handle.write(path, path.relative_to(folder).as_posix())

    return atomic_write(archive, write)
