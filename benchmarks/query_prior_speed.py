"""Speed of the query encoder and the diffusion prior on this machine.

Randomly initialised models of the published sizes (speed does not depend on the weights):
CLIP ViT-B/32 image and text towers (CLIPSep's encoder; images at any size, CLIP
preprocessing included) and a prior of the VGGSound recipe's size (12 layers, 16 heads of
64, 768-d), sampled with 25 DDIM steps and classifier-free guidance. Prints one JSON line.

    python benchmarks/query_prior_speed.py [--images 64] [--texts 256] [--queries 16] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import time

import open_clip
import torch

from clipcore.prior import DiffusionPrior
from clipcore.query import QueryEncoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    encoder = QueryEncoder(open_clip.get_model_config("ViT-B-32-quickgelu"), name="vit-b-32-random",
                           architecture="ViT-B-32")
    images = torch.randint(0, 256, (args.images, 3, 360, 640), dtype=torch.uint8)
    encoder.encode_image(images[:2])
    start = time.perf_counter()
    encoder.encode_image(images, batch_size=32)
    image_rate = args.images / (time.perf_counter() - start)

    texts = [f"a photo of instrument number {i}" for i in range(args.texts)]
    start = time.perf_counter()
    encoder.encode_text(texts)
    text_rate = args.texts / (time.perf_counter() - start)
    start = time.perf_counter()
    encoder.encode_text(texts)
    cached_rate = args.texts / (time.perf_counter() - start)

    prior = DiffusionPrior(768, {"num_layers": 12, "num_attention_heads": 16, "attention_head_dim": 64}).eval()
    queries = torch.nn.functional.normalize(torch.randn(args.queries, 768), dim=-1)
    prior.sample(queries[:1], steps=2)
    start = time.perf_counter()
    prior.sample(queries, steps=25, guidance=2.0, generator=torch.Generator().manual_seed(0))
    prior_seconds = time.perf_counter() - start

    print(json.dumps({
        "benchmark": "query_prior_speed",
        "threads": torch.get_num_threads(),
        "clip_vit_b_32_images_per_s": round(image_rate, 1),
        "clip_vit_b_32_texts_per_s": round(text_rate, 1),
        "clip_vit_b_32_cached_texts_per_s": round(cached_rate, 1),
        "prior_params_m": round(sum(p.numel() for p in prior.parameters()) / 1e6, 1),
        "prior_25_steps_seconds": round(prior_seconds, 2),
        "prior_queries": args.queries,
    }))


if __name__ == "__main__":
    main()
