"""QueryEncoder: normalized, deterministic, frozen embeddings; prompts; loading and saving."""

import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from clipcore.embeddings import mean_embedding
from clipcore.prompts import CLIPSEP_EVAL_TEMPLATES, DEFAULT_TEMPLATE
from clipcore.query import QueryEncoder, QueryEncoderError, tiny_clip_config


@pytest.fixture(scope="module")
def encoder():
    return QueryEncoder.tiny(seed=0)


def _images(batch=3, height=40, width=56, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=generator)


def test_embeddings_are_normalized_float32_and_frozen(encoder):
    images = encoder.encode_image(_images())
    texts = encoder.encode_text(["violin", "dog barking"])
    for embedding, rows in ((images, 3), (texts, 2)):
        assert embedding.shape == (rows, encoder.embed_dim) and embedding.dtype == torch.float32
        assert torch.allclose(embedding.norm(dim=-1), torch.ones(rows), atol=1e-5)
        assert not embedding.requires_grad
    assert not any(p.requires_grad for p in encoder.parameters())


def test_embeddings_are_deterministic_per_seed():
    images = _images()
    first, again, other = QueryEncoder.tiny(seed=0), QueryEncoder.tiny(seed=0), QueryEncoder.tiny(seed=1)
    assert torch.equal(first.encode_image(images), again.encode_image(images))
    assert torch.equal(first.encode_text(["violin"]), again.encode_text(["violin"]))
    assert not torch.allclose(first.encode_image(images), other.encode_image(images), atol=1e-3)
    assert first.name != other.name


def test_preprocessing_resizes_crops_and_normalizes(encoder):
    colour = torch.tensor([200, 30, 90], dtype=torch.uint8).view(1, 3, 1, 1)
    for height, width in ((17, 90), (300, 64), (32, 32)):
        pixels = encoder.preprocess(colour.expand(2, 3, height, width).contiguous())
        assert pixels.shape == (2, 3, 32, 32)
        expected = (colour.float() / 255 - encoder.pixel_mean) / encoder.pixel_std
        assert torch.allclose(pixels, expected.expand_as(pixels), atol=1e-4)
    # The centre crop keeps the middle of the long side: left and right halves differ here.
    halves = torch.zeros(1, 3, 32, 96, dtype=torch.uint8)
    halves[..., 48:] = 255
    pixels = encoder.preprocess(halves)
    assert pixels[..., :15].max() < 0 and pixels[..., 17:].min() > 0


def test_pil_images_and_tensors_agree_and_sizes_may_differ(encoder):
    images = _images(batch=2, height=48, width=64)
    pil = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]
    assert torch.allclose(encoder.encode_image(pil), encoder.encode_image(images), atol=1e-5)
    mixed = [pil[0], Image.fromarray(np.zeros((20, 90, 3), dtype=np.uint8))]
    assert encoder.encode_image(mixed).shape == (2, encoder.embed_dim)


def test_batching_does_not_change_results(encoder):
    images = _images(batch=5)
    assert torch.allclose(encoder.encode_image(images, batch_size=2), encoder.encode_image(images), atol=1e-5)


def test_frames_of_a_clip_are_averaged(encoder):
    frames = _images(batch=6).view(2, 3, 3, 40, 56)
    per_frame = encoder.encode_image(frames.flatten(0, 1)).view(2, 3, -1)
    averaged = encoder.encode_image(frames)
    expected = torch.nn.functional.normalize(per_frame.mean(1), dim=-1)
    assert torch.allclose(averaged, expected, atol=1e-5)
    assert torch.allclose(mean_embedding(per_frame), expected, atol=1e-6)


