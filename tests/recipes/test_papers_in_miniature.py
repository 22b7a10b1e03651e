"""The papers' comparisons recipe: findings are derived from the numbers, and the tiny
profile runs end to end (slow) writing the page, its PNGs and results.json."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from recipes.experiments.papers_in_miniature import PROFILES
from recipes.experiments.results_page import VERDICTS, bootstrap_fad, findings

ROOT = Path(__file__).resolve().parents[2]


def _summary(mean: float, low: float, high: float, count: int = 30, per_seed: tuple = ()) -> dict:
    return {"mean": mean, "low": low, "high": high, "sem": 1.0, "median": mean, "count": count,
            "per_seed": list(per_seed or (mean, mean))}


def _results(sign: float) -> dict:
    """Every compared difference at ``sign`` x 2 with an interval of +-1, at both seeds (3 and 7)."""
    value = _summary(2 * sign, 2 * sign - 1, 2 * sign + 1)
    paired = {name: value for name in ("nit_text_minus_clipsep_text", "nit_image_minus_clipsep_image")}
    generation = {name: value for name in ("recognition_pd_minus_zs", "recognition_image_minus_zs", "fad_zs_minus_pd",
                                           "recognition_dpm_minus_ddim")}
    return {"paired": paired, "generation_paired": generation, "seeds": [3, 7]}


def test_findings_follow_the_numbers():
    good, bad = findings(_results(+1)), findings(_results(-1))
    assert len(good) == 6 and all(f["outcome"] == "holds" for f in good)
    assert all(f["outcome"] == "contradicted" for f in bad)
    assert all(f["statement"].startswith("Does not reproduce here") for f in bad)
    # Intervals across zero: the "above zero" findings are neither shown nor ruled out...
    straddle = findings(_results(0))
    assert [f["outcome"] for f in straddle[:5]] == ["not shown"] * 5
    assert all(f["statement"].startswith("Not shown here, nor ruled out") for f in straddle[:5])
    # ... and "no worse" holds while the interval's lower end stays above the margin (recognition
    # is a fraction: -0.03 is 3 points), is not shown across it, and fails wholly below it.
    dpm = _results(0)
    for low, high, outcome in ((-0.03, 0.03, "holds"), (-0.08, 0.03, "not shown"), (-0.12, -0.07, "contradicted")):
        dpm["generation_paired"]["recognition_dpm_minus_ddim"] = _summary((low + high) / 2, low, high)
        assert findings(dpm)[5]["outcome"] == outcome, (low, high)
    # An interval clear of the line is not enough: every seed's own difference must lie there too.
    for sign in (+1, -1):
        split = _results(sign)
        split["paired"]["nit_text_minus_clipsep_text"] = _summary(2 * sign, 2 * sign - 1, 2 * sign + 1,
                                                                  per_seed=(4.5 * sign, -0.5 * sign))
        first = findings(split)[0]
        assert first["outcome"] == "not shown" and "but seed 7's own difference does not" in first["statement"]
        assert f"seed 3 {4.5 * sign:+.2f} dB, seed 7 {-0.5 * sign:+.2f} dB" in first["measured"]
        assert [f["outcome"] for f in findings(split)[1:]] == [findings(_results(sign))[1]["outcome"]] * 5
    undefined = _results(1)
    undefined["paired"]["nit_text_minus_clipsep_text"] = _summary(3.0, float("nan"), float("nan"), count=1,
                                                                  per_seed=(3.0,))
    first = findings(undefined)[0]
    assert first["outcome"] == "not shown" and "no interval with 1 values" in first["statement"]


def test_fad_intervals_resample_the_generated_clips_in_pairs():
    torch.manual_seed(0)
    real = torch.randn(40, 2, 4, dtype=torch.float64)
    near = [torch.randn(30, 2, 4, dtype=torch.float64) for _ in range(2)]  # two seeds of 30 clips
    far = [1.2 * e for e in near]  # the same clips, spread wider: further from the real ones
    fad = bootstrap_fad({"near": near, "far": far}, real, {"far_minus_near": ("far", "near")})
    width = {key: fad[key]["high"] - fad[key]["low"] for key in fad}
    for key in fad:
        assert width[key] > 0 and fad[key]["count"] == 60 and len(fad[key]["per_seed"]) == 2
    difference = fad["far_minus_near"]
    assert difference["mean"] == pytest.approx(fad["far"]["mean"] - fad["near"]["mean"])
    assert 0 < difference["low"] < difference["mean"] < difference["high"]
    # Paired: each resample draws the same clip slots in both arms, so the difference's interval is
    # narrower than independent resamples would make it (about the root of the sum of squares).
    assert width["far_minus_near"] < 0.6 * (width["near"] ** 2 + width["far"] ** 2) ** 0.5


def test_the_full_profile_trains_clipsep_on_the_clips_the_page_was_made_with():
    # The quick start's CLIPSep learns from further clips (ed93580) mixed with distinct queries;
    # the results page's CLIPSep variants, made before, learn from the training split's first
    # clips, as CLIPSonic, mixed as they come (the papers' training).
    world = PROFILES["full"].world
    assert world.clipsep_train_clips in (None, world.train_clips)
    assert world.clipsep_distinct_queries is None


@pytest.mark.slow
def test_tiny_profile_writes_the_results_page(tmp_path):
    # The whole recipe at toy size (one seed, 8 optimizer steps per model): with two seeds it took 4.7 min on 2 idle
    # cores, most of it starting processes; one seed keeps the suite within its budget (intervals over seeds are
    # then undefined, and the findings say so: see the test above).
    out, docs = tmp_path / "run", tmp_path / "docs"
    result = subprocess.run(
        [sys.executable, str(ROOT / "recipes/experiments/papers_in_miniature.py"), "--profile", "tiny",
         "--out", str(out), "--docs", str(docs)], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    page = (docs / "results.md").read_text()
    for name in ("sdri_by_instrument.png", "generated_mels.png"):
        with Image.open(docs / "images" / "results" / name) as image:
            assert image.size[0] >= 800 and image.size[1] >= 300
        assert f"images/results/{name}" in page
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [1]
    for kind in ("clipsep_image", "clipsep_text", "nit_image", "nit_text", "label", "pit"):
        assert 0 < results["separation"][kind]["sdri"]["count"] <= 2 * results["mixtures"]  # sources
        assert results["separation"][kind]["seed_means"]["count"] == 1
    # The tiny profile's two judges vote; each alone is scored beside their verdict.
    assert results["judges"] == PROFILES["tiny"].world.judge_ensemble == 2
    for key in ("ddim_image", "ddim_zs", "ddim_pd", "dpm++_image", "dpm++_zs", "dpm++_pd"):
        generation = results["generation"][key]
        assert len(generation["fad"]["per_seed"]) == 1
        assert len(generation["single_judges"]) == 2 and all(0 <= r <= 1 for r in generation["single_judges"])
        low, high = (f"{100 * f(generation['single_judges']):.0f}" for f in (min, max))
        assert f" | {low} to {high}% | " in page
    assert "the timbre judges, 2 trained alike" in page
    # Every paired difference has its seed's own value, and the page shows it.
    for name, value in [*results["paired"].items(), *results["generation_paired"].items()]:
        assert len(value["per_seed"]) == 1, name
    assert "| each seed |" in page and "seed 1 " in page
    # Each finding on the page is the one its numbers give.
    assert [f["outcome"] for f in results["findings"]] == [f["outcome"] for f in findings(results)]
    for finding in results["findings"]:
        assert f"**{VERDICTS[finding['outcome']]}.** {finding['finding']}" in page
