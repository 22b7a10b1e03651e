"""DiffusionPrior: sampling, guidance, checkpoints (project and diffusers layouts), training."""

import io
import json
import re
import tarfile

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import PriorTransformer
from PIL import Image

from clipcore import synthetic
from clipcore.prior import DiffusionPrior, PriorError
from clipcore.prior_pairs import compute_pairs, load_pairs, save_pairs
from clipcore.prior_system import PriorDataModule, PriorSystem
from clipcore.query import QueryEncoder

D = 32


def _unit(rows, seed):
    return F.normalize(torch.randn(rows, D, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _sample(prior, text, seed=0, **kwargs):
    return prior.sample(text, steps=5, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_samples_are_normalized_and_deterministic():
    prior = DiffusionPrior.tiny(embed_dim=D, seed=0)
    text = _unit(3, seed=1)
    first = _sample(prior, text)
    assert first.shape == (3, D) and first.dtype == torch.float32
    assert torch.allclose(first.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.equal(first, _sample(prior, text))
    assert not torch.allclose(first, _sample(prior, text, seed=1), atol=1e-3)
    assert torch.equal(first, _sample(DiffusionPrior.tiny(embed_dim=D, seed=0), text))


def test_guidance_uses_the_learned_null_condition():
    prior = DiffusionPrior.tiny(embed_dim=D)
    text = _unit(2, seed=1)
    with torch.no_grad():
        prior.null_embedding.normal_()
    plain, guided = _sample(prior, text, guidance=1.0), _sample(prior, text, guidance=3.0)
    assert not torch.allclose(plain, guided, atol=1e-3)
    with torch.no_grad():  # a null condition equal to the text makes guidance a no-op
        prior.null_embedding.copy_(prior.normalize_text(text[:1]))
    assert torch.allclose(_sample(prior, text[:1], guidance=1.0), _sample(prior, text[:1], guidance=3.0), atol=1e-5)


def test_condition_dropout_replaces_rows_by_the_null_embedding():
    prior = DiffusionPrior(embed_dim=D, transformer={"num_layers": 1, "num_attention_heads": 2,
                                                     "attention_head_dim": 16}, condition_dropout=0.5)
    condition = _unit(1000, seed=2)
    dropped = prior.drop_condition(condition, generator=torch.Generator().manual_seed(0))
    is_null = (dropped == prior.null_embedding).all(-1)
    assert 0.4 < is_null.float().mean() < 0.6
    assert torch.equal(dropped[~is_null], condition[~is_null])


def test_save_and_load_round_trip_keeps_statistics(tmp_path):
    prior = DiffusionPrior.tiny(embed_dim=D)
    prior.set_statistics(_unit(50, seed=3) * 2 + 1, _unit(50, seed=4) - 0.5)
    text = _unit(2, seed=5)
    prior.save_pretrained(tmp_path / "prior")
    for loaded in (DiffusionPrior.from_pretrained(tmp_path / "prior"), DiffusionPrior.load(tmp_path / "prior", embed_dim=D)):
        for name in ("text_mean", "text_std", "transformer.clip_mean", "transformer.clip_std"):
            assert torch.equal(loaded.get_buffer(name) if name.startswith("text") else loaded.get_parameter(name),
                               prior.get_buffer(name) if name.startswith("text") else prior.get_parameter(name))
        assert not torch.equal(loaded.text_std, torch.ones_like(loaded.text_std))
        assert torch.equal(_sample(loaded, text), _sample(prior, text))
    with pytest.raises(PriorError, match="64-d.*32-d|32-d.*64-d"):
        DiffusionPrior.load(tmp_path / "prior", embed_dim=64)


def _diffusers_prior(folder, embed_dim, **extra):
    config = {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 16, "embedding_dim": embed_dim,
              "num_embeddings": 0, "additional_embeddings": 4, "encoder_hid_proj_type": None, **extra}
    torch.manual_seed(7)
    transformer = PriorTransformer(**config)
    with torch.no_grad():
        transformer.clip_mean.normal_()
        transformer.clip_std.uniform_(0.5, 1.5)
    transformer.save_pretrained(folder / "prior")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "UnCLIPScheduler", "num_train_timesteps": 500, "prediction_type": "sample",
         "clip_sample": True, "clip_sample_range": 5.0}))
    return transformer


def test_pretrained_prior_in_diffusers_layout(tmp_path):
    transformer = _diffusers_prior(tmp_path, D)
    for folder in (tmp_path, tmp_path / "prior"):
        prior = DiffusionPrior.load(folder, embed_dim=D)
        assert torch.equal(prior.transformer.proj_in.weight, transformer.proj_in.weight)
        assert torch.equal(prior.transformer.clip_std, transformer.clip_std)
    assert prior.scheduler_config["clip_sample_range"] == 5.0  # read from ../scheduler of the pipeline
    assert _sample(prior, _unit(2, seed=1)).shape == (2, D)
    prior.save_pretrained(tmp_path / "converted")
    converted = DiffusionPrior.load(tmp_path / "converted")
    assert torch.equal(_sample(converted, _unit(2, seed=1)), _sample(prior, _unit(2, seed=1)))


def test_diffusers_prior_of_another_size_is_refused_naming_both_sizes(tmp_path):
    _diffusers_prior(tmp_path, 48)
    with pytest.raises(PriorError, match="48-d.*512-d"):
        DiffusionPrior.load(tmp_path, embed_dim=512)


def test_folders_that_are_no_prior_are_refused(tmp_path):
    with pytest.raises(PriorError, match="neither"):
        DiffusionPrior.load(tmp_path)
    _diffusers_prior(tmp_path / "tokens", D, num_embeddings=4, encoder_hid_proj_type="linear")
    with pytest.raises(PriorError, match="per-token"):
        DiffusionPrior.load(tmp_path / "tokens")


def _rotated_pairs(rows, seed=0, noise=0.05):
    """Image embedding = a fixed random rotation of the text embedding plus noise, renormalized."""
    generator = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(123)))
    text = F.normalize(torch.randn(rows, D, generator=generator), dim=-1)
    image = F.normalize(text @ rotation.T + noise * torch.randn(rows, D, generator=generator), dim=-1)
    return text, image


