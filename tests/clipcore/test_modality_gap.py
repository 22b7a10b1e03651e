"""The modality gap: measured, saved, loaded, and text embeddings carried across it."""

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

from clipcore.errors import UsageError
from clipcore.modality_gap import ModalityGap, ModalityGapError
from recipes.measure_gap import main as measure_gap


def _two_cones(classes: int = 6, per_class: int = 40, dim: int = 16, seed: int = 0):
    """Image and text embeddings of ``classes`` concepts in two cones: each modality has its
    own large common direction, and a concept's direction is shared by both."""
    g = torch.Generator().manual_seed(seed)
    image_common, text_common = 3 * F.normalize(torch.randn(2, dim, generator=g), dim=-1)
    concept = F.normalize(torch.randn(classes, dim, generator=g), dim=-1)
    labels = torch.arange(classes).repeat_interleave(per_class)
    noise = 0.3 * torch.randn(len(labels), dim, generator=g)
    image = F.normalize(image_common + concept[labels] + noise, dim=-1)
    text = F.normalize(text_common + concept, dim=-1)  # [classes, D]: one prompt per concept
    return image, text, labels


def test_crossing_carries_text_queries_to_their_own_images():
    image, text, labels = _two_cones()
    gap = ModalityGap.measure(image, text)
    centroids = F.normalize(torch.stack([image[labels == k].mean(0) for k in range(len(text))]), dim=-1)
    before, after = text @ centroids.T, gap.cross(text) @ centroids.T  # [classes, classes]
    assert before.diagonal().mean() < 0.5 < after.diagonal().mean()  # the gap, then none
    assert bool((after.argmax(-1) == torch.arange(len(text))).all())  # each prompt nearest its own images
    torch.testing.assert_close(gap.cross(text).norm(dim=-1), torch.ones(len(text)))
    torch.testing.assert_close(F.normalize(gap.cross(text).mean(0), dim=0), F.normalize(gap.image_mean, dim=0),
                               atol=0.05, rtol=0)  # the crossed prompts are centred where the images are


def test_crossing_matches_the_spreads_where_a_mean_shift_does_not():
    """Each text embedding is the twin of an image embedding: the same coordinates along
    the images' four axes, scaled differently per axis, about another common direction,
    plus variation along four axes of its own. Measured on the two sets unpaired (the
    texts shuffled), crossing puts nearly every twin nearest its own image; moving the
    texts by the difference of the means alone (Liang et al.'s shift) does not."""
    g = torch.Generator().manual_seed(0)
    dim, count = 16, 400
    axis = torch.eye(dim)
    coordinates = torch.randn(count, 4, generator=g) * torch.tensor([0.5, 0.4, 0.3, 0.2])
    image = F.normalize(3 * axis[0] + coordinates @ axis[1:5], dim=-1)
    own = 0.4 * torch.randn(count, 4, generator=g) @ axis[6:10]
    text = F.normalize(3 * axis[5] + (coordinates * torch.tensor([0.3, 0.6, 1.5, 0.8])) @ axis[1:5] + own, dim=-1)
    gap = ModalityGap.measure(image, text[torch.randperm(count, generator=g)])
    assert len(gap.axes) == 4  # the images' own axes hold their variance
    shifted = F.normalize(text + gap.image_mean - gap.text_mean, dim=-1)
    for carried, least, most in ((gap.cross(text), 0.9, 1.0), (shifted, 0.0, 0.5)):
        nearest_own = float((torch.cdist(carried, image).argmin(-1) == torch.arange(count)).float().mean())
        assert least <= nearest_own <= most
    error = (gap.cross(text) - image).norm(dim=-1) / (image - gap.image_mean).norm(dim=-1)
    assert float(error.median()) < 0.2


def test_saved_and_loaded_the_crossing_is_the_same(tmp_path):
    image, text, _ = _two_cones()
    gap = ModalityGap.measure(image, text)
    loaded = ModalityGap.load(gap.save(tmp_path / "gap.json"))
    torch.testing.assert_close(loaded.cross(text), gap.cross(text))
    assert loaded.embed_dim == 16


GOOD = {"format": "clipaudio.modality_gap", "version": 2, "image_mean": [1.0, 0.0], "text_mean": [0.0, 1.0],
        "axes": [[0.0, 1.0]], "image_spread": [0.1], "text_spread": [0.3]}


