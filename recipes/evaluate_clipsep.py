"""Evaluate CLIPSep on the published test protocols (MUSIC+ and VGGSound-Clean+).

    python recipes/evaluate_clipsep.py --checkpoint runs/x/pretrained/best \\
        --protocol music+ --data-root /data/clipsep --queries image text ensemble \\
        --out results/music+.json

Each test mixture is a target clip plus one interference clip (the i-th target's is
drawn from the interference list by Python's ``random`` seeded with i, as in the official
evaluation); only the target is scored. Both clips give the 65,535 samples centred on the
time of their middle frame (frame ``count // 2`` at 1 fps, time ``(frame - 0.5) / fps``;
clips shorter than that are repeated, clipped to [-1, 1]) and are halved before mixing.
Queries, all separated in one U-Net pass per mixture:

- ``image``: the CLIP embeddings of the target's three middle frames, averaged;
- ``text``: "a photo of {label}" (underscores of MUSIC labels become spaces);
- ``ensemble``: the four prompt templates of the official evaluation, averaged.

The target estimate (binary masks at 0.5 unless ``--soft``, mixture phase) is scored by
BSS-Eval SDR, SIR and SAR against the target and the interference, with SI-SDR, the
mixture's scores and the improvements (:mod:`clipsep.metrics`). Results: a JSON file with
every item and the summary, and a table of mean ± standard error and median.

``--data-root`` is the folder the list paths are relative to (the official preprocessing
layout: ``data/MUSIC/solo/audio/<label>/<id>.wav`` and frame folders of ``000001.jpg``, ...).
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from clipcore.audio import load_audio
from clipcore.errors import EXIT_PARTIAL, UsageError, report_errors
from clipcore.files import check_not_an_input, check_output_file, write_json
from clipcore.prompts import CLIPSEP_EVAL_TEMPLATES, DEFAULT_TEMPLATE
from clipsep.masks import check_mask_power
from clipsep.metrics import separation_scores, summarize
from clipsep.separate import Separator

PROTOCOL_DIR = Path(__file__).resolve().parent / "protocols" / "clipsep"
PROTOCOLS = {
    "music+": ("MUSIC/test.csv", "vggsound/test-good-no-music.csv"),
    "vggsound-clean+": ("vggsound/test-good.csv", "vggsound/test-no-music.csv"),
}
QUERY_MODES = ("image", "text", "ensemble")
METRICS = ("sdr", "sir", "sar", "sdr_mix", "sdri", "si_sdr", "si_sdri")
SAMPLE_RATE, SEGMENT, FPS, QUERY_FRAMES = 16000, 65535, 1.0, 3


@dataclass(frozen=True)
class Clip:
    """One row of a list: ``audio path, frames folder, frame count, label``."""

    audio: str
    frames: str
    count: int
    label: str

    @property
    def video_id(self) -> str:
        return Path(self.audio).stem

    @property
    def centre_frame(self) -> int:
        """The 1-based middle frame of the official evaluation."""
        return max(1, self.count // 2)


def read_list(path: Path) -> list[Clip]:
    """Read a protocol list. Raises UsageError naming the file and line of a bad row."""
    if not path.is_file():
        raise UsageError(f"{path}: no such list file.")
    clips = []
    with path.open(newline="") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if len(row) < 2:
                continue
            try:
                clips.append(Clip(row[0], row[1], int(row[2]), row[3]))
            except (IndexError, ValueError):
                raise UsageError(f"{path}, line {line}: expected 'audio,frames folder,frame count,label'.") from None
    if not clips:
        raise UsageError(f"{path}: the list is empty.")
    return clips


def interference_index(target_index: int, count: int) -> int:
    """The official choice: ``random.seed(i); random.randint(0, count - 1)``."""
    return random.Random(target_index).randint(0, count - 1)


def load_segment(root: Path, clip: Clip) -> np.ndarray:
    """``[SEGMENT]`` float32 centred on the clip's middle frame (repeated if short).

    As in the official crop, ``SEGMENT // 2`` samples are read on each side of the centre
    (zeros before the start), so the last of the 65,535 samples is always 0.
    """
    wave, _ = load_audio(root / clip.audio, sample_rate=SAMPLE_RATE, mono=True)
    audio = wave[0].numpy()
    if len(audio) < SEGMENT:
        audio = np.tile(audio, SEGMENT // len(audio) + 1)
    centre = int((clip.centre_frame - 0.5) / FPS * SAMPLE_RATE)
    start, end = max(0, centre - SEGMENT // 2), min(len(audio), centre + SEGMENT // 2)
    out = np.zeros(SEGMENT, dtype=np.float32)
    out[SEGMENT // 2 - (centre - start) : SEGMENT // 2 + (end - centre)] = audio[start:end]
    return np.clip(out, -1.0, 1.0)


def load_frames(root: Path, clip: Clip) -> torch.Tensor:
    """uint8 ``[1, F, 3, H, W]``: the target's middle frames (``%06d.jpg``, 1-based)."""
    frames = []
    for offset in range(-(QUERY_FRAMES // 2), QUERY_FRAMES - QUERY_FRAMES // 2):
        path = root / clip.frames / f"{clip.centre_frame + offset:06d}.jpg"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such frame")
        with Image.open(path) as image:
            frames.append(torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1))
    if len({f.shape for f in frames}) != 1:
        raise ValueError(f"{root / clip.frames}: frames of different sizes")
    return torch.stack(frames)[None]


def query_embeddings(separator: Separator, modes: list[str], root: Path, clip: Clip) -> torch.Tensor:
    """``[K, D]`` query embeddings, one per mode, at the scale the model reads."""
    text = clip.label.replace("_", " ")
    rows = []
    for mode in modes:
        if mode == "image":
            rows.append(separator.embed_images(load_frames(root, clip).to(separator.device))[0])
        else:
            templates = DEFAULT_TEMPLATE if mode == "text" else list(CLIPSEP_EVAL_TEMPLATES)
            rows.append(separator.embed_text([text], templates=templates)[0])
    return torch.stack(rows)


def evaluate(args: argparse.Namespace) -> dict:
    """Run the protocol; returns the results dictionary (items, skipped, summary)."""
    if args.protocol:
        targets_file, interference_file = (PROTOCOL_DIR / name for name in PROTOCOLS[args.protocol])
    elif args.targets and args.interference:
        targets_file, interference_file = Path(args.targets), Path(args.interference)
    else:
        raise UsageError("give --protocol, or both --targets and --interference.")
    root = Path(args.data_root)
    if not root.is_dir():
        raise UsageError(f"--data-root {root}: no such folder.")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be positive, not {args.limit}.")
    check_mask_power(args.mask_power, not args.soft, "--mask-power")
    modes = list(dict.fromkeys(args.queries))
    targets, interference = read_list(targets_file), read_list(interference_file)
    if args.out:  # nor a listed clip's audio or frames
        check_not_an_input(args.out, {f"--data-root ({path})": root / path
                                      for clip in targets + interference for path in (clip.audio, clip.frames)})
    separator = Separator.load(args.checkpoint, args.query_encoder, device=args.device, binary=not args.soft,
                               mask_power=args.mask_power)
    items, skipped = [], []
    for index, target in enumerate(tqdm(targets[: args.limit], desc="evaluating", unit="mixture")):
        other = interference[interference_index(index, len(interference))]
        try:
            source = load_segment(root, target) / 2
            noise = load_segment(root, other) / 2
            queries = query_embeddings(separator, modes, root, target)
        except (OSError, ValueError) as error:  # domain errors (ClipAudioError) included
            skipped.append({"index": index, "target": target.video_id, "reason": str(error)})
            continue
        if np.array_equal(source, noise):  # BSS-Eval cannot tell two equal references apart
            skipped.append({"index": index, "target": target.video_id,
                            "reason": f"{other.audio}: the interference is the target itself"})
            continue
        mixture = source + noise
        stems = separator.separate(torch.from_numpy(mixture), SAMPLE_RATE, queries).stems[:, 0]  # [K, S]
        scores = separation_scores(
            np.repeat(source[None], len(modes), 0), np.repeat(noise[None], len(modes), 0),
            stems.numpy(), np.repeat(mixture[None], len(modes), 0),
        )
        items.append({
            "index": index, "target": target.video_id, "label": target.label,
            "interference": other.video_id, "interference_label": other.label,
            "scores": {mode: {m: _number(scores[m][k]) for m in METRICS} for k, mode in enumerate(modes)},
        })
    if not items:
        raise UsageError(f"no mixture could be evaluated (first problem: {skipped[0]['reason']}).")
    summary = {
        mode: {m: summarize([np.nan if i["scores"][mode][m] is None else i["scores"][mode][m] for i in items])
               for m in METRICS}
        for mode in modes
    }
    unscored = {mode: len(items) - summary[mode]["sdr"]["count"] for mode in modes}
    settings = {"protocol": args.protocol, "targets": str(targets_file), "interference": str(interference_file),
                "checkpoint": str(args.checkpoint), "queries": modes, "masks": "soft" if args.soft else "binary",
                "mask_power": args.mask_power}
    return {"settings": settings, "summary": summary, "unscored": unscored, "items": items, "skipped": skipped}


def _number(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def format_table(summary: dict) -> str:
    """A plain-text table: one row per query mode and metric, mean ± s.e., median, count."""
    lines = [f"{'query':<9} {'metric':<8} {'mean ± s.e.':>16} {'median':>8} {'n':>5}"]
    for mode, metrics in summary.items():
        for name, s in metrics.items():
            lines.append(f"{mode:<9} {name:<8} {s['mean']:>7.2f} ± {s['sem']:<6.2f} {s['median']:>8.2f} {s['count']:>5}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evaluate_clipsep", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="project checkpoint folder or official best_model.pt")
    parser.add_argument("--query-encoder", help="query encoder (default: the checkpoint's)")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), help="a published protocol")
    parser.add_argument("--targets", help="target list (instead of --protocol)")
    parser.add_argument("--interference", help="interference list (instead of --protocol)")
    parser.add_argument("--data-root", required=True, help="folder the list paths are relative to")
    parser.add_argument("--queries", nargs="+", choices=QUERY_MODES, default=list(QUERY_MODES),
                        help="query kinds to evaluate (default: all)")
    parser.add_argument("--soft", action="store_true", help="soft masks instead of binary (> 0.5)")
    parser.add_argument("--mask-power", type=float, default=1.0, metavar="P",
                        help="with --soft: the soft masks raised to this power (default: 1, as the network gives them; "
                             "binary masks, the default, have no power)")
    parser.add_argument("--limit", type=int, help="evaluate the first N targets only")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="JSON results file (default: print only); written also when a query kind "
                                      "has no scored estimate, for the reasons it holds, though the status is then 1")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return report_errors("evaluate_clipsep", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    if args.out:  # before hours of separation
        check_output_file(args.out, "--out")
        check_not_an_input(args.out, {"--targets": args.targets, "--interference": args.interference,
                                      "--checkpoint": args.checkpoint, "--query-encoder": args.query_encoder})
    results = evaluate(args)
    if args.out:
        write_json(args.out, results, indent=1)
    print(format_table(results["summary"]))
    if results["skipped"]:
        print(f"skipped {len(results['skipped'])} mixtures (reasons in the JSON results).")
    evaluated = len(results["items"])
    for mode, count in results["unscored"].items():
        if count:  # the official evaluation leaves them out too; the means hold the rest
            print(f"{mode}: {count} of {evaluated} estimates unscored (silent, or the whole mixture).")
    empty = [mode for mode, count in results["unscored"].items() if count == evaluated]
    if empty:
        print(f"evaluate_clipsep: error: every estimate with {' and '.join(empty)} queries was unscored (silent, or "
              "the whole mixture); there is no score to report.", file=sys.stderr)
        return EXIT_PARTIAL
    return 0


if __name__ == "__main__":
    sys.exit(main())
