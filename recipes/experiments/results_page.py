"""Scores of ``papers_in_miniature`` and its results page, with each paper's finding checked.

Intervals are 95%: separation pools the stems of every seed (the per-seed means beside it),
comparisons are paired stem by stem (or clip by clip for recognition: the same instrument,
sample and seed in both arms); Student's t over mixtures (or clips), each the mean of its
stems over every seed, which are correlated (:func:`clipsep.metrics.summarize_groups`;
the page in ``docs/`` was made before, with intervals over stems and clips). FAD, one distance per seed
and mode (the mean over seeds reported), gets a percentile bootstrap over the generated
clips (:data:`BOOTSTRAP` draws; the test clips it is measured against held fixed), and
the difference of two modes resamples the same clip slots in both. A resample repeats
clips, which raises FAD, so a mode's interval lies mostly above its point; in a
difference the two arms' rise largely cancels.

Every paired difference also carries ``per_seed``: each seed's own difference (its mean over
its stems or clips; for FAD, its distance difference). The pooled interval holds each trained
model fixed: it measures these models precisely and says nothing of another training, where
the seeds are what vary. So a finding holds when its interval lies on the paper's side of
zero (for "no worse", above :data:`NO_WORSE_MARGIN`) *and* every seed's own difference lies
on that side too; it does not reproduce when the interval lies wholly on the other side and
every seed's difference does too; otherwise it is not shown: the interval reaches both sides
of the line, or the seeds disagree. (The seed condition was set after the page made at
bfccf26, whose per-seed differences of NIT's SDRi and of FAD had been read, and before any
page with it.)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from clipcore.audio import load_audio
from clipcore.files import atomic_write
from clipcore.plots import mel_grid, sdri_bars
from clipsep.metrics import summarize, summarize_groups
from clipsonic.metrics import MelStatistics, embed_audio, frechet_distance, gaussian_statistics

__all__ = ["score", "bootstrap_fad", "findings", "write_page"]

SEPARATION = {"clipsep_image": "CLIPSep, image query", "clipsep_text": "CLIPSep, text query",
              "nit_image": "CLIPSep-NIT, image query", "nit_text": "CLIPSep-NIT, text query",
              "label": "LabelSep (learned label query)", "pit": "PIT (oracle assignment)"}
PAIRS = [("nit_text", "clipsep_text"), ("nit_image", "clipsep_image"), ("clipsep_text", "clipsep_image"),
         ("label", "clipsep_image"), ("pit", "clipsep_image")]
MODES = ("image", "zs", "pd")
SAMPLERS = ("ddim", "dpm++")
BOOTSTRAP = 1000
"""Resamples of the generated clips behind each FAD interval."""
NO_WORSE_MARGIN = 5.0
"""Recognition points by which one sampler may trail another and still count as no worse
(set after the page made at 5700d00, whose interval's lower end was -3.0, had been read)."""
VERDICTS = {"holds": "Holds", "contradicted": "Does not reproduce", "not shown": "Not shown"}
"""The page's word for each outcome of a finding."""


def _waves(paths: list[Path], samples: int) -> torch.Tensor:
    waves = [load_audio(path, sample_rate=16000, mono=True)[0][0] for path in paths]
    return torch.stack([torch.nn.functional.pad(w, (0, max(0, samples - len(w))))[:samples] for w in waves])


def bootstrap_fad(generated: dict[str, list[torch.Tensor]], real: torch.Tensor,
                   differences: dict[str, tuple[str, str]], seed: int = 0) -> dict[str, dict]:
    """FAD per key, and differences of two keys, with percentile bootstrap intervals.

    Args:
        generated: key -> per seed, the embeddings ``[N, K, D]`` of its N generated clips
            (N the same for every key of a seed, in the same instrument and sample order).
        real: the reference embeddings ``[M, K, D]``.
        differences: name -> (key a, key b), for FAD of a minus FAD of b.

    Returns:
        name -> ``summarize``'s fields (``mean``: the point estimate, mean over seeds;
        ``low``, ``high``: the 2.5 and 97.5 percentiles of :data:`BOOTSTRAP` resamples;
        ``sem``: their standard deviation; ``count``: the clips), plus ``per_seed``.
    """
    rng = np.random.default_rng(seed)
    reference = gaussian_statistics(real.flatten(0, 1))  # once, for every resample
    sizes = [len(e) for e in next(iter(generated.values()))]
    draws = [rng.integers(0, n, (BOOTSTRAP, n)) for n in sizes]  # shared by every key: paired differences

    def distances(embeddings: list[torch.Tensor]) -> tuple[list[float], np.ndarray]:
        point = [frechet_distance(e.flatten(0, 1), reference) for e in embeddings]
        resampled = np.mean([[frechet_distance(e[d].flatten(0, 1), reference) for d in draw]
                             for e, draw in zip(embeddings, draws)], axis=0)  # [BOOTSTRAP]: mean over seeds
        return point, resampled

    def summary(point: list[float], resampled: np.ndarray) -> dict:
        low, high = np.percentile(resampled, [2.5, 97.5])
        return {"mean": float(np.mean(point)), "sem": float(resampled.std(ddof=1)), "low": float(low),
                "high": float(high), "median": float(np.median(resampled)), "count": int(sum(sizes)),
                "per_seed": point}

    found = {key: distances(embeddings) for key, embeddings in generated.items()}
    out = {key: summary(*value) for key, value in found.items()}
    for name, (a, b) in differences.items():
        out[name] = summary(list(np.subtract(found[a][0], found[b][0])), found[a][1] - found[b][1])
    return out


def score(seeds: dict, queries, judge, test_clips: list, seconds: float) -> dict:
    """Separation and generation scores of every seed (see the module doc).

    Args:
        seeds: seed -> ``run_seed``'s outputs (``separated``: kind -> (folder, stem names);
            ``generated``: (sampler, mode) -> instrument -> files).
        queries: the test evaluation set; judge: the timbre judge (recognition is its verdict;
            each of its ``members`` alone is scored too); test_clips: the test split's clips
            (FAD's reference); seconds: generated clip length.
    """
    from recipes.miniature_eval import stem_scores
    from recipes.toy_judges import proportion

    separation, sdri = {}, {}
    scored = [stem_scores(queries, {kind: outputs["separated"][kind] for kind in SEPARATION}) for outputs in seeds.values()]
    for kind in SEPARATION:
        per_seed = [by_kind[kind][0] for by_kind in scored]
        sdri[kind] = [s["sdri"] for s in per_seed]
        labels = np.concatenate([s["labels"] for s in per_seed])
        pooled = np.concatenate(sdri[kind])
        separation[kind] = {"sdri": _pooled(sdri[kind], per_group=2),  # a mixture's two stems, every seed
                            "seed_means": summarize([np.nanmean(s) for s in sdri[kind]]),
                            "by_instrument": {name: summarize(pooled[labels == name]) for name in queries.instruments}}
    paired = {f"{a}_minus_{b}": _paired([x - y for x, y in zip(sdri[a], sdri[b])], per_group=2) for a, b in PAIRS}

    samples = round(seconds * 16000)
    reference = torch.stack(
        [torch.nn.functional.pad(torch.from_numpy(c.audio), (0, max(0, samples - len(c.audio))))[:samples]
         for c in test_clips])
    embedding = MelStatistics()
    hits, single, embedded = {}, {}, {}
    for sampler in SAMPLERS:
        for mode in MODES:
            key = f"{sampler}_{mode}"
            hits[key], single[key], embedded[key] = [], [[] for _ in judge.members], []
            for outputs in seeds.values():
                files = outputs["generated"][(sampler, mode)]
                paths = [path for name in files for path in files[name]]
                truth = [name for name in files for _ in files[name]]
                waves = _waves(paths, samples)
                verdict, members = judge.verdicts(waves)
                hits[key].append(np.equal(verdict, truth).astype(float))  # this seed's clips
                for alone, labels in zip(single[key], members):
                    alone += [p == t for p, t in zip(labels, truth)]
                embedded[key].append(embed_audio(embedding, waves, 16000))
    fad = bootstrap_fad(embedded, embed_audio(embedding, reference, 16000), {"fad_zs_minus_pd": ("ddim_zs", "ddim_pd")})
    generation = {key: {"recognition": proportion([bool(h) for h in np.concatenate(hits[key])]),
                        "single_judges": [float(np.mean(h)) for h in single[key]], "fad": fad[key]} for key in hits}

    def recognition_minus(a: list[str], b: list[str]) -> dict:
        """Clip by clip, recognised in key ``a[i]`` minus in ``b[i]``, the keys' clips of a seed side by side."""
        return _paired([np.concatenate([hits[x][k] - hits[y][k] for x, y in zip(a, b)]) for k in range(len(seeds))])

    differences = {
        "recognition_pd_minus_zs": recognition_minus(["ddim_pd"], ["ddim_zs"]),
        "recognition_image_minus_zs": recognition_minus(["ddim_image"], ["ddim_zs"]),
        "fad_zs_minus_pd": fad["fad_zs_minus_pd"],
        "recognition_dpm_minus_ddim": recognition_minus([f"dpm++_{m}" for m in MODES], [f"ddim_{m}" for m in MODES]),
    }
    return {"instruments": list(queries.instruments), "seeds": list(seeds), "mixtures": len(queries.mixtures),
            "judges": len(judge.members), "separation": separation,
            "paired": paired, "generation": generation, "generation_paired": differences}


def _pooled(per_seed: list[np.ndarray], per_group: int = 1) -> dict:
    """Values of every seed pooled (:func:`clipsep.metrics.summarize_groups`: the ``per_group``
    consecutive values of a seed, a mixture's stems or a clip, and the same ones of every
    other seed, are one group)."""
    groups = np.concatenate([np.arange(len(d)) // per_group for d in per_seed])
    return summarize_groups(np.concatenate(per_seed), groups)


def _paired(per_seed: list[np.ndarray], per_group: int = 1) -> dict:
    """Paired differences pooled over seeds (:func:`_pooled`), with ``per_seed``: each seed's mean."""
    return {**_pooled(per_seed, per_group), "per_seed": [float(np.nanmean(d)) for d in per_seed]}


def _interval(summary: dict, unit: str = "", scale: float = 1.0) -> str:
    mean, low, high = (summary[k] * scale for k in ("mean", "low", "high"))
    if not math.isfinite(low):
        return f"{mean:.2f}{unit} (interval undefined, n = {summary['count']})"
    return f"{mean:.2f}{unit} [{low:.2f}, {high:.2f}]"


def _each_seed(summary: dict, seeds: list, unit: str, scale: float) -> str:
    return ", ".join(f"seed {seed} {value * scale:+.2f}{unit}" for seed, value in zip(seeds, summary["per_seed"]))


def findings(results: dict) -> list[dict]:
    """Each paper's finding, what was measured, and its ``outcome`` here, from the numbers:
    ``holds``, ``contradicted`` or ``not shown`` (see the module doc: the pooled interval and
    every seed's own difference)."""
    paired, gen = results["paired"], results["generation_paired"]
    checks = [
        ("CLIPSep paper: noise-invariant training helps text queries when the training videos carry off-screen "
         "sound (CLIPSep-NIT above CLIPSep).", "SDRi, NIT minus CLIPSep, text queries", paired["nit_text_minus_clipsep_text"],
         " dB", "above"),
        ("CLIPSep paper: noise-invariant training also helps image queries.", "SDRi, NIT minus CLIPSep, image queries",
         paired["nit_image_minus_clipsep_image"], " dB", "above"),
        ("CLIPSonic paper: the diffusion prior closes the modality gap (prior mode recognised more often than "
         "zero-shot text).", "recognition, prior minus zero-shot (DDIM)", gen["recognition_pd_minus_zs"], "", "above"),
        ("CLIPSonic paper: zero-shot text falls short of image queries (the modality gap).",
         "recognition, image minus zero-shot (DDIM)", gen["recognition_image_minus_zs"], "", "above"),
        ("CLIPSonic paper: the prior lowers FAD against zero-shot text.", "FAD, zero-shot minus prior (DDIM)",
         gen["fad_zs_minus_pd"], "", "above"),
        ("DPM-Solver++ at 25 steps is no worse than DDIM at 200 steps.",
         "recognition, DPM-Solver++ minus DDIM, all modes", gen["recognition_dpm_minus_ddim"], "", "not below"),
    ]
    out = []
    for finding, measured, summary, unit, side in checks:
        scale, unit = (100.0, " points") if measured.startswith("recognition") else (1.0, unit)
        line = 0.0 if side == "above" else -NO_WORSE_MARGIN / scale
        where = "zero" if side == "above" else f"-{NO_WORSE_MARGIN:g}{unit}"
        low, high, per_seed = summary["low"], summary["high"], summary["per_seed"]
        each = "every seed's own difference" if len(per_seed) > 1 else "the seed's own difference"
        if not (math.isfinite(low) and math.isfinite(high)):
            outcome = "not shown"
            verdict = f"Not shown here: the {measured} has no interval with {summary['count']} values."
        elif low > line and all(value > line for value in per_seed):
            outcome = "holds"
            verdict = f"Reproduces: the 95% interval of the {measured} lies above {where}, and so does {each}."
        elif high < line and all(value < line for value in per_seed):
            outcome = "contradicted"
            verdict = (f"Does not reproduce here: the 95% interval of the {measured} lies wholly below {where}, and "
                       f"so does {each}.")
        elif low > line or high < line:
            outcome = "not shown"
            across = [f"seed {seed}'s" for seed, value in zip(results["seeds"], per_seed)
                      if not (value > line if low > line else value < line)]
            verdict = (f"Not shown here, nor ruled out: the 95% interval of the {measured} lies "
                       f"{'above' if low > line else 'wholly below'} {where}, but {' and '.join(across)} own "
                       "difference does not: the seeds disagree.")
        else:
            outcome = "not shown"
            verdict = (f"Not shown here, nor ruled out: the 95% interval of the {measured} reaches both sides "
                       f"of {where}.")
        out.append({"finding": finding, "outcome": outcome, "statement": verdict,
                    "measured": f"{measured}: {_interval(summary, unit, scale)}; "
                                f"{_each_seed(summary, results['seeds'], unit, scale)}"})
    return out


def _mels(seeds: dict, instruments: list[str], seconds: float) -> dict[str, torch.Tensor]:
    from clipcore.spectral import MelConfig, MelSpectrogram

    mel = MelSpectrogram(MelConfig())
    first = next(iter(seeds.values()))["generated"]
    samples = round(seconds * 16000)
    return {mode: mel(_waves([first[("ddim", mode)][name][0] for name in instruments], samples)) for mode in MODES}


def _judges_sentence(judges: int) -> str:
    if judges == 1:
        return "Recognition: how often one timbre judge (trained on training renders only) names the queried instrument."
    return (f"Recognition: how often the timbre judges, {judges} trained alike on training renders only (other "
            "seeds) and voting with their averaged log-probabilities, name the queried instrument. One judge's "
            "training randomness moves recognition by many points; the lowest and highest of the judges alone "
            "show by how much here.")


def write_page(results: dict, seeds: dict, docs: Path) -> Path:
    """``docs/results.md`` and its PNGs under ``docs/images/results/``; returns the page."""
    images = docs / "images" / "results"
    instruments = results["instruments"]
    sdri_bars({SEPARATION[k]: v["by_instrument"] for k, v in results["separation"].items()},
              images / "sdri_by_instrument.png", title="Test SDR improvement per instrument, all seeds pooled")
    shown = instruments[:4]
    seconds = results["run"]["profile"]["world"]["gen_seconds"]
    mel_grid(_mels(seeds, shown, seconds), images / "generated_mels.png", labels=shown,
             title=f"CLIPSonic, generated clips per query mode (seed {results['seeds'][0]}, DDIM)")
    checked = findings(results)
    results["findings"] = checked
    seeds_text = ", ".join(str(s) for s in results["seeds"])
    lines = [
        "# The papers in miniature: results", "",
        "Made by `python recipes/experiments/papers_in_miniature.py` "
        f"(profile `{results['run']['name']}`, seeds {seeds_text}, "
        f"{results['run']['seconds'].get('total', 0) / 60:.0f} minutes on 2 CPU cores, commit "
        f"{(results['run'].get('commit') or 'unknown')[:7]}). Every choice (checkpoints by validation "
        "SDR improvement, CLIPSonic's guidance by validation recognition) was made on the validation split; every figure "
        "below is on the test split. Brackets are 95% intervals (FAD's: a bootstrap over the generated clips); they "
        "pool the stems or clips of every seed (Student's t over mixtures or clips, whose stems and seeds are "
        "correlated) and hold each trained model fixed, so they say how precisely these "
        "models were measured, not how another training would come out. So a finding holds (or does not reproduce) "
        "only when its interval lies on one side of the line it must clear *and* every seed's own difference lies "
        "there too; it is **not shown** when the interval reaches both sides, or when the seeds disagree: the data "
        "neither show it nor rule it out.", "",
        "## Findings", "",
        *[f"- **{VERDICTS[f['outcome']]}.** {f['finding']} {f['statement']} "
          f"({f['measured']})" for f in checked], "",
        "## Separation (SDR improvement, dB)", "",
        "| system | SDRi, stems of all seeds | mean over seeds | stems |", "|---|---|---|---|",
        *[f"| {SEPARATION[k]} | {_interval(v['sdri'])} | {_interval(v['seed_means'])} | {v['sdri']['count']} |"
          for k, v in results["separation"].items()], "",
        "| paired difference (stem by stem) | dB | each seed |", "|---|---|---|",
        *[f"| {name.replace('_minus_', ' minus ')} | {_interval(v)} | {_each_seed(v, results['seeds'], '', 1.0)} |"
          for name, v in results["paired"].items()], "",
        "![SDR improvement per instrument](images/results/sdri_by_instrument.png)", "",
        "| instrument | " + " | ".join(SEPARATION[k] for k in results["separation"]) + " |",
        "|---|" + "---|" * len(results["separation"]),
        *[f"| {name} | " + " | ".join(_interval(v["by_instrument"][name]) for v in results["separation"].values()) + " |"
          for name in instruments], "",
        "## Generation (CLIPSonic)", "",
        _judges_sentence(results["judges"]), "",
        "| sampler, mode | recognition | each judge alone | FAD (mel statistics) |", "|---|---|---|---|",
        *[f"| {key.replace('_', ', ')} | {_interval(v['recognition'], '%', 100)} | "
          f"{100 * min(v['single_judges']):.0f} to {100 * max(v['single_judges']):.0f}% | {_interval(v['fad'])} |"
          for key, v in results["generation"].items()], "",
        "| paired difference | value | each seed |", "|---|---|---|",
        *[f"| {name.replace('_', ' ')} | {_interval(v, *scaled)} | {_each_seed(v, results['seeds'], *scaled)} |"
          for name, v in results["generation_paired"].items()
          for scaled in [(" points", 100.0) if name.startswith("recognition") else ("", 1.0)]], "",
        "![Generated clips per mode](images/results/generated_mels.png)", "",
    ]
    return atomic_write(docs / "results.md", lambda tmp: tmp.write_text("\n".join(lines)))