def test_template_ensemble_is_the_normalized_mean_of_single_templates(encoder):
    queries = ["violin", "acoustic guitar", "dog"]
    singles = torch.stack([encoder.encode_text(queries, templates=t) for t in CLIPSEP_EVAL_TEMPLATES])
    ensemble = encoder.encode_text(queries, templates=CLIPSEP_EVAL_TEMPLATES)
    assert torch.allclose(ensemble, torch.nn.functional.normalize(singles.mean(0), dim=-1), atol=1e-6)
    assert not torch.allclose(ensemble, singles[0], atol=1e-3)
    assert len(set(CLIPSEP_EVAL_TEMPLATES)) == 4


def test_default_template_and_cache(encoder):
    encoder.clear_cache()
    default = encoder.encode_text(["violin"])
    assert torch.equal(default, encoder.encode_text(["violin"], templates=DEFAULT_TEMPLATE))
    assert ("a photo of {}", "violin") in encoder._text_cache
    # A cached answer equals a fresh computation, also in a batch with new texts.
    batch = encoder.encode_text(["cello", "violin"])
    encoder.clear_cache()
    assert torch.allclose(batch, encoder.encode_text(["cello", "violin"]), atol=1e-6)
    assert torch.allclose(batch[1], default[0], atol=1e-6)


def test_bad_text_inputs_are_refused(encoder):
    # Both text paths (normalized and the official CLIPSep's raw) check their templates.
    for encode in (encoder.encode_text, encoder.encode_text_raw):
        with pytest.raises(ValueError, match="no '\\{\\}'"):
            encode(["violin"], templates=["a photo"])
        with pytest.raises(ValueError, match="literal braces"):
            encode(["violin"], templates="a {} of {0}")
        with pytest.raises(ValueError, match="empty list"):
            encode(["violin"], templates=[])
    with pytest.raises(ValueError, match="list of strings"):
        encoder.encode_text("violin")


def test_save_and_load_round_trip(tmp_path, encoder):
    images, texts = _images(), ["violin", "flute"]
    encoder.save_pretrained(tmp_path / "clip")
    for loaded in (QueryEncoder.from_pretrained(tmp_path / "clip"), QueryEncoder.load(tmp_path / "clip")):
        assert loaded.name == encoder.name and loaded.embed_dim == encoder.embed_dim
        assert torch.equal(loaded.encode_image(images), encoder.encode_image(images))
        assert torch.allclose(loaded.encode_text(texts), encoder.encode_text(texts), atol=1e-6)


def test_a_trained_tiny_clip_saves_and_loads(tmp_path):
    encoder = QueryEncoder.tiny(seed=0)
    before = encoder.encode_text(["violin"])
    encoder.model.requires_grad_(True).train()
    optimiser = torch.optim.Adam(encoder.model.parameters(), lr=1e-2)
    features = encoder.model(encoder.preprocess(_images(batch=4)), encoder.tokenize(["a", "b", "c", "d"]))
    loss = open_clip.ClipLoss()(*features[:3]) if isinstance(features, tuple) else open_clip.ClipLoss()(
        features["image_features"], features["text_features"], features["logit_scale"])
    loss.backward()
    optimiser.step()
    encoder.model.requires_grad_(False).eval()
    after = encoder.encode_text(["violin"])
    assert not torch.allclose(before, after, atol=1e-4)
    encoder.save_pretrained(tmp_path / "trained")
    assert torch.allclose(QueryEncoder.load(tmp_path / "trained").encode_text(["violin"]), after, atol=1e-6)


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_local_open_clip_weights_file_with_model_config(tmp_path, encoder, suffix):
    # What a user with a custom open_clip model has: its config JSON and a weights file.
    config = tmp_path / "tiny-clip.json"
    config.write_text(json.dumps({"model_cfg": encoder.init_args["model_config"]}))
    weights = tmp_path / f"open_clip_model{suffix}"
    state = {key: value.contiguous() for key, value in encoder.model.state_dict().items()}
    torch.save(state, weights) if suffix == ".bin" else save_file(state, str(weights))
    loaded = QueryEncoder.load(f"{config}={weights}")
    images = _images()
    assert torch.allclose(loaded.encode_image(images), encoder.encode_image(images), atol=1e-6)
    assert torch.allclose(loaded.encode_text(["violin"]), encoder.encode_text(["violin"]), atol=1e-6)
    assert loaded.name == "clip-tiny-clip-open-clip-model"
    same = QueryEncoder.load(weights, model=str(config), name="custom")
    assert same.name == "custom" and torch.equal(same.encode_image(images), loaded.encode_image(images))


