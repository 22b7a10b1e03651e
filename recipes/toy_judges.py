"""How the quick start scores its outputs on held-out toy clips.

- Separation: held-out clips of two different instruments are mixed (each at half
  level) and written as WAV files; for each mixture and each instrument in it, the stems
  that ``clipsep separate`` wrote for the text query ``"playing the <instrument>"`` and
  for the image query (a held-out frame of that instrument) are scored by BSS-Eval SDR
  improvement over the mixture (``clipsep.metrics.separation_scores``). Stems of queries
  for instruments absent from a mixture should be near silence: their energy relative
  to the mixture is reported too.
- Generation: a small timbre classifier trained on real toy audio (cepstral statistics,
  an ensemble of two-layer perceptrons; :class:`InstrumentClassifier`) names the
  instrument of each clip ``clipsonic generate`` wrote; recognition is the fraction named
  as the queried instrument. Its accuracy on real held-out audio is reported beside it.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch import nn
from webdataset.tariterators import tarfile_samples

from clipcore import synthetic
from clipcore.audio import load_audio, save_audio
from clipcore.shards import expand_shards
from clipcore.spectral import MelConfig, MelSpectrogram
from clipsep.metrics import separation_scores, summarize

__all__ = ["Clip", "Queries", "read_clips", "write_queries", "evaluate_separation", "InstrumentClassifier",
           "train_judge", "render_crops", "judge_from_renders", "proportion", "judge_report", "evaluate_generation"]

TEXT_QUERY = "playing the {}"


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
    """The held-out evaluation set as written to disk.

    Attributes:
        instruments: the instruments queried, in the toy world's order.
        text: text query per instrument; images: query image file per instrument.
        mixtures: ``(mixture file, [(label, source [S]) x 2])`` per mixture; the file holds
            the sum of the two sources.
        sample_rate: the rate of mixtures and sources.
    """

    instruments: list[str]
    text: dict[str, str]
    images: dict[str, Path]
    mixtures: list[tuple[Path, list[tuple[str, np.ndarray]]]] = field(default_factory=list)
    sample_rate: int = 16000


def read_clips(shards: str) -> list[Clip]:
    """Every labelled clip of the shards, ordered by key (the toy world's clip order)."""
    clips = []
    for sample in tarfile_samples([{"url": url} for url in expand_shards(shards)]):
        meta = json.loads(sample["json"])
        frames = sorted((k for k in sample if k.endswith(".jpg") and k[:-4].isdigit()), key=lambda k: int(k[:-4]))
        audio, rate = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
        if meta.get("label") and frames:
            clips.append(Clip(sample["__key__"], meta["label"], audio, rate, sample[frames[len(frames) // 2]]))
    return sorted(clips, key=lambda clip: clip.key)


def write_queries(clips: list[Clip], folder: Path) -> Queries:
    """Write the query images and the mixtures of the evaluation set into ``folder``.

    The first clip of each instrument gives its query image; the others, in a fixed
    random order, are each paired with the next clip of another instrument to make mixtures.
    """
    instruments = [name for name in synthetic.INSTRUMENTS if any(c.label == name for c in clips)]
    images, rest = {}, []
    for clip in clips:
        if clip.label not in images:
            images[clip.label] = folder / "queries" / f"{clip.label}.jpg"
            images[clip.label].parent.mkdir(parents=True, exist_ok=True)
            images[clip.label].write_bytes(clip.frame_jpeg)
        else:
            rest.append(clip)
    rest = [rest[i] for i in np.random.default_rng(0).permutation(len(rest))]
    queries = Queries(instruments, {name: TEXT_QUERY.format(name) for name in instruments}, images,
                      sample_rate=clips[0].sample_rate)
    while len(rest) >= 2:
        first = rest.pop(0)
        partner = next((c for c in rest if c.label != first.label), None)
        if partner is None:
            break
        rest.remove(partner)
        length = min(len(first.audio), len(partner.audio))
        sources = [(c.label, 0.5 * c.audio[:length]) for c in (first, partner)]
        path = folder / "mixtures" / f"mix{len(queries.mixtures):03d}-{first.label}-{partner.label}.wav"
        mixture = torch.from_numpy(sources[0][1] + sources[1][1])[None]
        save_audio(path, mixture, queries.sample_rate, bit_depth="32f")
        queries.mixtures.append((path, sources))
    return queries


def _stem(folder: Path, mixture: Path, name: str) -> np.ndarray:
    wave, _ = load_audio(folder / mixture.stem / f"{name}.wav", mono=True)
    return wave[0].numpy()


def evaluate_separation(queries: Queries, separated: Path) -> dict:
    """Score the stems ``clipsep separate`` wrote under ``separated`` (see the module doc)."""
    from clipsep.stem_files import stem_names  # the CLI's own output names

    kinds = [("text", queries.text[name]) for name in queries.instruments]
    kinds += [("image", str(queries.images[name])) for name in queries.instruments]
    names = dict(zip(kinds, stem_names(kinds, 0)))

    def stem(path: Path, kind: str, label: str) -> np.ndarray:
        query = (kind, queries.text[label] if kind == "text" else str(queries.images[label]))
        return _stem(separated, path, names[query])

    result = {}
    absent = []
    for kind in ("text", "image"):
        labels, targets, others, estimates, mixtures = [], [], [], [], []
        for path, sources in queries.mixtures:
            mixture = sources[0][1] + sources[1][1]
            for index, (label, target) in enumerate(sources):
                labels.append(label)
                targets.append(target)
                others.append(sources[1 - index][1])
                estimates.append(stem(path, kind, label)[: len(mixture)])
                mixtures.append(mixture)
            for label in sorted(set(queries.instruments) - {label for label, _ in sources}):
                energy = (stem(path, kind, label) ** 2).sum() / max((mixture**2).sum(), 1e-12)
                absent.append(10 * np.log10(energy + 1e-12))
        scores = separation_scores(*(np.stack(x) for x in (targets, others, estimates, mixtures)))
        result[f"sdri_{kind}_db"] = summarize(scores["sdri"])["mean"]
        result[f"sdri_{kind}"] = summarize(scores["sdri"])
        result[f"sdr_{kind}"] = summarize(scores["sdr"])
        result[f"sdri_{kind}_by_instrument"] = {
            name: summarize(scores["sdri"][[label == name for label in labels]])["mean"] for name in queries.instruments
        }
    result["absent_query_energy_db"] = summarize(absent)
    result["mixtures"] = len(queries.mixtures)
    return result


# ----------------------------------------------------------------------------- the classifier


class InstrumentClassifier(nn.Module):
    """Names the instrument of a clip by its timbre: an ensemble of small perceptrons
    (averaged log-probabilities) on cepstral statistics.

    The features are the mean over time of mel-frequency cepstral coefficients 1 to
    ``n_mfcc`` (the spectral envelope; coefficient 0, the loudness, is left out), their
    spread and that of coefficient 0 (how loudness comes and goes), counted only in frames
    within 52 dB of the clip's loudest, and the spread of all their frame-to-frame changes
    (attack, vibrato, decay). A change of pitch moves the harmonics
    under the envelope but hardly the envelope, so the verdict holds across registers,
    unlike per-band energies, which name a register rather than an instrument.

    Args:
        labels: the class names.
        mel: mel settings (CLIPSonic's by default).
        members: perceptrons in the ensemble.
        n_mfcc: cepstral coefficients used.
    """

    def __init__(self, labels: list[str], mel: MelConfig = MelConfig(), members: int = 5, n_mfcc: int = 20) -> None:
        super().__init__()
        self.labels = list(labels)
        self.mel = MelSpectrogram(mel)
        dct = torchaudio.functional.create_dct(n_mfcc + 1, mel.n_mels, norm="ortho")  # [n_mels, 1 + n_mfcc]
        self.register_buffer("dct", dct.T.contiguous())  # [1 + n_mfcc, n_mels]
        features = 3 * n_mfcc + 2
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))
        self.nets = nn.ModuleList(
            nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, len(labels))) for _ in range(members)
        )

    def features(self, wave: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """``[B, S]`` waveforms -> ``[B, 3 * n_mfcc + 2]`` (computed ``chunk`` waveforms at a time)."""
        rows = []
        for part in wave.split(chunk):
            log_mel = self.mel(part)  # [b, n_mels, T]
            cepstra = torch.einsum("cm,bmt->bct", self.dct, log_mel)  # [b, 1 + n_mfcc, T]
            energy = log_mel.logsumexp(1)  # [b, T], natural log
            weight = (energy > energy.amax(-1, keepdim=True) - 6.0).float()[:, None]  # e^6 in magnitude: 52 dB
            count = weight.sum(-1)
            mean = (cepstra * weight).sum(-1) / count
            spread = (((cepstra - mean[..., None]) ** 2 * weight).sum(-1) / count).sqrt()
            rows.append(torch.cat([mean[:, 1:], spread, cepstra.diff(dim=-1).std(-1)], -1))
        return torch.cat(rows)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """``[B, S]`` -> ``[B, classes]`` log-probabilities, averaged over the ensemble."""
        inputs = (self.features(wave) - self.mean) / self.std
        return torch.stack([net(inputs).log_softmax(-1) for net in self.nets]).mean(0)

    @torch.no_grad()
    def predict(self, wave: torch.Tensor) -> list[str]:
        """The label of each of ``[B, S]`` waveforms."""
        return [self.labels[i] for i in self(wave).argmax(-1).tolist()]

    def fit(self, waves: torch.Tensor, labels: list[str], epochs: int = 300, seed: int = 0) -> "InstrumentClassifier":
        """Full-batch training on ``[N, S]`` waveforms and their labels; member ``k`` starts
        from weights initialised by ``seed + k`` (whatever the global random state)."""
        with torch.no_grad():
            features = self.features(waves)
            self.mean.copy_(features.mean(0))
            self.std.copy_(features.std(0).clamp_min(1e-3))
        inputs = (features - self.mean) / self.std
        targets = torch.tensor([self.labels.index(label) for label in labels])
        for k, net in enumerate(self.nets):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + k)
                for layer in net:
                    if isinstance(layer, nn.Linear):
                        layer.reset_parameters()
            optimizer = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-4)
            for _ in range(epochs):
                loss = nn.functional.cross_entropy(net(inputs), targets)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return self.eval()


