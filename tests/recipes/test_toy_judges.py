"""The timbre judge of the miniature MUSIC world: trained on training renders only, it
names instruments of the test split, even played out of their usual register."""

import numpy as np
import pytest

from clipcore.miniature import world
from recipes.toy_judges import judge_from_renders, judge_report, proportion, render_crops


@pytest.fixture(scope="module")
def judge():
    return judge_from_renders(n_clips=88, seconds=1.0, per_clip=2)


def test_the_judge_names_clean_test_renders(judge):
    report = judge_report(judge, *render_crops("test", 44, 1.0, per_clip=2, seed=1))
    # 88 crops, 11 instruments: a judge at chance (1/11) reaches 60% with probability < 1e-30.
    assert report["accuracy"]["mean"] >= 0.6, report
    assert set(report["by_instrument"]) == set(world.INSTRUMENTS)


def test_the_judge_beats_chance_on_pitch_shifted_renders(judge):
    """Test renders moved 7 semitones up or down, out of the training melodies' register:
    a register detector would fail here; timbre still tells."""
    waves, labels = render_crops("test", 44, 1.0, per_clip=2, seed=2, transpose=7)
    report = judge_report(judge, waves, labels)
    # At chance (1/11) 88 crops reach 35% with probability < 1e-8.
    assert report["accuracy"]["mean"] >= 0.35, report


def test_wilson_interval_contains_the_fraction_and_narrows():
    small, large = proportion([True] * 8 + [False] * 2), proportion([True] * 80 + [False] * 20)
    assert small["low"] < 0.8 < small["high"] and large["low"] < 0.8 < large["high"]
    assert large["high"] - large["low"] < small["high"] - small["low"]
    assert np.isclose(proportion([True] * 5)["high"], 1.0) and proportion([True] * 5)["low"] > 0.5
