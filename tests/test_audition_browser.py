"""The audition pages in a real browser: Debian's Chromium driven by Playwright.

``clipsep audition`` and ``clipsonic audition`` are started as a user starts them, on tiny
checkpoints; the browser uploads a toy mixture, types queries, waits for the stems and
reads each audio element's duration (text through the diffusion prior, the default of a
page started with ``--prior``), and separates again with text as CLIP gives it; generates a
clip; and checks that a bad input shows its one-line message while the page goes on serving. Screenshots go to the test's folder
(and to ``$CLIPAUDIO_SCREENSHOTS`` when set). Skipped where Chromium is missing, except
under ``.ci/run`` (``CLIPAUDIO_REQUIRE_BROWSER=1``), where that fails.
"""

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from clipcore.audio import save_audio
from clipcore.prior import DiffusionPrior
from clipcore.query import QueryEncoder
from clipcore.synthetic import synthesize
from clipsep.model import CLIPSep
from clipsep.separate import Separator
from clipsonic.model import CLIPSonic

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The flags a closed network needs (no background connections, no sandbox as root).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
MIX_SECONDS, MIX_RATE = 2.5, 22050
# The durations of the audio elements: each a fresh <audio> on the element's source, read at loadedmetadata.
DURATIONS_JS = """sources => Promise.all(sources.map(src => new Promise(done => {
    const audio = new Audio(); audio.preload = 'metadata';
    audio.onloadedmetadata = () => done(audio.duration); audio.onerror = () => done(-1); audio.src = src; })))"""


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CLIPAUDIO_REQUIRE_BROWSER"):
            pytest.fail("Chromium is not installed (.ci/run installs Debian's chromium package).")
        pytest.skip("Chromium is not installed (apt-get install chromium).")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield chromium
        chromium.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def _serving(command: list[str], folder: Path):
    """Run an audition command until the test is done; yields its address."""
    port = _free_port()
    log = open(folder / "server.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", *command, "--port", str(port), "--work-dir", str(folder / "work")],
                               cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, f"the page's server ended: {(folder / 'server.log').read_text()[-2000:]}"
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url, timeout=5).close()
                break
            assert time.monotonic() < deadline, "the page's server did not answer within 180 s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def _screenshot(page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("CLIPAUDIO_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["CLIPAUDIO_SCREENSHOTS"]) / path.name)


def _audio_sources(page) -> list[tuple[str, str]]:
    """``(label, src)`` of every audio player on the page."""
    return page.evaluate("[...document.querySelectorAll('audio')].map(a => [a.dataset.testid, a.src])")


