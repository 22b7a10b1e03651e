"""The timbre judge of the miniature MUSIC world: its training, its ensembles and its
report (how well it names instruments of the test split, even played out of their usual
register or over off-screen sound, is checked on the quick start's judge:
tests/recipes/test_quickstart.py)."""

import numpy as np
import pytest
import torch

from clipcore.miniature import world
from recipes.toy_judges import (
    InstrumentClassifier,
    JudgeEnsemble,
    judge_from_renders,
    judge_report,
    proportion,
    render_crops,
    vocoder_round_trip,
)


def test_the_vocoder_round_trip_keeps_the_shape_and_changes_the_phase():
    """The path every generated clip takes to the judge: CLIPSonic's mel and Griffin-Lim."""
    waves, _ = render_crops("test", 3, 0.5, per_clip=1, seed=6, offscreen=0.3)
    vocoded = vocoder_round_trip(waves, chunk=2)
    assert vocoded.shape == waves.shape and torch.isfinite(vocoded).all()
    assert not torch.allclose(vocoded, waves, atol=1e-3)  # the round trip changes the waveform (its phase)


@pytest.mark.slow
def test_an_ensemble_votes_with_its_judges_mean_log_probabilities_whatever_the_global_random_state():
    waves, labels = render_crops("test", 11, 1.0, per_clip=1, seed=5)
    torch.manual_seed(1)
    single = judge_from_renders(n_clips=11, seconds=1.0, steps=3, vocoded=1.0)
    torch.manual_seed(2)
    ensemble = judge_from_renders(n_clips=11, seconds=1.0, steps=3, vocoded=1.0, ensemble=3)
    assert isinstance(single, InstrumentClassifier) and single.members == [single]
    assert isinstance(ensemble, JudgeEnsemble) and len(ensemble.members) == 3
    with torch.no_grad():
        each = [member(waves) for member in ensemble.members]
        # The first member is the single judge (same seed, same renders, another global random state); the
        # others were trained with other seeds.
        assert torch.equal(each[0], single(waves)) and not torch.allclose(each[0], each[1])
        assert torch.allclose(ensemble(waves), torch.stack(each).mean(0))
    expected = [ensemble.labels[i] for i in torch.stack(each).mean(0).argmax(-1).tolist()]
    assert ensemble.predict(waves, chunk=4) == expected
    verdict, alone = ensemble.verdicts(waves, chunk=4)  # each member judging once serves both
    assert verdict == expected and alone == [member.predict(waves) for member in ensemble.members]
    assert single.verdicts(waves) == (single.predict(waves), [single.predict(waves)])
    report = judge_report(ensemble, waves, labels)
    hits = [p == t for p, t in zip(expected, labels)]
    assert report["accuracy"]["mean"] == np.mean(hits) and report["accuracy"]["count"] == 11
    assert report["by_instrument"] == {name: float(hit) for name, hit in zip(labels, hits)}
    assert sorted(labels) == sorted(world.INSTRUMENTS)  # one clip of each
    with pytest.raises(ValueError, match="ensemble must be at least 1"):
        judge_from_renders(n_clips=11, steps=1, ensemble=0)
    with pytest.raises(ValueError, match="the same labels"):
        JudgeEnsemble([single, InstrumentClassifier(["a", "b"])])


def test_wilson_interval_contains_the_fraction_and_narrows():
    small, large = proportion([True] * 8 + [False] * 2), proportion([True] * 80 + [False] * 20)
    assert small["low"] < 0.8 < small["high"] and large["low"] < 0.8 < large["high"]
    assert large["high"] - large["low"] < small["high"] - small["low"]
    assert np.isclose(proportion([True] * 5)["high"], 1.0) and proportion([True] * 5)["low"] > 0.5
    none = proportion([])
    assert none["count"] == 0 and all(np.isnan(none[key]) for key in ("mean", "low", "high"))


def test_the_judge_trains_on_sets_of_different_lengths_and_refuses_short_clips():
    judge = InstrumentClassifier(["a", "b"])
    long, short = torch.randn(2, 24000), torch.randn(2, 16000)
    judge.fit([long, short], ["a", "b", "a", "b"], crop=16000, steps=2)
    assert len(judge.predict(short)) == 2
    with pytest.raises(ValueError, match="crop=16000"):
        judge.fit([long, short[:, :8000]], ["a", "b", "a", "b"], crop=16000, steps=2)
    with pytest.raises(ValueError, match="one label per clip"):
        judge.fit([long, short], ["a", "b"], crop=16000, steps=2)
