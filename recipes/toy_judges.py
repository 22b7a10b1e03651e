"""The timbre judge of the miniature MUSIC world: which instrument does a clip sound like?

A small classifier (:class:`InstrumentClassifier`) trained on clean renders of the
training split only (:func:`judge_from_renders`); the quick start and the experiments use
it to name the instrument of generated clips (``recipes.miniature_eval``). Run as a
script, it reports its accuracy on clean test renders and on test renders moved out of
register::

    python recipes/toy_judges.py --transpose 7
"""

from __future__ import annotations

import json

import numpy as np
import torch
import torchaudio
from torch import nn

from clipcore.spectral import MelConfig, MelSpectrogram

__all__ = ["InstrumentClassifier", "render_crops", "judge_from_renders", "proportion", "judge_report"]


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
