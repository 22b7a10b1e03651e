"""Measure a CLIP's modality gap for ``clipsep separate --gap`` (``Separator(gap=...)``).

    python recipes/measure_gap.py --pairs runs/quickstart/prior_pairs.npz -o modality_gap.json
    python recipes/measure_gap.py --shards 'shards/music/train-*.tar' --encoder ViT-B-32/openai \\
        --max-samples 5000 -o modality_gap.json

The gap is each modality's mean unit-norm embedding and its spread along the image
embeddings' principal axes (:class:`clipcore.modality_gap.ModalityGap`; the two sets need
not be paired), read from (text, image) embedding pairs: the
diffusion prior's (``--pairs``: its ``--data.cache`` file), or computed from a webdataset's
frames and the prompts of its labels or captions (``--shards`` with ``--encoder``, as
``recipes/train_prior.py`` computes its pairs). Bad input gets one sentence and exit
status 1.
"""

from __future__ import annotations

import argparse

from clipcore.errors import UsageError, report_errors
from clipcore.files import check_not_an_input
from clipcore.modality_gap import ModalityGap
from clipcore.prompts import prompt_templates


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pairs", metavar="NPZ", help="(text, image) embedding pairs: an .npz with text and image arrays")
    source.add_argument("--shards", metavar="SPEC", help="a webdataset of frames with json labels or txt captions")
    parser.add_argument("--encoder", metavar="SPEC", help="with --shards: the query encoder (folder or open_clip spec)")
    parser.add_argument("--template", action="append", default=None, metavar="TEMPLATE",
                        help='with --shards: prompt template for json labels (default "a photo of {}"; repeatable)')
    parser.add_argument("--max-samples", type=int, default=None, metavar="N", help="with --shards: read at most N samples")
    parser.add_argument("-o", "--out", required=True, metavar="FILE", help="the modality-gap JSON file to write")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> ModalityGap:
    args = parse_args(argv)
    from clipcore.prior_pairs import compute_pairs, load_pairs
    from clipcore.query import QueryEncoder

    check_not_an_input(args.out, {"--pairs": args.pairs})
    prompt_templates(args.template, "--template", UsageError)
    if args.shards is None:
        text, image = load_pairs(args.pairs)
    elif args.encoder is None:
        raise UsageError("--shards needs --encoder, the query encoder whose gap is measured.")
    else:
        text, image = compute_pairs(args.shards, QueryEncoder.load(args.encoder), args.template, args.max_samples)
    try:
        gap = ModalityGap.measure(image, text)
    except ValueError as error:  # too few pairs, or texts all alike
        raise UsageError(f"{args.pairs or args.shards}: {error}") from None
    gap.save(args.out)
    print(f"{args.out}: the gap of {len(text)} text and image embeddings ({gap.embed_dim}-d)", flush=True)
    return gap


if __name__ == "__main__":
    raise SystemExit(report_errors("measure_gap", main))
