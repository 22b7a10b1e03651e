"""The toy CLIP of the miniature MUSIC world keeps a modality gap like real CLIP's while
retrieval with held-out prompts works."""

import json

import pytest

from clipcore.miniature import world
from clipcore.query import QueryEncoder
from recipes import align_toy_clip


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """A short alignment (the recipe's default runs 500 steps on 300 pictures each)."""
    out = tmp_path_factory.mktemp("clip") / "encoder"
    assert align_toy_clip.main([str(out), "--images", "40", "--steps", "250"]) == 0
    return out


def test_the_gap_lies_in_the_band_and_retrieval_beats_chance(aligned):
    facts = json.loads((aligned / "config.json").read_text())["provenance"]
    assert 0.2 <= facts["matching_cosine"] <= 0.4, facts  # real CLIP: about 0.3
    assert facts["mismatched_cosine"] < facts["matching_cosine"] - 0.1, facts
    assert facts["centroid_cosine"] < 0.6, facts  # image and text lie in separate cones
    # 110 test pictures x 6 held-out phrasings, 11 instruments: a CLIP at chance (1/11)
    # reaches 30% with probability below 1e-9.
    assert facts["retrieval_heldout_prompts"] >= 0.3, facts


def test_the_saved_encoder_reproduces_the_recorded_figures(aligned):
    encoder = QueryEncoder.load(str(aligned))
    facts = json.loads((aligned / "config.json").read_text())["provenance"]
    toy = align_toy_clip.WORLDS["music"]
    frames, labels = align_toy_clip.render_frames(toy, 10, 1000)
    again = align_toy_clip.gap_facts(encoder, frames, labels, list(world.INSTRUMENTS), world.HELDOUT_TEMPLATES)
    assert again["matching_cosine"] == pytest.approx(facts["matching_cosine"], abs=1e-4)
    assert again["retrieval_heldout_prompts"] == pytest.approx(facts["retrieval_heldout_prompts"], abs=1e-6)


def test_bad_settings_are_one_clear_sentence(tmp_path, capsys):
    assert align_toy_clip.main([str(tmp_path / "x"), "--matching-cosine", "0.1", "--mismatched-cosine", "0.2"]) == 2
    assert "--mismatched-cosine" in capsys.readouterr().err
