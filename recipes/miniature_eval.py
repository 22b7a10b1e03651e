"""How the quick start and the experiments score their outputs on clips of one split.

- Separation: clips of two different instruments are mixed (each at half level) and
  written as WAV files; for each mixture and each instrument in it, the stems that
  ``clipsep separate`` wrote for each kind of query (an image: a frame of another clip of
  that instrument; text: the instrument's name in prompts never seen in alignment; text
  through the diffusion prior) are scored by BSS-Eval SDR improvement over the mixture
  (``clipsep.metrics.separation_scores``). Every mean carries its 95% interval
  (Student's t; over mixtures, each the mean of its two stems, whose scores are correlated:
  in a CI-sized run at -0.8 to -0.9, which made intervals over stems 2 to 3 times too wide),
  every kind a per-instrument table (stems of distinct mixtures, over stems), and kinds are
  compared stem by stem (the paired difference, its interval over mixtures too). Stems of queries for instruments absent
  from a mixture should be near silence: their energy relative to the mixture is
  reported too.
- Generation: the timbre judge (:class:`recipes.toy_judges.Judge`: one classifier or an
  ensemble, trained on training renders only) names the instrument of each clip
  ``clipsonic generate`` wrote; recognition is the fraction named as the queried
  instrument, with its 95% Wilson interval, overall and per instrument.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from webdataset.tariterators import tarfile_samples

from clipcore.audio import load_audio, save_audio
from clipcore.shards import expand_shards
from clipsep.metrics import separation_scores, summarize, summarize_groups
from recipes.toy_judges import Judge, proportion

__all__ = ["Clip", "Queries", "read_clips", "write_queries", "stem_scores", "evaluate_separation", "evaluate_generation"]


@dataclass
class Clip:
    """A clip read from shards: its label, mono audio ``[S]`` and middle frame (JPEG bytes)."""

    key: str
    label: str
    audio: np.ndarray
    sample_rate: int
    frame_jpeg: bytes


@dataclass
class Queries:
    """An evaluation set as written to disk.

    Attributes:
        instruments: the instruments queried, in the world's order.
        images: query image file per instrument (a frame of a clip used in no mixture).
        mixtures: ``(mixture file, [(label, source [S]) x 2])`` per mixture; the file holds
            the sum of the two sources.
        sample_rate: the rate of mixtures and sources.
    """

    instruments: list[str]
    images: dict[str, Path]
    mixtures: list[tuple[Path, list[tuple[str, np.ndarray]]]] = field(default_factory=list)
    sample_rate: int = 16000


def read_clips(shards: str) -> list[Clip]:
    """Every labelled clip of the shards, ordered by key (the world's clip order)."""
    clips = []
    for sample in tarfile_samples([{"url": url} for url in expand_shards(shards)]):
        meta = json.loads(sample["json"])
        frames = sorted((k for k in sample if k.endswith(".jpg") and k[:-4].isdigit()), key=lambda k: int(k[:-4]))
        audio, rate = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
        if meta.get("label") and frames:
            clips.append(Clip(sample["__key__"], meta["label"], audio, rate, sample[frames[len(frames) // 2]]))
    return sorted(clips, key=lambda clip: clip.key)


def write_queries(clips: list[Clip], folder: Path, instruments: list[str]) -> Queries:
    """Write the query images and the mixtures of an evaluation set into ``folder``.

    The first clip of each instrument gives its query image; the others, in a fixed
    random order, are each paired with the next clip of another instrument to make mixtures.

    Args:
        clips: the split's clips; instruments: the world's instruments, in order.
    """
    present = [name for name in instruments if any(c.label == name for c in clips)]
    images, rest = {}, []
    for clip in clips:
        if clip.label not in images:
            images[clip.label] = folder / "queries" / f"{clip.label.replace(' ', '-')}.jpg"
            images[clip.label].parent.mkdir(parents=True, exist_ok=True)
            images[clip.label].write_bytes(clip.frame_jpeg)
        else:
            rest.append(clip)
    rest = [rest[i] for i in np.random.default_rng(0).permutation(len(rest))]
    queries = Queries(present, images, sample_rate=clips[0].sample_rate)
    while len(rest) >= 2:
        first = rest.pop(0)
        partner = next((c for c in rest if c.label != first.label), None)
        if partner is None:
            break
        rest.remove(partner)
        length = min(len(first.audio), len(partner.audio))
        sources = [(c.label, 0.5 * c.audio[:length]) for c in (first, partner)]
        names = "-".join(c.label.replace(" ", "-") for c in (first, partner))
        path = folder / "mixtures" / f"mix{len(queries.mixtures):03d}-{names}.wav"
        save_audio(path, torch.from_numpy(sources[0][1] + sources[1][1])[None], queries.sample_rate, bit_depth="32f")
        queries.mixtures.append((path, sources))
    return queries


def stem_scores(queries: Queries, runs: dict[str, tuple[Path, dict[str, str]]]) -> dict[str, tuple[dict, list[float]]]:
    """Scores of the stems that several runs of ``clipsep separate`` wrote, computed together.

    Args:
        queries: the evaluation set.
        runs: kind -> (the folder the run wrote, ``<folder>/<mixture>/<stem>.wav``;
            instrument -> stem name in it).

    Returns:
        Per kind: ``labels`` and the ``separation_scores`` arrays, one entry per (mixture,
        source) in the order of ``queries.mixtures``; and the energy (dB re the mixture) of
        each stem written for an instrument absent from its mixture.
    """
    labels, targets, others, mixtures = [], [], [], []
    estimates: dict[str, list[np.ndarray]] = {kind: [] for kind in runs}
    absent: dict[str, list[float]] = {kind: [] for kind in runs}
    for path, sources in queries.mixtures:
        mixture = sources[0][1] + sources[1][1]
        for kind, (separated, stem_of) in runs.items():

            def stem(label: str) -> np.ndarray:
                wave, _ = load_audio(separated / path.stem / f"{stem_of[label]}.wav", mono=True)
                return wave[0].numpy()[: len(mixture)]

            estimates[kind] += [stem(label) for label, _ in sources]
            for label in sorted(set(queries.instruments) - {label for label, _ in sources}):
                if not (separated / path.stem / f"{stem_of.get(label)}.wav").exists():
                    continue  # a query-free system (PIT) writes stems of the sources only
                energy = (stem(label) ** 2).sum() / max((mixture**2).sum(), 1e-12)
                absent[kind].append(float(10 * np.log10(energy + 1e-12)))
        for index, (label, target) in enumerate(sources):
            labels.append(label)
            targets.append(target)
            others.append(sources[1 - index][1])
            mixtures.append(mixture)
    stacked = np.stack([np.stack(estimates[kind]) for kind in runs], axis=1)  # [stems, kinds, S]
    scores = separation_scores(np.stack(targets), np.stack(others), stacked, np.stack(mixtures))
    return {kind: ({"labels": labels, **{key: value[:, k] for key, value in scores.items()}}, absent[kind])
            for k, kind in enumerate(runs)}


def evaluate_separation(queries: Queries, runs: dict[str, tuple[Path, dict[str, str]]]) -> dict:
    """Score several kinds of query (see the module doc).

    Args:
        queries: the evaluation set.
        runs: kind (``"image"``, ``"text"``, ...) -> (the folder ``clipsep separate`` wrote,
            instrument -> stem name in it).

    Returns:
        Per kind: ``sdri`` and ``sdr`` summaries (mean, 95% interval, median, count),
        ``sdri_by_instrument`` (a summary per instrument), ``min_instrument`` and
        ``absent_query_energy_db``; ``paired``: ``"<a>_minus_<b>"`` summaries of the
        stem-by-stem SDRi differences between kinds; ``mixtures``.
    """
    result: dict = {"mixtures": len(queries.mixtures)}
    mixture = np.arange(2 * len(queries.mixtures)) // 2  # of each stem: every kind's stems are each mixture's two in turn
    sdri = {}
    for kind, (scores, absent) in stem_scores(queries, runs).items():
        labels = np.array(scores["labels"])
        sdri[kind] = scores["sdri"]
        by_instrument = {name: summarize(scores["sdri"][labels == name]) for name in queries.instruments}
        scored = [name for name in queries.instruments if by_instrument[name]["count"]] or list(queries.instruments)
        worst = min(scored, key=lambda name: by_instrument[name]["mean"])  # NaN (no stem) would rank by order
        result[kind] = {"sdri": summarize_groups(scores["sdri"], mixture),
                        "sdr": summarize_groups(scores["sdr"], mixture),
                        "sdri_by_instrument": by_instrument,
                        "min_instrument": {"instrument": worst, **by_instrument[worst]},
                        "absent_query_energy_db": summarize(absent)}
    kinds = list(runs)
    result["paired"] = {f"{a}_minus_{b}": summarize_groups(sdri[a] - sdri[b], mixture)
                        for i, a in enumerate(kinds) for b in kinds[:i]}
    return result


def evaluate_generation(judge: Judge, generated: dict[str, dict[str, list[Path]]], seconds: float,
                        sample_rate: int = 16000) -> dict:
    """Recognition of the queried instrument in generated clips.

    Args:
        judge: the timbre judge.
        generated: mode -> instrument -> the files generated for it.
        seconds: the length judged (clips are cut or padded to it).

    Returns:
        Per mode: ``recognition`` (mean, 95% Wilson interval, count), ``by_instrument``
        (recognition per instrument) and ``predicted`` (the judge's verdicts per instrument).
    """
    samples = round(seconds * sample_rate)
    result = {}
    for mode, files in generated.items():
        waves, truth = [], []
        for name, paths in files.items():
            for path in paths:
                wave, _ = load_audio(path, sample_rate=sample_rate, mono=True)
                waves.append(torch.nn.functional.pad(wave[0], (0, max(0, samples - wave.shape[-1])))[:samples])
                truth.append(name)
        predicted = judge.predict(torch.stack(waves))
        hits = [p == t for p, t in zip(predicted, truth)]
        result[mode] = {
            "recognition": proportion(hits),
            "by_instrument": {name: proportion([h for h, t in zip(hits, truth) if t == name]) for name in files},
            "predicted": {name: [p for p, t in zip(predicted, truth) if t == name] for name in files},
        }
    return result
