"""The quick start's report: ``report.json`` (the figures), ``details.json`` (all behind them).

Every mean in ``report.json`` has its 95% interval beside it, as ``<key>_ci95``:
Student's t for SDR improvements (and for their stem-by-stem paired differences) over
mixtures (each the mean of its two stems; per-instrument tables over stems), Wilson score
intervals for proportions (accuracy, recognition). All figures are on the test split.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from clipcore.files import write_json
from clipcore.miniature import world

__all__ = ["clip_facts", "judge_facts", "write_report", "print_report"]


def clip_facts(encoder_dir: Path, queries, shards: str) -> dict[str, float]:
    """The aligned CLIP's modality gap and retrieval with held-out prompts, on the frames of
    the test shards (``recipes.align_toy_clip.gap_facts``)."""
    from clipcore.query import QueryEncoder
    from recipes.align_toy_clip import gap_facts, read_frames

    encoder = QueryEncoder.load(encoder_dir)
    frames, labels = read_frames(shards)
    return gap_facts(encoder, frames, labels, list(queries.instruments), world.HELDOUT_TEMPLATES)


TRANSPOSE = 7
"""Semitones by which :func:`judge_facts` moves test renders out of their register."""


def judge_facts(judge, train_clips: int, seconds: float, offscreen: float) -> dict:
    """The timbre judge's accuracy on test renders of the instrument alone (as many clips as
    it was trained on of each kind), under ``offscreen`` in ``"offscreen"``, and those through
    the vocoder's round trip in ``"vocoded"`` (the first of each clip's crops): the ceiling of
    recognition for a generator that renders its training videos' sound perfectly. In
    ``"transposed"``, one crop of each clip moved :data:`TRANSPOSE` semitones up or down, out of
    the training melodies' register: a judge of register, not timbre, would fail there."""
    from recipes.toy_judges import judge_report, render_crops, vocoder_round_trip

    waves, labels = render_crops("test", train_clips, seconds, per_clip=3, seed=1, offscreen=offscreen)
    moved = render_crops("test", train_clips, seconds, per_clip=1, seed=2, transpose=TRANSPOSE)
    return {"train_clips": train_clips, "seconds": seconds,
            **judge_report(judge, *render_crops("test", train_clips, seconds, per_clip=3, seed=1)),
            "offscreen": {"level": offscreen, **judge_report(judge, waves, labels)},
            "vocoded": {"level": offscreen, **judge_report(judge, vocoder_round_trip(waves[::3]), labels[::3])},
            "transposed": {"semitones": TRANSPOSE, **judge_report(judge, *moved)}}


def _value(x: float) -> float | None:
    """Rounded for the report; None where there is no value (an interval from one stem)."""
    return round(x, 4) if math.isfinite(x) else None


def _mean(summary: dict, key: str) -> dict[str, Any]:
    """``{key: mean, key_ci95: [low, high]}`` of a summary."""
    return {key: _value(summary["mean"]), f"{key}_ci95": [_value(summary["low"]), _value(summary["high"])]}


def _table(by_name: dict[str, dict]) -> dict[str, dict[str, Any]]:
    return {name: {**_mean(s, "mean"), "count": s["count"]} for name, s in by_name.items()}


def build_report(facts: dict, separation: dict, generation: dict) -> dict:
    """The figures of ``report.json`` (see the module doc)."""
    clip, judge = facts["clip"], facts["judge"]
    sdri = {"image": "sdri_image_db", "text": "sdri_text_db", "text_prior": "sdri_text_prior_db",
            "text_gap": "sdri_text_gap_db"}
    crossed = separation["text_gap"]["min_instrument"]
    worst = separation["text"]["min_instrument"]
    clipsep = {k: v for kind, key in sdri.items() for k, v in _mean(separation[kind]["sdri"], key).items()}
    clipsep.update({
        "sdri_text_min_instrument_db": _value(worst["mean"]),
        "sdri_text_min_instrument": worst["instrument"],
        **_mean(separation["paired"]["text_minus_image"], "sdri_text_minus_image_db"),
        **_mean(separation["paired"]["text_prior_minus_text"], "sdri_text_prior_minus_text_db"),
        **_mean(separation["paired"]["text_gap_minus_text"], "sdri_text_gap_minus_text_db"),
        "sdri_text_gap_min_instrument_db": _value(crossed["mean"]),
        "sdri_text_gap_min_instrument": crossed["instrument"],
        "sdri_by_instrument_db": {kind: _table(separation[kind]["sdri_by_instrument"]) for kind in sdri},
        "stems_per_kind": separation["image"]["sdri"]["count"],
        "mixtures": separation["mixtures"],
    })
    clipsonic = {**_mean(judge["accuracy"], "judge_accuracy_real"),
                 **_mean(judge["offscreen"]["accuracy"], "judge_accuracy_offscreen"),
                 **_mean(judge["vocoded"]["accuracy"], "judge_accuracy_vocoded"),
                 **_mean(judge["transposed"]["accuracy"], "judge_accuracy_transposed")}
    for mode in ("image", "zs", "pd"):
        clipsonic.update(_mean(generation[mode]["recognition"], f"recognition_{mode}"))
    clipsonic.update({
        "recognition_by_instrument": {mode: _table(generation[mode]["by_instrument"]) for mode in generation},
        "clips_per_mode": generation["image"]["recognition"]["count"],
        "guidance_chosen_on_validation": facts["guidance"]["chosen"],
        "chance": round(1 / len(world.INSTRUMENTS), 4),
    })
    return {
        "split": "test",
        "world": {"instruments": list(world.INSTRUMENTS), "split_seeds": dict(world.SPLITS)},
        "clip": {key: round(clip[key], 4) for key in ("matching_cosine", "mismatched_cosine",
                                                      "retrieval_heldout_prompts", "centroid_cosine")},
        "clipsep": clipsep,
        "clipsonic": clipsonic,
    }