@pytest.mark.slow
def test_a_trained_tiny_prior_maps_text_embeddings_close_to_image_embeddings(tmp_path):
    text, image = _rotated_pairs(4096, seed=0)
    save_pairs(tmp_path / "pairs.npz", text, image)
    system = PriorSystem(embed_dim=D, preset="tiny", learning_rate=2e-3, warmup_steps=20, weight_decay=0.0)
    data = PriorDataModule(pairs=[str(tmp_path / "pairs.npz")], val_fraction=0.0, batch_size=256)
    trainer = L.Trainer(max_steps=150, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(system, data)
    system.export(tmp_path / "prior")
    prior = DiffusionPrior.load(tmp_path / "prior", embed_dim=D)
    held_text, held_image = _rotated_pairs(256, seed=1)
    sampled = prior.sample(held_text, steps=10, generator=torch.Generator().manual_seed(0))
    cosine_prior = (sampled * held_image).sum(-1).mean().item()
    cosine_text = (held_text * held_image).sum(-1).mean().item()
    assert cosine_prior > 0.8
    assert cosine_prior > cosine_text + 0.6, (cosine_prior, cosine_text)
    assert prior.provenance["global_step"] == 150 and "git_commit" in prior.provenance


def test_pairs_files_round_trip_and_bad_files_are_refused(tmp_path):
    text, image = _rotated_pairs(8)
    save_pairs(tmp_path / "pairs.npz", text, image)
    loaded_text, loaded_image = load_pairs(tmp_path / "pairs.npz")
    assert torch.equal(loaded_text, text) and torch.equal(loaded_image, image)
    (tmp_path / "folder").mkdir()
    np.save(tmp_path / "folder" / "text.npy", text.numpy())
    np.save(tmp_path / "folder" / "image.npy", image.numpy())
    assert torch.equal(load_pairs(tmp_path / "folder")[1], image)
    np.savez(tmp_path / "bad.npz", text=text.numpy(), image=image[:, :4].numpy())
    with pytest.raises(PriorError, match="bad.npz"):
        load_pairs(tmp_path / "bad.npz")
    with pytest.raises(PriorError, match="missing.npz"):
        load_pairs(tmp_path / "missing.npz")


def test_empty_truncated_or_other_files_are_refused_as_pairs_in_one_sentence(tmp_path):
    text, image = _rotated_pairs(64)
    save_pairs(tmp_path / "pairs.npz", text, image)
    whole = (tmp_path / "pairs.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "empty.npz").write_bytes(b"")
    np.save(tmp_path / "array.npy", text.numpy())
    for name in ("truncated.npz", "empty.npz", "array.npy"):
        with pytest.raises(PriorError, match=rf"{name}: cannot be read as a pairs file .* empty, truncated or of "):
            load_pairs(tmp_path / name)
    np.savez(tmp_path / "text_only.npz", text=text.numpy())
    with pytest.raises(PriorError, match=r"text_only.npz: not a pairs file with 'text' and 'image' arrays \(no 'image'\)"):
        load_pairs(tmp_path / "text_only.npz")


def _cached(tmp_path, shards, encoder="tiny"):
    data = PriorDataModule(shards=str(shards), encoder=encoder, cache=str(tmp_path / "cache.npz"), val_fraction=0.0)
    data.prepare_data()
    data.setup()
    return data.train_set.tensors


def test_a_cache_of_pairs_from_other_shards_or_encoder_is_refused(tmp_path, monkeypatch):
    kwargs = dict(duration=2.0, frame_size=32)
    synthetic.write_toy_shards(tmp_path / "old", 2, seed=0, **kwargs)
    synthetic.write_toy_shards(tmp_path / "new", 3, seed=1, **kwargs)
    QueryEncoder.tiny(seed=1).save_pretrained(tmp_path / "clip")
    text, _ = _cached(tmp_path, tmp_path / "old")
    assert len(text) == 2 * 2  # clips x frames, one template
    # The same shards and encoder read the cache back (a relative spelling of them too).
    monkeypatch.chdir(tmp_path)
    assert torch.equal(_cached(tmp_path, "old")[0].sort(0).values, text.sort(0).values)
    stale = re.escape(f"data.cache {tmp_path / 'cache.npz'}: holds pairs computed from the shards {tmp_path / 'old'} "
                      "with the encoder tiny, and this run's")
    with pytest.raises(PriorError, match=stale + " shard files differ; delete it or give another data.cache."):
        _cached(tmp_path, tmp_path / "new")
    with pytest.raises(PriorError, match=stale + " encoder and encoder files differ; delete it or give another"):
        _cached(tmp_path, tmp_path / "old", encoder=str(tmp_path / "clip"))
    # Shards written again in place are not the ones the cache was computed from.
    synthetic.write_toy_shards(tmp_path / "old", 2, seed=2, **kwargs)
    with pytest.raises(PriorError, match=stale + " shard files differ"):
        _cached(tmp_path, tmp_path / "old")
    # A cache without a record (an older one) cannot be checked, and is refused.
    save_pairs(tmp_path / "cache.npz", text, text)
    with pytest.raises(PriorError, match=r"cache.npz: holds pairs without a record of the shards and encoder they were "
                                         r"computed from \(an older cache\), so they cannot be checked"):
        _cached(tmp_path, tmp_path / "old")


def test_pairs_are_computed_from_shards_of_images_and_captions(tmp_path):
    encoder = QueryEncoder.tiny(seed=0)
    kwargs = dict(duration=2.0, frame_size=32)
    synthetic.write_toy_shards(tmp_path / "plain", 3, seed=0, **kwargs)
    synthetic.write_toy_shards(tmp_path / "embedded", 3, seed=0, encoder=encoder, **kwargs)
    templates = ["a photo of {}", "the sound of {}"]
    text, image = compute_pairs(str(tmp_path / "plain"), encoder, templates)
    frames, labels = 2, synthetic.INSTRUMENTS[:3]
    assert text.shape == image.shape == (3 * frames * len(templates), D)
    prompts = [t.format(label) for label in labels for t in templates for _ in range(frames)]
    expected_text = encoder.encode_text(prompts, templates="{}")
    assert torch.allclose(text, expected_text, atol=1e-5)
    # The image of a pair is the CLIP embedding of a frame of its clip: decoded from the
    # shard's JPEG, or read from its precomputed <encoder>.npy member (made before JPEG).
    # Each clip's frames are 0.996 alike and clips 0.97 to 0.99, so a cosine floor cannot tell a
    # wrong frame: each pair's image must be nearest, of all frames, to its own.
    direct = torch.cat([encoder.encode_image(torch.from_numpy(synthetic.make_clip(k, seed=0, **kwargs).frames)
                                             .permute(0, 3, 1, 2)) for k in range(len(labels))])  # [clip x frame, D]
    own = torch.arange(len(labels) * frames).view(-1, 1, frames).expand(-1, len(templates), -1).reshape(-1)
    assert torch.equal((image @ direct.T).argmax(1), own)
    text2, image2 = compute_pairs(str(tmp_path / "embedded"), encoder, templates)
    assert torch.allclose(text2, text, atol=1e-5)
    assert torch.allclose(image2, direct[own], atol=2e-3)
    # No templates is the default one; a template without {} is one sentence, not a traceback.
    torch.testing.assert_close(compute_pairs(str(tmp_path / "plain"), encoder, [])[0][:frames],
                               encoder.encode_text([f"a photo of {labels[0]}"], templates="{}").expand(frames, -1))
    with pytest.raises(PriorError, match="templates: prompt template 'a photo' has no"):
        compute_pairs(str(tmp_path / "plain"), encoder, ["a photo"])


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _jpeg(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_image_caption_webdataset_pairs_skip_bad_samples_with_a_warning(tmp_path):
    encoder = QueryEncoder.tiny(seed=0)
    _tar(tmp_path / "laion-000000.tar", {
        "a.jpg": _jpeg((200, 20, 20)), "a.txt": b"a red square",
        "b.jpg": b"not a jpeg", "b.txt": b"broken",
        "c.png": _jpeg((20, 20, 200)),  # no caption
        "d.jpg": _jpeg((20, 200, 20)), "d.txt": "un carr\u00e9 vert".encode(),
    })
    with pytest.warns(UserWarning, match="skipping") as caught:
        text, image = compute_pairs(str(tmp_path / "laion-000000.tar"), encoder)
    assert len([w for w in caught if "skipping" in str(w.message)]) == 2
    assert text.shape == (2, D)
    assert torch.allclose(text, encoder.encode_text(["a red square", "un carr\u00e9 vert"], templates="{}"), atol=1e-5)
    red = torch.tensor([200, 20, 20], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 30, 40)
    assert (image[0] * encoder.encode_image(red)[0]).sum() > 0.99


def test_a_checkpoint_with_the_former_argument_name_still_loads(tmp_path):
    DiffusionPrior.tiny(embed_dim=D).save_pretrained(tmp_path / "prior")
    config_file = tmp_path / "prior" / "config.json"
    config = json.loads(config_file.read_text())
    config["arguments"]["cond_drop_prob"] = config["arguments"].pop("condition_dropout")
    config["arguments"]["cond_drop_prob"] = 0.25
    config_file.write_text(json.dumps(config))
    assert DiffusionPrior.load(tmp_path / "prior", embed_dim=D).condition_dropout == 0.25


def test_labelled_audio_shards_give_no_pairs_their_text_embeddings_are_not_images(tmp_path):
    from clipcore.shards import ShardSample, write_shard

    encoder = QueryEncoder.tiny(seed=0)
    text = encoder.encode_text_raw(["dog"], ["a photo of {}"]).numpy()
    audio = np.zeros(16000, np.float32)
    write_shard(tmp_path / "audio-000000.tar", [
        ShardSample("library", f"dog_{k}", 0.0, audio, 16000, np.zeros((0, 1, 1, 3), np.uint8), 0.0, "dog",
                    {encoder.name: text}, ["a photo of {}"]) for k in range(3)])
    # They were read as images: a "gap" between a label's text and itself (cosine 0.96 for a library).
    with pytest.warns(UserWarning, match="holds its label's text embedding"), \
            pytest.raises(PriorError, match=r"no usable image and caption pairs .* \(3 samples skipped\)"):
        compute_pairs(str(tmp_path / "audio-*.tar"), encoder)