@pytest.mark.parametrize("content, reason", [
    ("not json", "cannot read"), (json.dumps({"format": "other"}), "not a modality gap"),
    (json.dumps([1, 2]), "not a modality gap"),
    (json.dumps({"format": "clipaudio.modality_gap", "image_mean": [1.0, 0.0], "text_mean": [0.0, 1.0]}),
     "earlier version"),
    (json.dumps({**GOOD, "image_mean": [1.0, math.nan]}), "not finite"),
    (json.dumps({**GOOD, "text_mean": [1.0]}), "matching sizes"),
    (json.dumps({**GOOD, "axes": [[0.0, 1.0, 0.0]]}), "matching sizes"),
    (json.dumps({**GOOD, "image_spread": [0.0]}), "matching sizes"),
    (json.dumps({**GOOD, "text_spread": [0.0]}), "matching sizes"),
    (json.dumps({key: value for key, value in GOOD.items() if key != "text_spread"}), "missing"),
])
def test_a_bad_gap_file_is_named_in_one_sentence(tmp_path, content, reason):
    path = tmp_path / "gap.json"
    path.write_text(content)
    with pytest.raises(ModalityGapError, match=f"{re.escape(str(path))}.*{reason}"):
        ModalityGap.load(path)
    assert ModalityGap.load(_written(tmp_path / "good.json", GOOD)).embed_dim == 2
    with pytest.raises(ModalityGapError, match="missing.json"):
        ModalityGap.load(tmp_path / "missing.json")


def _written(path, record):
    path.write_text(json.dumps(record))
    return path


def test_measuring_needs_texts_that_differ():
    image, text, _ = _two_cones()
    with pytest.raises(ValueError, match="alike"):
        ModalityGap.measure(image, text[:1].repeat(3, 1))


def test_measuring_needs_images_that_differ_and_embeddings_with_a_direction():
    """A gap that :meth:`ModalityGap.load` would refuse (no image spread) is not measured either."""
    image, text, _ = _two_cones()
    with pytest.raises(ValueError, match="image embeddings are all alike"):
        ModalityGap.measure(image[:1].repeat(4, 1), text)
    for broken, name in ((image.clone(), "image"), (text.clone(), "text")):
        broken[1] = 0.0
        with pytest.raises(ValueError, match=f"some {name} embeddings are zero or not finite"):
            ModalityGap.measure(broken if name == "image" else image, broken if name == "text" else text)


def test_the_recipe_measures_the_gap_of_embedding_pairs(tmp_path, capsys):
    from clipcore.prior_pairs import save_pairs

    image, text, labels = _two_cones()
    save_pairs(tmp_path / "pairs.npz", text[labels], image)
    gap = measure_gap(["--pairs", str(tmp_path / "pairs.npz"), "-o", str(tmp_path / "gap.json")])
    torch.testing.assert_close(ModalityGap.load(tmp_path / "gap.json").text_mean, F.normalize(text[labels], dim=-1).mean(0))
    torch.testing.assert_close(gap.image_mean, image.mean(0))
    assert "gap.json" in capsys.readouterr().out
    with pytest.raises(UsageError, match="--encoder"):
        measure_gap(["--shards", str(tmp_path / "*.tar"), "-o", str(tmp_path / "other.json")])
    with pytest.raises(UsageError, match=r"--template: prompt template 'a photo' has no '\{\}'"):
        measure_gap(["--shards", str(tmp_path / "*.tar"), "--template", "a photo", "-o", str(tmp_path / "other.json")])
    before = (tmp_path / "pairs.npz").read_bytes()
    with pytest.raises(UsageError, match=r"pairs.npz: is the input of --pairs; writing it there would destroy it."):
        measure_gap(["--pairs", str(tmp_path / "pairs.npz"), "-o", str(tmp_path / "pairs.npz")])
    assert (tmp_path / "pairs.npz").read_bytes() == before
    save_pairs(tmp_path / "alike.npz", text[:1].repeat(3, 1), image[:3])
    with pytest.raises(UsageError, match=r"alike.npz: .*alike"):
        measure_gap(["--pairs", str(tmp_path / "alike.npz"), "-o", str(tmp_path / "alike.json")])
    save_pairs(tmp_path / "one_image.npz", text[:3], image[:1].repeat(3, 1))
    with pytest.raises(UsageError, match=r"one_image.npz: .*image embeddings are all alike"):
        measure_gap(["--pairs", str(tmp_path / "one_image.npz"), "-o", str(tmp_path / "one_image.json")])
    assert not (tmp_path / "one_image.json").exists()


def test_the_recipe_measures_the_gap_of_labelled_shards(tmp_path):
    from clipcore.query import QueryEncoder
    from clipcore.synthetic import toy_clips, write_toy_shards

    encoder = QueryEncoder.tiny(embed_dim=16)
    encoder.save_pretrained(tmp_path / "encoder")
    write_toy_shards(tmp_path / "train", 4, seed=0, shard_size=2, duration=1.1, frame_size=64)
    gap = measure_gap(["--shards", str(tmp_path / "train" / "*.tar"), "--encoder", str(tmp_path / "encoder"),
                       "--template", "music of {}", "-o", str(tmp_path / "gap.json")])
    assert gap.embed_dim == 16
    labels = [clip.label for clip in toy_clips(4, 0, duration=1.1, frame_size=64)]  # the shards' clips
    expected = F.normalize(encoder.encode_text(labels, templates="music of {}"), dim=-1).mean(0)  # same frames each
    torch.testing.assert_close(ModalityGap.load(tmp_path / "gap.json").text_mean, expected, atol=1e-5, rtol=0)
