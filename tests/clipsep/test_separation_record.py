"""separation.json beside every input's stems: input, queries, checkpoint, settings, levels."""

import hashlib
import json

import numpy as np
import soundfile as sf
from PIL import Image

from clipcore.query import QueryEncoder
from clipsep.cli import main
from clipsep.model import CLIPSep
from clipsep.separate import Separator


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_each_folder_of_stems_says_what_made_it(tmp_path):
    checkpoint = tmp_path / "ckpt"
    Separator(CLIPSep.tiny(query_dim=16), QueryEncoder.tiny(embed_dim=16)).save_pretrained(checkpoint)
    rng = np.random.default_rng(0)
    mix = tmp_path / "take.wav"
    sf.write(mix, (0.2 * rng.standard_normal((3 * 22050, 2))).astype(np.float32), 22050)
    image = tmp_path / "cello.png"
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    assert main(["separate", "--checkpoint", str(checkpoint), "-q", "playing violin", "--query-image", str(image),
                 "--residual", "--bit-depth", "32f", "--overlap", "0.5", "--mask-power", "1.5", "--device", "cpu", "-o", str(out),
                 str(mix)]) == 0
    record = json.loads((out / "take" / "separation.json").read_text())
    assert record["input"] == {"path": str(mix.resolve()), "sha256": _sha(mix), "bytes": mix.stat().st_size,
                               "mtime_ns": mix.stat().st_mtime_ns, "sample_rate": 22050, "channels": 2, "seconds": 3.0}
    assert record["queries"] == [{"text": "playing violin"}, {"image": str(image.resolve()), "sha256": _sha(image)}]
    assert record["checkpoint"]["weights_sha256"] == _sha(checkpoint / "model.safetensors")
    settings = record["settings"]
    assert settings["overlap"] == 0.5 and settings["device"] == "cpu" and settings["bit_depth"] == "32f"
    assert settings["templates"] == ["a photo of {}"] and settings["mono"] is False
    assert settings["mask_power"] == 1.5 and settings["binary"] is False
    assert "torch" in record["versions"] and record["seconds_taken"] > 0
    mixture = sf.read(mix, dtype="float64")[0]
    assert set(record["stems"]) == {"playing-violin", "image-cello", "residual"}
    for name, stem in record["stems"].items():
        written = sf.read(out / "take" / stem["file"], dtype="float64")[0]
        assert abs(stem["peak_dbfs"] - 20 * np.log10(np.abs(written).max())) < 0.01
        assert abs(stem["rms_dbfs"] - 10 * np.log10(np.mean(written**2))) < 0.01
        assert abs(stem["energy_share"] - np.sum(written**2) / np.sum(mixture**2)) < 1e-3