def write_report(out: Path, facts: dict, found: dict, run: dict) -> dict:
    """Write ``report.json`` and ``details.json``; returns the report."""
    report = build_report(facts, found["separation"], found["generation"])
    details = {**run, **facts, "separation": found["separation"], "generation": found["generation"]}
    for name, content in (("report.json", report), ("details.json", details)):
        write_json(out / name, content)  # standard JSON: an interval of one value is null, not NaN
    return report


def _ci(report: dict, key: str, scale: float = 1.0, unit: str = " dB") -> str:
    low, high = report[f"{key}_ci95"]
    fmt = "{:6.2f}" if unit == " dB" else "{:6.0%}"
    return (fmt.format(report[key] * scale) + unit + "  [" + fmt.format(low * scale).strip() + ", "
            + fmt.format(high * scale).strip() + "]")


def print_report(report: dict, seconds: float, out: Path) -> None:
    """The short report on the terminal."""
    sep, sonic, clip = report["clipsep"], report["clipsonic"], report["clip"]
    n = len(report["world"]["instruments"])
    print(f"""
========= quick start report: the miniature MUSIC world ({n} instruments), test split =========
The toy CLIP: matching image-text cosine {clip['matching_cosine']:.2f} (real CLIP: about 0.3), mismatched \
{clip['mismatched_cosine']:.2f}; retrieval with held-out prompts {clip['retrieval_heldout_prompts']:.0%}.
CLIPSep, trained with image queries only, on {sep['stems_per_kind']} stems of two-instrument mixtures \
(mean, 95% interval):
  SDR improvement, image query                     {_ci(sep, 'sdri_image_db')}   (goal >= 6 dB)
  SDR improvement, text query (zero-shot)          {_ci(sep, 'sdri_text_db')}   (goal >= 4 dB)
  SDR improvement, text query through the prior    {_ci(sep, 'sdri_text_prior_db')}
  SDR improvement, text carried across the gap     {_ci(sep, 'sdri_text_gap_db')}
  text minus image, stem by stem                   {_ci(sep, 'sdri_text_minus_image_db')}
  worst instrument with text: {sep['sdri_text_min_instrument']:<20} {sep['sdri_text_min_instrument_db']:6.2f} dB  \
(goal >= 1 dB)
  worst instrument across the gap: {sep['sdri_text_gap_min_instrument']:<15} {sep['sdri_text_gap_min_instrument_db']:6.2f} dB
CLIPSonic; a timbre judge trained on training renders (accuracy on test renders \
{_ci(sonic, 'judge_accuracy_real', unit='').strip()}, with off-screen sound \
{_ci(sonic, 'judge_accuracy_offscreen', unit='').strip()}, that through the vocoder \
{_ci(sonic, 'judge_accuracy_vocoded', unit='').strip()}, and moved {TRANSPOSE} semitones \
{_ci(sonic, 'judge_accuracy_transposed', unit='').strip()}) names the instrument of {sonic['clips_per_mode']} generated clips \
per mode:
  image query                                      {_ci(sonic, 'recognition_image', unit='')}   (goal >= 70%)
  text query, zero-shot                            {_ci(sonic, 'recognition_zs', unit='')}
  text query through the diffusion prior           {_ci(sonic, 'recognition_pd', unit='')}   (goal >= 50%)
  chance                                           {sonic['chance']:6.0%}
Wall time: {seconds / 60:.1f} min. Everything is under {out}/: report.json (per-instrument tables), details.json,
query_encoder/, clipsep/, prior/, clipsonic/, separated/, generated/, logs/.""", flush=True)