def _crops(clips: list, samples: int, per_clip: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """``per_clip`` random crops of ``samples`` samples from every clip (anything with
    ``audio`` and ``label``)."""
    rng = np.random.default_rng(seed)
    waves, labels = [], []
    for clip in clips:
        audio = np.pad(clip.audio, (0, max(0, samples - len(clip.audio))))
        for start in rng.integers(0, len(audio) - samples + 1, size=per_clip):
            waves.append(audio[start : start + samples])
            labels.append(clip.label)
    return torch.from_numpy(np.stack(waves)), labels


def train_judge(instruments: list[str], train_shards: str, heldout_shards: str, seconds: float,
                sample_rate: int = 16000) -> tuple[InstrumentClassifier, float]:
    """The classifier, trained on crops of ``seconds`` of real training audio, and its
    accuracy on crops of real held-out audio."""
    samples = round(seconds * sample_rate)
    classifier = InstrumentClassifier(instruments)
    classifier.fit(*_crops(read_clips(train_shards), samples, per_clip=6, seed=0))
    real, labels = _crops(read_clips(heldout_shards), samples, per_clip=2, seed=1)
    return classifier, _accuracy(classifier.predict(real), labels)


def render_crops(split: str, n_clips: int, seconds: float, per_clip: int = 3, seed: int = 0,
                 transpose: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Crops of clean renders of the miniature MUSIC world (no off-screen sound).

    Args:
        split: ``"train"``, ``"validation"`` or ``"test"``.
        n_clips: clips ``0 .. n_clips-1`` of the split (instruments in turn).
        seconds: crop length; per_clip: crops per clip; seed: seed of the crop starts.
        transpose: semitones; odd clips are moved up and even clips down by this much.

    Returns:
        float32 ``[n_clips * per_clip, round(seconds * 16000)]`` and the label of each.
    """
    from clipcore.miniature import world

    renders = [world.make_clip(i, split, frame_size=8, transpose=transpose if i % 2 else -transpose)
               for i in range(n_clips)]
    return _crops(renders, round(seconds * renders[0].sample_rate), per_clip, seed)


def judge_from_renders(n_clips: int = 330, seconds: float = 1.0, per_clip: int = 3,
                       seed: int = 0) -> InstrumentClassifier:
    """The timbre judge of the miniature MUSIC world, trained on clean training renders only."""
    from clipcore.miniature import world

    return InstrumentClassifier(list(world.INSTRUMENTS)).fit(*render_crops("train", n_clips, seconds, per_clip, seed),
                                                              seed=seed)


def proportion(successes: list[bool]) -> dict[str, float | int]:
    """A fraction with its 95% Wilson score interval (``low``, ``high``) and count."""
    n = len(successes)
    p, z = float(np.mean(successes)), 1.959964
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"mean": p, "low": float(centre - half), "high": float(centre + half), "count": n}


def judge_report(judge: InstrumentClassifier, waves: torch.Tensor, labels: list[str]) -> dict:
    """Accuracy with its 95% interval, and per instrument."""
    hits = [p == t for p, t in zip(judge.predict(waves), labels)]
    return {"accuracy": proportion(hits),
            "by_instrument": {name: proportion([h for h, t in zip(hits, labels) if t == name])["mean"]
                              for name in judge.labels if name in labels}}


def evaluate_generation(classifier: InstrumentClassifier, queries: Queries, generated: Path, seconds: float) -> dict:
    """Recognition of the queried instrument in what ``clipsonic generate`` wrote under
    ``generated/{image,zs,pd}`` (see the module doc)."""
    from clipsonic.generate_command import output_paths  # the CLI's own output names

    samples = round(seconds * queries.sample_rate)
    result = {}
    for mode in ("image", "zs", "pd"):
        folder = generated / mode
        per_query = max(1, len(list(folder.glob("*.wav"))) // len(queries.instruments))
        if mode == "image":
            paths = output_paths([], [str(queries.images[name]) for name in queries.instruments], per_query, folder, "wav")
        else:
            paths = output_paths(queries.instruments, [], per_query, folder, "wav")
        waves, truth = [], []
        for name, row in zip(queries.instruments, paths):
            for path in row:
                wave, _ = load_audio(path, sample_rate=queries.sample_rate, mono=True)
                waves.append(torch.nn.functional.pad(wave[0], (0, max(0, samples - wave.shape[-1])))[:samples])
                truth.append(name)
        predicted = classifier.predict(torch.stack(waves))
        result[f"recognition_{mode}"] = _accuracy(predicted, truth)
        result[f"predicted_{mode}"] = {name: [p for p, t in zip(predicted, truth) if t == name]
                                       for name in queries.instruments}
    return result


def _accuracy(predicted: list[str], truth: list[str]) -> float:
    return float(np.mean([p == t for p, t in zip(predicted, truth)]))


def main(argv: list[str] | None = None) -> int:
    """Train the miniature world's judge on training renders; report it on test renders."""
    import argparse

    parser = argparse.ArgumentParser(prog="toy_judges", description="Train the timbre judge of the miniature MUSIC "
                                     "world on clean training renders and report its accuracy on clean test renders "
                                     "and on test renders moved out of register.")
    parser.add_argument("--train-clips", type=int, default=330, help="training renders (default: 330)")
    parser.add_argument("--test-clips", type=int, default=220, help="test renders (default: 220)")
    parser.add_argument("--seconds", type=float, default=1.0, help="crop length judged (default: 1.0)")
    parser.add_argument("--transpose", type=int, default=7, help="semitones of the moved renders (default: 7)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    judge = judge_from_renders(args.train_clips, args.seconds)
    report = {"settings": vars(args), "clean_test": judge_report(judge, *render_crops("test", args.test_clips,
                                                                                      args.seconds, seed=1))}
    report["transposed_test"] = judge_report(judge, *render_crops("test", args.test_clips, args.seconds, seed=1,
                                                                  transpose=args.transpose))
    report["chance"] = 1 / len(judge.labels)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
