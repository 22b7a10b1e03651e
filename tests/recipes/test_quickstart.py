"""The quick start at CI size, in one subprocess exactly as ``make demo`` runs it
(``--profile ci``: fewer clips and steps): videos of the miniature MUSIC world -> shards ->
CLIP alignment -> CLIPSep, prior and CLIPSonic training -> validation choices ->
``clipsep separate`` and ``clipsonic generate`` on the test split -> report.

The floors are set so that output that ignores the query passes them with probability
below 1%:
- Separation: an estimate that does not depend on the query (the mixture itself scores
  exactly 0 dB) has a mean SDR improvement of at most about 0 dB over a mixture's two
  stems. The floor is a one-sided t-test at 1%: the mean minus ``t(0.99, n-1)`` standard
  errors must exceed 0 dB, for image queries and for zero-shot text queries.
- Generation: when clips do not depend on the query, the judge names the queried
  instrument with probability 1/11 whatever its biases (averaged over the eleven
  queries), so the hits among the CI profile's 22 clips per mode follow Binomial(22, 1/11).
  The floor, 7 hits, is passed by such output with probability 0.26%.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from scipy.stats import binom, t

from clipcore.miniature import world

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # the whole quick start in one subprocess: minutes


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart") / "run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "quickstart.py"), "--profile", "ci", "--out", str(out)],
        capture_output=True, text=True, timeout=1500,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    return out, result.stdout, json.loads((out / "report.json").read_text())


def test_report_has_the_documented_keys_and_is_printed(quickstart):
    out, stdout, report = quickstart
    assert report["world"]["instruments"] == list(world.INSTRUMENTS)
    assert set(report["clip"]) >= {"matching_cosine", "mismatched_cosine", "retrieval_heldout_prompts"}
    means = {"clipsep": ["sdri_image_db", "sdri_text_db", "sdri_text_prior_db", "sdri_text_minus_image_db"],
             "clipsonic": ["judge_accuracy_real", "recognition_image", "recognition_zs", "recognition_pd"]}
    for system, keys in means.items():
        for key in keys:
            low, high = report[system][f"{key}_ci95"]
            assert low <= report[system][key] <= high, key
    assert "sdri_text_min_instrument_db" in report["clipsep"]
    for kind in ("image", "text", "text_prior"):
        assert set(report["clipsep"]["sdri_by_instrument_db"][kind]) == set(world.INSTRUMENTS)
    assert "quick start report" in stdout and f"{report['clipsep']['sdri_image_db']:6.2f} dB" in stdout


def test_every_part_is_written_where_the_readme_says(quickstart):
    out, _, _ = quickstart
    for checkpoint in ("query_encoder", "clipsep/best", "prior", "clipsonic"):
        assert (out / checkpoint / "config.json").is_file(), checkpoint
        assert (out / checkpoint / "model.safetensors").is_file(), checkpoint
    mixtures = sorted((out / "test" / "mixtures").glob("*.wav"))
    for kind in ("image", "text", "text_prior"):
        assert mixtures and all((out / "separated" / kind / m.stem / "separation.json").is_file() for m in mixtures)
    record = json.loads((out / "separated" / "text_prior" / mixtures[0].stem / "separation.json").read_text())
    assert record["settings"]["prior"]["path"] == str((out / "prior").resolve())
    assert record["settings"]["templates"] == list(world.HELDOUT_TEMPLATES)  # prompts never aligned on
    for mode in ("image", "zs", "pd"):
        assert len(list((out / "generated" / mode).glob("*.wav"))) == 2 * len(world.INSTRUMENTS), mode


def _passes_one_sided_test(summary: dict) -> bool:
    """Mean SDRi above 0 dB at the 1% level (one-sided t-test)."""
    return summary["mean"] - t.ppf(0.99, summary["count"] - 1) * summary["sem"] > 0


def test_separation_with_image_and_zero_shot_text_queries_beats_query_blind_output(quickstart):
    out, _, _ = quickstart
    separation = json.loads((out / "details.json").read_text())["separation"]
    assert separation["image"]["sdri"]["count"] >= 40
    assert _passes_one_sided_test(separation["image"]["sdri"]), separation["image"]["sdri"]
    assert _passes_one_sided_test(separation["text"]["sdri"]), separation["text"]["sdri"]  # zero-shot


def test_generated_sounds_are_recognised_above_chance(quickstart):
    _, _, report = quickstart
    sonic = report["clipsonic"]
    assert sonic["judge_accuracy_real"] >= 0.6  # the judge itself knows the instruments (CI size: 110 renders)
    clips, floor = sonic["clips_per_mode"], 7
    assert clips == 22 and binom.sf(floor - 1, clips, 1 / 11) < 0.01
    for mode in ("image", "pd"):
        assert round(sonic[f"recognition_{mode}"] * clips) >= floor, mode
