"""``clipsep export --onnx``: ONNX Runtime answers as PyTorch does, at any length and query count, silence included."""

import json

import numpy as np
import pytest
import torch

from clipcore.query import QueryEncoder
from clipsep.cli import main
from clipsep.model import CLIPSep
from clipsep.separate import Separator

ort = pytest.importorskip("onnxruntime")  # installed by the dev extra; the skip only guards partial installs


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    Separator(CLIPSep.tiny(query_dim=16), QueryEncoder.tiny(embed_dim=16)).save_pretrained(root / "ckpt")
    templates = ["a photo of {}", "the sound of {}"]
    assert main(["export", "--onnx", str(root / "onnx"), "--checkpoint", str(root / "ckpt"),
                 "--template", templates[0], "--template", templates[1]]) == 0
    return Separator.load(root / "ckpt", templates=templates), root / "onnx"


# The export traces batch 2, 2 blocks of frames and 2 queries: every case differs in all three.
@pytest.mark.parametrize("batch, frames_blocks, queries", [(1, 1, 1), (3, 3, 4)])
def test_mask_network_matches_pytorch(exported, batch, frames_blocks, queries):
    separator, folder = exported
    model = separator.model
    session = ort.InferenceSession(str(folder / "mask_network.onnx"))
    generator = torch.Generator().manual_seed(frames_blocks)
    mag = torch.rand(batch, 1, 513, frames_blocks * model.frames_multiple, generator=generator) * 3
    mag[..., 1] = 0  # a silent frame (digital silence before a song; NaN logits once)
    mag[..., 2] *= 1e-9
    query = torch.randn(batch, queries, model.query_dim, generator=generator)
    mask_logits, noise_logits, masks = session.run(None, {"mag_mix": mag.numpy(), "queries": query.numpy()})
    with torch.no_grad():
        want_mask, want_noise = model(mag, query)
    np.testing.assert_allclose(mask_logits, want_mask.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(noise_logits, want_noise.numpy(), atol=1e-4, rtol=1e-4)
    assert noise_logits.shape[1] == model.num_noise_heads and masks.shape == (batch, queries, 513, mag.shape[-1])
    assert masks.min() >= 0 and masks.max() <= 1


def test_text_tower_and_settings_give_the_separators_text_queries(exported):
    separator, folder = exported
    settings = json.loads((folder / "onnx.json").read_text())
    assert settings["templates"] == ["a photo of {}", "the sound of {}"]
    assert settings["frames_multiple"] == separator.model.frames_multiple
    stft = separator.model.stft  # what a plug-in needs to make the mask network's input
    assert (settings["sample_rate"], settings["n_fft"], settings["hop_length"], settings["window"]) == (
        separator.model.sample_rate, stft.n_fft, stft.hop_length, "hann")
    session = ort.InferenceSession(str(folder / "text_tower.onnx"))
    texts = ["violin", "dog barking", "rain"]
    per_template = []
    for template in settings["templates"]:
        tokens = separator.query_encoder.tokenize([template.format(t) for t in texts]).numpy()
        (raw,) = session.run(None, {"tokens": tokens})
        per_template.append(raw / np.linalg.norm(raw, axis=-1, keepdims=True))
    assert settings["query_normalization"] == "unit"
    mean = np.mean(per_template, axis=0)
    queries = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
    np.testing.assert_allclose(queries, separator.embed_text(texts).numpy(), atol=1e-4)
    (one,) = session.run(None, {"tokens": separator.query_encoder.tokenize(["a photo of rain"]).numpy()})
    np.testing.assert_allclose(one[0] / np.linalg.norm(one[0]), per_template[0][2], atol=1e-4)


def test_a_bad_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["export", "--onnx", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "Traceback" not in err and not (tmp_path / "out").exists()


def test_an_output_folder_where_a_file_is_or_a_bad_template_is_one_line_before_loading(exported, tmp_path, capsys):
    _, onnx_folder = exported
    checkpoint = onnx_folder.parent / "ckpt"
    (tmp_path / "afile").write_text("keep me")  # a FileExistsError traceback before
    assert main(["export", "--onnx", str(tmp_path / "afile"), "--checkpoint", str(checkpoint)]) == 2
    assert "--onnx " + str(tmp_path / "afile") + ": is a file, not a folder." in capsys.readouterr().err
    assert main(["export", "--onnx", str(tmp_path / "out"), "--checkpoint", str(checkpoint), "--template", "{} {}"]) == 2
    assert "prompt template '{} {}' can hold the query text only in {}" in capsys.readouterr().err  # was exported
    assert (tmp_path / "afile").read_text() == "keep me" and not (tmp_path / "out").exists()
