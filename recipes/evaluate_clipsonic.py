"""Evaluate a CLIPSonic checkpoint against reference clips from shards.

    python recipes/evaluate_clipsonic.py --checkpoint runs/clipsonic/model \\
        --reference-shards 'shards/vggsound/test-*.tar' --prior runs/prior \\
        --modes image zs pd -n 4 --out results.json   # gap too, with --gap modality_gap.json

For every label of the reference clips (or every line of ``--prompts``), each mode
generates ``-n`` clips: from the text query (``zs``, ``pd``, ``gap``) or from the CLIP image
embeddings of ``-n`` reference clips of that label (``image``). Reported per mode: the
Fréchet audio distance to the reference clips (embedding ``--embedding``: ``mel-stats``
built in, or ``package.module:factory`` for VGGish, PANNs, CLAP), the query relevance in
CLIP space and, with labelled references, the k-NN recognition accuracy (see
:mod:`clipsonic.metrics`). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from clipcore.errors import UsageError, report_errors
from clipcore.files import check_not_an_input, check_output_file, write_json
from clipcore.shard_stream import ShardStream
from clipcore.shards import ShardError, expand_shards
from clipsonic.generate import MODES, SAMPLERS, Generator, check_guidance
from clipsonic.metrics import embed_audio, frechet_distance, knn_accuracy, load_embedding, nearest_references, query_relevance


def load_references(generator: Generator, shards: str, encoder: str | None, duration: float, limit: int):
    """Reference clips: ``(audio [R, S], clip_embeddings [R, D], labels)``.

    Raises:
        UsageError: no reference clips, or ``duration`` longer than the shortest of them
            (its end would be silence that FAD and relevance compare against).
    """
    rate = generator.model.mel_config.sample_rate
    segment = round(duration * rate)
    stream = ShardStream(shards, num_sources=1, batch_size=16, segment_samples=segment,
                         sample_rate=rate, encoder=encoder, query_frames=1, train=False)
    audio, embeddings, labels, lengths = [], [], [], []
    for batch in stream:
        audio.append(batch.sources[:, 0])
        lengths.append(batch.lengths[:, 0])
        if batch.embeddings is not None:
            embeddings.append(F.normalize(batch.embeddings[:, 0].float(), dim=-1))
        else:
            embeddings.append(generator.query_encoder().encode_image(batch.frames[:, 0, 0]).cpu())
        labels += [label[0] for label in batch.labels]
        if len(labels) >= limit:
            break
    if not labels:
        raise UsageError(f"no reference clips in {shards}.")
    shortest = int(torch.cat(lengths)[:limit].min())
    if shortest < segment - 1:  # a sample short: the rounding of resampling
        raise UsageError(f"--duration {duration:g} s is longer than the reference clips of {shards} (the shortest lasts "
                         f"{shortest / rate:.2f} s), whose end would be compared as silence; give --duration "
                         f"{math.floor(shortest / rate * 100) / 100:g} or less.")
    return torch.cat(audio)[:limit], torch.cat(embeddings)[:limit], labels[:limit]


def evaluate(args: argparse.Namespace) -> dict:
    generator = Generator.from_pretrained(args.checkpoint, query_encoder=args.query_encoder, prior=args.prior,
                                          vocoder=args.vocoder, device=args.device, batch_size=args.batch_size,
                                          gap=args.gap)
    generator.check_duration(args.duration, "--duration")
    needs = {"pd": (generator.has_prior, "--prior DIR"), "gap": (generator.gap is not None, "--gap FILE")}
    for mode, (offered, option) in needs.items():
        if mode in args.modes and not offered:
            raise UsageError(f"mode {mode} needs {option} (or drop it from --modes).")
    audio, clip_embeddings, labels = load_references(generator, args.reference_shards, args.encoder, args.duration,
                                                     args.max_references)
    embedding = load_embedding(args.embedding)
    rate = generator.sample_rate
    reference_windows = embed_audio(embedding, audio, rate)
    reference_clips = reference_windows.mean(1)
    has_labels = all(label is not None for label in labels)
    if args.prompts is not None:
        prompts = [line.strip() for line in Path(args.prompts).read_text().splitlines() if line.strip()]
        query_labels = [None] * len(prompts)
    else:
        if not has_labels:
            raise UsageError("the reference clips have no labels; give --prompts.")
        query_labels = sorted(set(labels))
        prompts = query_labels
    text = generator.embed(text=prompts, mode="zs").cpu()
    settings = {"steps": args.steps, "guidance": args.guidance, "sampler": args.sampler, "seed": args.seed,
                "duration": args.duration}
    results = {}
    for mode in args.modes:
        if mode == "image":
            if not has_labels or args.prompts is not None:
                print("skipping image mode: it needs labelled references and no --prompts.", file=sys.stderr)
                continue
            rows = [[i for i, label in enumerate(labels) if label == q][: args.num_samples] for q in query_labels]
            conditions = torch.cat([clip_embeddings[row] for row in rows])
            owners = [q for q, row in zip(range(len(prompts)), rows) for _ in row]
            waves = generator.generate(embeddings=conditions, progress=True, **settings).waveforms[:, 0]
        else:
            conditions = generator.embed(text=prompts, mode=mode, seed=args.seed)
            waves = generator.generate(embeddings=conditions, num_samples=args.num_samples, progress=True,
                                       **settings).waveforms.flatten(0, 1)
            owners = [q for q in range(len(prompts)) for _ in range(args.num_samples)]
        windows = embed_audio(embedding, waves.cpu(), rate)
        neighbours = nearest_references(windows.mean(1), reference_clips, k=args.k)
        entry = {
            "clips": len(owners),
            "fad": frechet_distance(windows.flatten(0, 1), reference_windows.flatten(0, 1)),
            "relevance": query_relevance(text[owners], neighbours, clip_embeddings).mean().item(),
        }
        if query_labels[0] is not None:
            entry["knn_accuracy"] = knn_accuracy([query_labels[q] for q in owners], neighbours, labels)
        results[mode] = entry
    return {"checkpoint": str(args.checkpoint), "embedding": args.embedding, "reference_clips": len(labels),
            "queries": len(prompts), "k": args.k, **settings, "modes": results}


def table(report: dict) -> str:
    lines = [f"{'mode':<6} {'clips':>6} {'FAD':>10} {'relevance':>10} {'kNN acc':>8}"]
    for mode, entry in report["modes"].items():
        accuracy = f"{entry['knn_accuracy']:.3f}" if "knn_accuracy" in entry else "-"
        lines.append(f"{mode:<6} {entry['clips']:>6} {entry['fad']:>10.3f} {entry['relevance']:>10.3f} {accuracy:>8}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="CLIPSonic checkpoint folder")
    p.add_argument("--reference-shards", required=True, help="shards of reference clips (paths, globs, braces)")
    p.add_argument("--encoder", default=None, help="<encoder>.npy member with precomputed CLIP embeddings "
                                                   "(default: encode the frames with the query encoder)")
    p.add_argument("--query-encoder", default=None, help="query encoder spec (default: the checkpoint's)")
    p.add_argument("--prior", default=None, help="diffusion prior folder (pd mode)")
    p.add_argument("--gap", default=None, help="modality-gap file of recipes/measure_gap.py (gap mode)")
    p.add_argument("--vocoder", default=None, help="griffinlim or a HiFi-GAN folder")
    p.add_argument("--modes", nargs="+", choices=MODES, default=["image", "zs"])
    p.add_argument("--prompts", default=None, help="file of text queries, one per line (default: the labels)")
    p.add_argument("-n", "--num-samples", type=int, default=4, help="clips per query (default: 4)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--sampler", choices=list(SAMPLERS), default="ddim")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, default=4.0, help="seconds per clip (references are cropped to it)")
    p.add_argument("--embedding", default="mel-stats", help="mel-stats or package.module:factory")
    p.add_argument("--k", type=int, default=5, help="neighbours for relevance and accuracy (default: 5)")
    p.add_argument("--max-references", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="JSON report path (default: print only)")
    return p


def _check(args: argparse.Namespace) -> None:
    """Refuse, before any model is loaded, values the evaluation cannot use."""
    if not 0 < args.duration < math.inf:
        raise UsageError(f"--duration must be a positive number of seconds, got {args.duration}.")
    check_guidance(args.guidance, "--guidance")
    for option, value in (("-n", args.num_samples), ("--k", args.k), ("--max-references", args.max_references),
                          ("--batch-size", args.batch_size)):
        if value < 1:
            raise UsageError(f"{option} must be at least 1, got {value}.")
    if args.prompts is not None and not Path(args.prompts).is_file():
        raise UsageError(f"--prompts {args.prompts}: no such file.")
    if args.out:
        check_output_file(args.out, "--out")
        try:
            shards = expand_shards(args.reference_shards)
        except ShardError as error:
            raise UsageError(str(error)) from None
        check_not_an_input(args.out, {"--prompts": args.prompts, "--gap": args.gap, "--checkpoint": args.checkpoint,
                                      "--query-encoder": args.query_encoder, "--prior": args.prior,
                                      "--vocoder": args.vocoder,
                                      **{f"--reference-shards ({shard})": shard for shard in shards}})


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    _check(args)
    report = evaluate(args)
    print(table(report))
    if args.out:
        write_json(args.out, report)
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    sys.exit(report_errors("evaluate_clipsonic", main))