class _NotWeights:
    pass


def test_weights_files_are_never_unpickled(tmp_path, encoder):
    config = tmp_path / "tiny-clip.json"
    config.write_text(json.dumps(encoder.init_args["model_config"]))
    evil = tmp_path / "evil.bin"
    torch.save({"payload": _NotWeights()}, evil)
    with pytest.raises(QueryEncoderError, match="evil.bin"):
        QueryEncoder.load(f"{config}={evil}")


def test_load_errors_are_one_clear_sentence(tmp_path):
    with pytest.raises(QueryEncoderError, match="pass 'ViT-B-32/openai=/path/to/"):
        # No network in tests, and an empty cache whatever this machine has cached: says how to pass a local file.
        QueryEncoder.load("ViT-B-32/openai", cache_dir=str(tmp_path / "empty-cache"))
    with pytest.raises(QueryEncoderError, match="no pretrained tag 'nonsense'"):
        QueryEncoder.load("ViT-B-32/nonsense")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(QueryEncoderError, match="no pretrained tag 'nonsense'"):
        QueryEncoder.load(f"ViT-B-32/nonsense={tmp_path / 'weights.bin'}")
    with pytest.raises(QueryEncoderError, match="ViT-Q-99/openai: no such query encoder folder, nor .* no model 'ViT-Q-99'"):
        QueryEncoder.load("ViT-Q-99/openai")
    with pytest.raises(QueryEncoderError, match="runs/missing/clip: no such query encoder folder, nor"):
        QueryEncoder.load("runs/missing/clip")
    with pytest.raises(QueryEncoderError, match="no model 'ViT-Q-99'"):
        QueryEncoder.load(f"ViT-Q-99={tmp_path / 'weights.bin'}")
    with pytest.raises(QueryEncoderError, match="no such open_clip weights file"):
        QueryEncoder.load(f"ViT-B-32={tmp_path / 'missing.bin'}")
    with pytest.raises(QueryEncoderError, match="without config.json"):
        QueryEncoder.load(tmp_path)


class _Payload:  # what a hostile weights file could hold: any object, rebuilt by calling a function
    def __reduce__(self):
        return (print, ("unpickled",))


def test_weights_holding_python_objects_are_refused_without_torchs_advice_to_unpickle_them(tmp_path, capsys):
    (tmp_path / "tiny.json").write_text(json.dumps(tiny_clip_config()))
    torch.save({"state_dict": {}, "payload": _Payload()}, tmp_path / "weights.pt")
    with pytest.raises(QueryEncoderError) as refused:
        QueryEncoder.load(f"{tmp_path / 'tiny.json'}={tmp_path / 'weights.pt'}")
    assert str(refused.value) == (f"{tmp_path / 'weights.pt'}: is not a PyTorch weights file, or holds Python objects "
                                  "besides tensors (which are never unpickled here).")
    assert "unpickled" not in capsys.readouterr().out


def test_bfloat16_weights_give_float32_embeddings_of_the_same_images(tmp_path, encoder):
    encoder.save_pretrained(tmp_path / "clip")
    half = QueryEncoder.load(tmp_path / "clip", dtype=torch.bfloat16)
    assert next(half.model.parameters()).dtype == torch.bfloat16
    embedding = half.encode_image(_images())
    assert embedding.dtype == torch.float32
    # bfloat16 rounding moves these unit vectors by 0.0025 at most; the images' mean embedding
    # lies 0.04 from them, the same images flipped 0.08.
    assert torch.allclose(embedding, encoder.encode_image(_images()), atol=0.01)