def test_separation_page_in_a_browser(browser, tmp_path):
    torch.manual_seed(0)
    Separator(CLIPSep.tiny(query_dim=16), QueryEncoder.tiny(embed_dim=16)).save_pretrained(tmp_path / "clipsep")
    DiffusionPrior.tiny(embed_dim=16, seed=0).save_pretrained(tmp_path / "prior")
    mixture = synthesize("cello", MIX_SECONDS, MIX_RATE, seed=1) + synthesize("drum", MIX_SECONDS, MIX_RATE, seed=2)
    save_audio(tmp_path / "toy-mix.wav", torch.from_numpy(np.stack([mixture, 0.5 * mixture])), MIX_RATE)
    (tmp_path / "broken.wav").write_bytes(b"RIFF, but not a wave file")
    command = ["clipsep.cli", "audition", "--checkpoint", str(tmp_path / "clipsep"), "--prior", str(tmp_path / "prior"),
               "--device", "cpu"]
    with _serving(command, tmp_path) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url, wait_until="load")
        page.locator("#files input[type=file]").set_input_files([str(tmp_path / "toy-mix.wav"),
                                                                 str(tmp_path / "broken.wav")])
        page.wait_for_function("document.querySelectorAll('#files a[download]').length == 2")

        # No query: the one-line message, in the page.
        page.locator("#separate").click()
        page.wait_for_function("document.querySelector('#status textarea').value.startsWith('error')")
        assert page.locator("#status textarea").input_value() == "error: give at least one text query or image query."

        # The page goes on serving: the same files, now with two queries.
        page.locator("#texts textarea").fill("playing violin\ndrums")
        page.locator("#separate").click()
        page.wait_for_function("document.querySelector('#status textarea').value.startsWith('Separated')",
                               timeout=180_000)
        status = page.locator("#status textarea").input_value().splitlines()
        assert status[0] == "Separated 1 of 2 inputs."
        assert len(status) == 2 and status[1].startswith("broken.wav: cannot be read as audio")
        page.wait_for_function("document.querySelectorAll('audio').length == 3")
        players = _audio_sources(page)
        labels = [label.removeprefix("audio-player-") for label, _ in players]
        assert labels == ["toy-mix.wav: playing-violin", "toy-mix.wav: drums", "toy-mix.wav: residual"]
        durations = page.evaluate(DURATIONS_JS, [src for _, src in players])
        assert durations == pytest.approx([MIX_SECONDS] * 3, abs=1e-3)
        assert page.locator("img").count() >= 3  # a spectrogram beside each stem

        # "download all": the stems and the provenance file, as `clipsep separate` writes them.
        link = page.locator("#download a[download]").first.get_attribute("href")
        archive = zipfile.ZipFile(io.BytesIO(urllib.request.urlopen(link if "://" in link else url + link).read()))
        assert sorted(archive.namelist()) == ["toy-mix/drums.wav", "toy-mix/playing-violin.wav",
                                              "toy-mix/residual.wav", "toy-mix/separation.json"]
        stem = sf.read(io.BytesIO(archive.read("toy-mix/drums.wav")))[0]
        assert stem.shape == (round(MIX_SECONDS * MIX_RATE), 2)
        # Started with --prior, the page sends text through the prior unless told otherwise.
        prior = json.loads(archive.read("toy-mix/separation.json"))["settings"]["prior"]
        assert (prior or {}).get("path") == str((tmp_path / "prior").resolve())
        _screenshot(page, tmp_path / "audition_separation.png")

        # Text as CLIP gives it: the page's choice reaches the separation and its record.
        page.locator("#text-mode label", has_text="as CLIP gives them").click()
        page.locator("#separate").click()
        page.wait_for_function("old => document.querySelector('#status textarea').value.startsWith('Separated')"
                               " && document.querySelector('#download a[download]')?.getAttribute('href') != old",
                               arg=link, timeout=180_000)
        link = page.locator("#download a[download]").first.get_attribute("href")
        archive = zipfile.ZipFile(io.BytesIO(urllib.request.urlopen(link if "://" in link else url + link).read()))
        assert json.loads(archive.read("toy-mix/separation.json"))["settings"]["prior"] is None
        zero_shot = sf.read(io.BytesIO(archive.read("toy-mix/drums.wav")))[0]
        assert zero_shot.shape == stem.shape and not np.allclose(zero_shot, stem)
        page.close()


def test_generation_page_in_a_browser(browser, tmp_path):
    checkpoint = tmp_path / "clipsonic"
    CLIPSonic.tiny(seed=0).save_pretrained(checkpoint)
    QueryEncoder.tiny(seed=0).save_pretrained(checkpoint / "query_encoder")
    DiffusionPrior.tiny(seed=0).save_pretrained(checkpoint / "prior")
    command = ["clipsonic.cli", "audition", "--checkpoint", str(checkpoint), "--device", "cpu"]
    with _serving(command, tmp_path) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url, wait_until="load")
        page.locator("#prompt textarea, #prompt input").first.fill("playing violin")
        page.locator("#mode label", has_text="text, zero-shot").click()
        page.locator("#steps input[type=number]").fill("4")
        page.locator("#count input[type=number]").fill("1")
        page.locator("#duration input").fill("1.5")
        page.locator("#generate").click()
        page.wait_for_function("document.querySelector('#status textarea').value.startsWith('Generated')",
                               timeout=180_000)
        assert page.locator("#status textarea").input_value() == "Generated 1 clip(s)."
        page.wait_for_function("document.querySelectorAll('audio').length == 1")
        players = _audio_sources(page)
        assert [label for label, _ in players] == ["audio-player-playing violin (text, zero-shot, seed 0)"]
        assert page.evaluate(DURATIONS_JS, [src for _, src in players]) == pytest.approx([1.5], abs=1e-3)
        _screenshot(page, tmp_path / "audition_generation.png")

        # Image mode without an image: the message, and the page still generates.
        page.locator("#mode label", has_text="image").first.click()
        page.locator("#generate").click()
        page.wait_for_function("document.querySelector('#status textarea').value.startsWith('error')")
        assert page.locator("#status textarea").input_value() == "error: image mode needs an image query."
        page.close()
