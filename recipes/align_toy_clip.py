"""Align a tiny CLIP on the toy world's (caption, frame) pairs: its stand-in for pretrained CLIP.

    python recipes/align_toy_clip.py runs/quickstart/query_encoder \\
        --val-shards 'runs/quickstart/shards/heldout/*.tar'

Real CLIP learned from 400 M web (image, caption) pairs, long before and apart from any
video data set, that a photo of a violin and the words "playing violin" belong together.
The toy world has no such model, so this recipe trains one in seconds: open_clip's own
``CLIP`` class (the small config of ``clipcore.query.tiny_clip_config``, inside a
:class:`~clipcore.query.QueryEncoder`, so CLIP's preprocessing and tokenizer apply) with
open_clip's own contrastive ``ClipLoss``, on its own (caption, image) pairs: pictures
drawn by ``clipcore.synthetic.render_frame`` (not the training videos' frames), each
paired with a toy caption of its instrument (``clipcore.synthetic.captions``, also
inside the default prompt template ``"a photo of {}"``). Each contrastive group holds
one pair per instrument, so no group contains a false negative.

The aligned encoder is saved with ``save_pretrained``; every recipe and tool takes the
folder wherever an open_clip name such as ``ViT-B-32/openai`` would go (for example
``prepare_shards.py --clip-model``). With ``--val-shards`` it also reports how often a
video frame of the shards is nearest to the prompt ``"a photo of {label}"`` of its own
label among all instruments (chance: 1 / instruments).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time

import numpy as np
import torch
from open_clip import ClipLoss
from PIL import Image
from tqdm import tqdm
from webdataset.tariterators import tarfile_samples

from clipcore import synthetic
from clipcore.checkpoint import git_commit
from clipcore.cli import EXPECTED_ERRORS, UsageError
from clipcore.query import DEFAULT_TEMPLATE, QueryEncoder, tiny_clip_config
from clipcore.shards import ShardError, expand_shards


def render_frames(per_instrument: int, seed: int, size: int = 224) -> tuple[torch.Tensor, list[str]]:
    """Fresh pictures of every toy instrument (``clipcore.synthetic.render_frame``).

    Returns:
        uint8 frames ``[per_instrument * instruments, 3, size, size]`` and the label of each.
    """
    rng = np.random.default_rng([seed, 1])
    labels = [name for name in synthetic.INSTRUMENTS for _ in range(per_instrument)]
    frames = np.stack([synthetic.render_frame(name, rng, size) for name in labels])
    return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(), labels


def read_frames(shards: str) -> tuple[torch.Tensor, list[str]]:
    """Every frame of every labelled sample of video shards.

    Returns:
        uint8 frames ``[N, 3, H, W]`` and the label of each.
    """
    frames, labels = [], []
    for sample in tarfile_samples([{"url": url} for url in expand_shards(shards)]):
        label = json.loads(sample["json"]).get("label") if "json" in sample else None
        if not label:
            continue
        for name in sorted(k for k in sample if k.endswith(".jpg") and k[:-4].isdigit()):
            image = Image.open(io.BytesIO(sample[name])).convert("RGB")
            frames.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
            labels.append(label)
    if not frames:
        raise UsageError(f"{shards}: holds no labelled frames.")
    if len({tuple(f.shape) for f in frames}) > 1:
        raise UsageError(f"{shards}: frames of several sizes; prepare the shards with one --short-side.")
    return torch.stack(frames), labels


def prompts(label: str) -> list[str]:
    """Captions of a toy instrument: its toy captions, bare and inside the default prompt
    template (tools wrap queries in ``"a photo of {}"`` unless told otherwise), and the
    default prompt of its name."""
    captions = synthetic.captions(label)
    return captions + [DEFAULT_TEMPLATE.format(c) for c in captions] + [DEFAULT_TEMPLATE.format(label)]


def retrieval_accuracy(encoder: QueryEncoder, frames: torch.Tensor, labels: list[str], names: list[str]) -> float:
    """Fraction of frames whose nearest prompt ``"a photo of {label}"`` is their own label."""
    text = encoder.encode_text(names)  # [L, D]
    image = encoder.encode_image(frames)  # [N, D]
    nearest = (image @ text.T).argmax(-1)
    truth = torch.tensor([names.index(label) for label in labels])
    return float((nearest == truth).float().mean())


def align(
    encoder: QueryEncoder,
    frames: torch.Tensor,
    labels: list[str],
    steps: int = 300,
    groups: int = 8,
    learning_rate: float = 2e-3,
    seed: int = 0,
) -> list[float]:
    """Train ``encoder.model`` in place with ``ClipLoss``; returns the loss per step.

    Args:
        encoder: the query encoder to align (its open_clip model is unfrozen, then frozen again).
        frames: uint8 ``[N, 3, H, W]`` frames; labels: ``N`` labels.
        steps: optimiser steps.
        groups: contrastive groups per step, each one (frame, caption) pair per label.
        learning_rate: AdamW learning rate (cosine decay to 0).
        seed: seed of the pair sampling.
    """
    names = sorted(set(labels))
    if len(names) < 2:
        raise UsageError("aligning needs frames of at least two labels.")
    pixels = encoder.preprocess(frames)  # [N, 3, S, S], once: the frames are fixed
    by_label = [torch.tensor([i for i, label in enumerate(labels) if label == name]) for name in names]
    captions = [prompts(name) for name in names]
    tokens = [encoder.tokenize(c) for c in captions]  # [L][C, context]
    model = encoder.model.requires_grad_(True).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    loss_fn = ClipLoss()
    rng = torch.Generator().manual_seed(seed)
    history = []
    for _ in tqdm(range(steps), desc="aligning", unit="step"):
        pick = [idx[torch.randint(len(idx), (groups,), generator=rng)] for idx in by_label]  # [L][G]
        image_index = torch.stack(pick, 1).flatten()  # group-major: [G * L]
        text = torch.stack(
            [t[torch.randint(len(t), (groups,), generator=rng)] for t in tokens], 1
        ).flatten(0, 1)  # [G * L, context]
        image_features = model.encode_image(pixels[image_index], normalize=True).view(groups, len(names), -1)
        text_features = model.encode_text(text, normalize=True).view(groups, len(names), -1)
        scale = model.logit_scale.exp()
        loss = torch.stack([loss_fn(i, t, scale) for i, t in zip(image_features, text_features)]).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)  # at most 100, as open_clip's training does
        history.append(loss.item())
    model.requires_grad_(False).eval()
    return history


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="align_toy_clip",
        description="Train a tiny CLIP (open_clip CLIP + ClipLoss) on pictures and captions of the toy "
        "instruments, and save it as a query encoder folder.",
    )
    parser.add_argument("out_dir", help="folder for the aligned query encoder")
    parser.add_argument("--images", type=int, default=64, help="pictures per instrument (default: 64)")
    parser.add_argument("--val-shards", help="video shards whose frames measure frame-to-prompt retrieval")
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps (default: 200)")
    parser.add_argument("--groups", type=int, default=8, help="contrastive groups per step (default: 8)")
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (default: 0.002)")
    parser.add_argument("--embed-dim", type=int, default=32, help="embedding size (default: 32)")
    parser.add_argument("--name", default="clip-toy", help="encoder name, the shards' <name>.npy (default: clip-toy)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if min(args.images, args.steps, args.groups, args.embed_dim) < 1:
            raise UsageError("--images, --steps, --groups and --embed-dim must be positive.")
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        frames, labels = render_frames(args.images, args.seed)
        encoder = QueryEncoder(tiny_clip_config(args.embed_dim), name=args.name, seed=args.seed)
        history = align(encoder, frames, labels, args.steps, args.groups, args.lr, args.seed)
        names = list(synthetic.INSTRUMENTS)
        test_frames, test_labels = render_frames(max(4, args.images // 4), args.seed + 1000)
        facts = {"final_loss": float(np.mean(history[-20:])), "seconds": round(time.perf_counter() - start, 1),
                 "retrieval_accuracy_rendered": retrieval_accuracy(encoder, test_frames, test_labels, names),
                 "chance": 1 / len(names)}
        if args.val_shards:
            val_frames, val_labels = read_frames(args.val_shards)
            if not set(val_labels) <= set(names):
                raise UsageError(f"{args.val_shards}: has labels that are not toy instruments.")
            facts["retrieval_accuracy_shards"] = retrieval_accuracy(encoder, val_frames, val_labels, names)
        encoder.save_pretrained(args.out_dir, provenance={
            "git_commit": git_commit(), "recipe": "recipes/align_toy_clip.py", "settings": vars(args), **facts,
        })
        print(json.dumps(facts))
        return 0
    except (*EXPECTED_ERRORS, ShardError) as error:
        print(f"align_toy_clip: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
