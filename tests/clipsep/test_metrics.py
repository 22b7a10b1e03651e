"""The metrics against mir_eval and closed-form cases."""

import math

import mir_eval.separation
import numpy as np
import pytest

from clipsep.metrics import bss_eval, near_silent, separation_scores, si_sdr, summarize

# mir_eval 0.8 announces the removal of bss_eval_sources; it is only the reference here.
pytestmark = pytest.mark.filterwarnings("ignore:.*bss_eval_sources:FutureWarning")


def _signals(seed, length=8000):
    rng = np.random.default_rng(seed)
    t = np.arange(length) / 16000
    target = np.sin(2 * np.pi * 440 * t) * (1 + 0.3 * rng.standard_normal(length))
    interference = 0.7 * rng.standard_normal(length)
    return target, interference


def test_bss_eval_agrees_with_mir_eval():
    target, interference = _signals(0)
    refs = np.stack([target, interference])
    rng = np.random.default_rng(1)
    ests = np.stack([target + 0.3 * interference + 0.05 * rng.standard_normal(len(target)),
                     interference + 0.2 * target + 0.1 * rng.standard_normal(len(target))])
    ours = bss_eval(refs, ests)
    sdr, sir, sar, _ = mir_eval.separation.bss_eval_sources(refs, ests, compute_permutation=False)
    for mine, theirs in zip(ours, (sdr, sir, sar)):
        np.testing.assert_allclose(mine, theirs, atol=0.02)
    assert sir[0] > 5  # an estimate that is mostly target


def test_separation_scores_and_improvement():
    target, interference = _signals(2)
    mixture = target + interference
    estimate = target + 0.1 * interference
    scores = separation_scores(target[None], interference[None], estimate[None], mixture[None])
    refs = np.stack([target, interference])
    sdr, sir, sar, _ = mir_eval.separation.bss_eval_sources(refs, np.stack([estimate, mixture - estimate]), False)
    sdr_mix, *_ = mir_eval.separation.bss_eval_sources(refs, np.stack([mixture, mixture]), False)
    assert scores["sdr"][0] == pytest.approx(sdr[0], abs=0.02)
    assert scores["sir"][0] == pytest.approx(sir[0], abs=0.02)
    assert scores["sdr_mix"][0] == pytest.approx(sdr_mix[0], abs=0.02)
    assert scores["sdri"][0] == pytest.approx(sdr[0] - sdr_mix[0], abs=0.03)
    assert scores["sdri"][0] > 10
    # SI-SDR of target + 0.1 * interference: interference is nearly orthogonal to the target.
    expected = 10 * math.log10(np.sum(target**2) / np.sum((0.1 * interference) ** 2))
    assert scores["si_sdr"][0] == pytest.approx(expected, abs=0.2)


def test_si_sdr_is_scale_invariant_and_silence_is_nan():
    target, interference = _signals(3)
    estimate = target + 0.2 * interference
    assert si_sdr(target, 3 * estimate) == pytest.approx(si_sdr(target, estimate), abs=1e-9)
    silent = np.zeros_like(target)
    scores = separation_scores(np.stack([target, silent]), np.stack([interference, interference]),
                               np.stack([estimate, estimate]), np.stack([target + interference, interference]))
    assert np.isfinite(scores["sdr"][0]) and np.isnan(scores["sdr"][1]) and np.isnan(scores["si_sdri"][1])


def test_near_silent_is_energy_below_the_floor_relative_to_the_mixture():
    mixture = np.random.default_rng(0).normal(size=(4, 1000))
    estimate = mixture * np.array([[0.5], [0.04], [0.02], [0.0]])  # -6, -28, -34 dB and silence
    assert near_silent(estimate, mixture).tolist() == [False, False, True, True]
    assert near_silent(estimate, mixture, floor_db=-20.0).tolist() == [False, True, True, True]


