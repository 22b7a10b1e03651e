"""Memory of the separation page (``clipsep audition``) on long stereo files, in a real browser.

Prints one JSON line: ``peak_mb_page_1min_stereo48k`` / ``peak_mb_page_10min_stereo48k``,
the peak resident memory (``VmHWM``) of a fresh ``clipsep audition`` server (paper-size
CLIPSep, random weights) after Chromium uploaded a 1-minute / 10-minute stereo 48 kHz
24-bit file, separated it with two text queries and the residual, showed the stems with
their spectrograms and made the zip; ``peak_mb_page_growth_stereo48k`` is their difference,
and ``seconds_page_*`` the wall time from the click to the last stem on the page.

Target: the streaming bound of ``clipsep separate`` (``benchmarks/separate_speed.py``):
``peak_mb_page_growth_stereo48k <= 150``.

Usage: ``python benchmarks/audition_memory.py [--long-seconds 600]`` (needs Chromium and
``clipaudio[app]``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from separate_speed import paper_separator, peak_mib, stereo_file

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def _serve(checkpoint: Path, folder: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "clipsep.cli", "audition", "--checkpoint", str(checkpoint),
                                "--device", "cpu", "--port", str(port), "--work-dir", str(folder / "work")],
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(360):
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return process, url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("the page did not start")


def page_peak(seconds: float, checkpoint: Path, folder: Path, browser) -> tuple[float, float]:
    """Peak RSS (MB) of a fresh page server that separated ``seconds`` of stereo 48 kHz,
    and the seconds from the click to the stems on the page."""
    source = folder / f"long-mix-{seconds:g}s.wav"
    stereo_file(source, seconds)
    process, url = _serve(checkpoint, folder)
    try:
        page = browser.new_page()
        page.goto(url, wait_until="load")
        page.locator("#files input[type=file]").set_input_files([str(source)])
        page.wait_for_function("document.querySelectorAll('#files a[download]').length == 1", timeout=600_000)
        page.locator("#texts textarea").fill("playing violin\nplaying cello")
        start = time.perf_counter()
        page.locator("#separate").click()
        page.wait_for_function("document.querySelectorAll('audio').length == 3", timeout=3_600_000)
        wall = time.perf_counter() - start
        durations = page.evaluate("""() => Promise.all([...document.querySelectorAll('audio')].map(a => new Promise(
            done => { const b = new Audio(); b.onloadedmetadata = () => done(b.duration); b.src = a.src; })))""")
        assert all(abs(d - seconds) < 1e-2 for d in durations), durations
        page.close()
        peak = peak_mib(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        source.unlink()
    return round(peak, 1), round(wall, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long-seconds", type=float, default=600.0, help="the long input (default: 10 minutes)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        folder = Path(tmp)
        paper_separator().save_pretrained(folder / "ckpt")
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS, headless=True)
        short, short_wall = page_peak(60.0, folder / "ckpt", folder, browser)
        long, long_wall = page_peak(args.long_seconds, folder / "ckpt", folder, browser)
        browser.close()
    print(json.dumps({
        "peak_mb_page_1min_stereo48k": short, f"peak_mb_page_{args.long_seconds / 60:g}min_stereo48k": long,
        "peak_mb_page_growth_stereo48k": round(long - short, 1), "seconds_page_1min": short_wall,
        f"seconds_page_{args.long_seconds / 60:g}min": long_wall, "queries": 2, "residual": True,
        "model": "CLIPSep.paper (30.3 M)", "device": "cpu",
    }))


if __name__ == "__main__":
    main()
