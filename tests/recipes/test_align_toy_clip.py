"""The toy CLIP's alignment recipe: it saves an encoder whose recorded figures (modality gap,
retrieval with held-out prompts) are reproduced from the saved files, and refuses bad
settings. That the gap lies in real CLIP's band and retrieval works is checked on the CLIP
the quick start aligns (``tests/recipes/test_quickstart.py``)."""

import json

import pytest

from clipcore.miniature import world
from clipcore.query import QueryEncoder
from recipes import align_toy_clip


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """A very short alignment (the recipe's default runs 500 steps on 300 pictures each)."""
    out = tmp_path_factory.mktemp("clip") / "encoder"
    assert align_toy_clip.main([str(out), "--images", "10", "--steps", "20"]) == 0
    return out


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
    assert align_toy_clip.main([str(tmp_path / "x"), "--learning-rate", "-1"]) == 2  # a torch traceback before
    assert "--learning-rate must be a positive number, got -1.0." in capsys.readouterr().err
    # A folder holding another checkpoint: refused before the alignment (it was replaced after it).
    (tmp_path / "separator").mkdir()
    config = '{"class": "clipsep.model.CLIPSep", "arguments": {}}'
    (tmp_path / "separator" / "config.json").write_text(config)
    (tmp_path / "notes.txt").write_text("keep me")
    assert align_toy_clip.main([str(tmp_path / "separator"), "--steps", "1", "--images", "2"]) == 2
    assert "holds a clipsep.model.CLIPSep checkpoint; save the query encoder elsewhere." in capsys.readouterr().err
    assert (tmp_path / "separator" / "config.json").read_text() == config
    assert align_toy_clip.main([str(tmp_path / "notes.txt"), "--steps", "1", "--images", "2"]) == 2
    assert "out_dir " + str(tmp_path / "notes.txt") + ": is a file, not a folder." in capsys.readouterr().err
