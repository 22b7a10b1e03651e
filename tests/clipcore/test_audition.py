"""What the audition pages share: a spectrogram of any length, the zip, Gradio's absence."""

import sys
import zipfile

import numpy as np
import pytest
import soundfile as sf

from clipcore.audition import COLUMNS, FLOOR_DB, N_FFT, import_gradio, overview_spectrogram, zip_folder
from clipcore.errors import UsageError


@pytest.mark.parametrize("seconds, rate", [(3.0, 16000), (600.0, 8000)])
def test_the_spectrogram_of_a_tone_peaks_at_its_frequency_in_every_column(tmp_path, seconds, rate):
    tone = 1000.0
    t = np.arange(int(seconds * rate)) / rate
    left = 0.5 * np.sin(2 * np.pi * tone * t)
    sf.write(tmp_path / "tone.wav", np.stack([left, 0.5 * left], axis=1).astype(np.float32), rate)
    db, seconds_per_column, read_rate = overview_spectrogram(tmp_path / "tone.wav")
    columns = db.shape[1]
    assert read_rate == rate and db.shape[0] == N_FFT // 2 + 1
    assert columns <= COLUMNS and columns * seconds_per_column >= seconds > (columns - 1) * seconds_per_column
    assert (db.argmax(0) == round(tone / (rate / N_FFT))).all()
    assert db.max() == 0.0 and db.min() >= FLOOR_DB
    assert (db[:, 1:-1].max(0) > db[:, 1:-1].mean(0) + 40).all()  # a tone, not noise


def test_zip_holds_every_file_under_its_relative_path(tmp_path):
    (tmp_path / "stems" / "take").mkdir(parents=True)
    (tmp_path / "stems" / "take" / "a.wav").write_bytes(b"a" * 10)
    (tmp_path / "stems" / "take" / "separation.json").write_text("{}")
    archive = zip_folder(tmp_path / "stems", tmp_path / "all.zip")
    with zipfile.ZipFile(archive) as handle:
        assert sorted(handle.namelist()) == ["take/a.wav", "take/separation.json"]
        assert handle.read("take/a.wav") == b"a" * 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.zip", "stems"]  # no temporary file left


def test_without_gradio_the_page_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now raises ImportError
    with pytest.raises(UsageError, match=r"^the audition page needs Gradio: pip install 'clipaudio\[app\]'\.$"):
        import_gradio()