def test_summarize():
    summary = summarize([1.0, 2.0, 3.0, np.nan, 10.0])
    assert summary["count"] == 4 and summary["median"] == 2.5 and summary["mean"] == 4.0
    assert summary["sem"] == pytest.approx(np.std([1, 2, 3, 10], ddof=1) / 2)
    # 95% t interval with 3 degrees of freedom: t = 3.182446
    assert summary["high"] - summary["mean"] == pytest.approx(3.182446 * summary["sem"], rel=1e-6)
    assert summary["mean"] - summary["low"] == pytest.approx(summary["high"] - summary["mean"])
    assert summarize([])["count"] == 0


def test_estimates_scored_together_equal_each_scored_alone():
    target, interference = _signals(4)
    mixture = target + interference
    rng = np.random.default_rng(5)
    kinds = [target + a * interference + 0.05 * rng.standard_normal(len(target)) for a in (0.1, 0.6)]
    kinds.append(np.zeros_like(target))  # a silent estimate: NaN, and no harm to the others
    together = separation_scores(target[None], interference[None], np.stack(kinds)[None], mixture[None])
    for k, estimate in enumerate(kinds):
        alone = separation_scores(target[None], interference[None], estimate[None], mixture[None])
        for key, value in alone.items():
            np.testing.assert_allclose(together[key][0, k], value[0], rtol=1e-9, atol=1e-9, err_msg=key)
    assert np.isfinite(together["sdri"][0, :2]).all() and np.isnan(together["sdri"][0, 2])
    assert together["sdri"][0, 0] > together["sdri"][0, 1]
    with pytest.raises(ValueError, match=r"\[B, K, S\]"):
        separation_scores(target[None], interference[None], np.stack(kinds), mixture[None])


def test_scores_are_finite_up_to_150_db_and_short_signals_are_refused():
    """A perfect estimate scored inf (then left out of every mean, its count too); mir_eval gives
    about 300 dB from float rounding. Signals shorter than the distortion filters gave a solver
    error or 150 dB."""
    target, interference = _signals(4)
    scores = separation_scores(target[None], interference[None], target[None], (target + interference)[None])
    assert scores["sdr"][0] == pytest.approx(150.0) and np.isfinite(scores["sar"][0])
    assert summarize(np.append(scores["sdr"], 3.0))["count"] == 2
    sdr, _, _ = bss_eval(np.stack([target, interference]), np.stack([target, -target]))  # the second: all wrong
    assert sdr[0] == pytest.approx(150.0) and sdr[1] >= -150.0
    for length in (1, 100, 511):
        with pytest.raises(ValueError, match=f"at least 512 samples .*got {length}"):
            bss_eval(np.ones((2, length)), np.ones((2, length)))


def test_grouped_summary_has_the_values_mean_and_the_groups_interval():
    """Two stems of each mixture that move against each other: the interval comes from the
    mixtures' means (over stems it was 2 to 3 times too wide); a NaN leaves its mixture the other stem."""
    from scipy import stats

    from clipsep.metrics import summarize_groups

    rng = np.random.default_rng(0)
    shared = rng.normal(3.0, 0.5, 20)
    split = rng.normal(0.0, 4.0, 20)
    values = np.stack([shared + split, shared - split], axis=1).ravel()  # mixture k: stems 2k and 2k + 1
    groups = np.arange(40) // 2
    result = summarize_groups(values, groups)
    low, high = stats.t.interval(0.95, 19, loc=values.mean(), scale=stats.sem(shared))
    assert result["mean"] == pytest.approx(values.mean()) and result["count"] == 40 and result["groups"] == 20
    assert (result["low"], result["high"]) == pytest.approx((low, high))
    over_stems = summarize(values)
    assert over_stems["high"] - over_stems["low"] > 3 * (result["high"] - result["low"])
    values[1] = np.nan
    assert summarize_groups(values, groups)["count"] == 39 and summarize_groups(values, groups)["groups"] == 20
    with pytest.raises(ValueError, match="40 values but 3 groups"):
        summarize_groups(np.zeros(40), [0, 1, 2])
