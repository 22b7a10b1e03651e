"""Training-step speed of the quick start's two models on this CPU, float32 against bf16 autocast.

Prints one JSON line: for CLIPSep (``recipes/configs/clipsep/toy.yaml``'s CLIPSep-NIT with
``--clipsep-width`` channels, a batch of 8 two-source mixtures of its 1-second segment) and
CLIPSonic (``recipes/configs/clipsonic/toy.yaml``, a batch of 16 half-second clips), the
seconds of a training step (forward, loss, backward, optimizer step; CLIPSonic's EMA
update too) in float32 and under bf16 autocast (what Lightning's ``bf16-mixed`` runs), the
float32-to-bf16 ratio, the thread count, and which bf16 hardware the CPU reports
(``amx_tile``: AMX matrix tiles; ``avx512_bf16``: bf16 dot products in AVX-512). The quick
start trains CLIPSep in bf16 only where ``amx_tile`` is present (``recipes/quickstart.py``).
Random weights and audio (speed does not depend on them); one thread by default, as each of
the quick start's two training lanes.

Usage: ``python benchmarks/toy_train_steps.py [--steps 10] [--threads 1] [--clipsep-width 8]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from clipcore.shard_stream import MixBatch
from clipsep.system import CLIPSepSystem
from clipsonic.system import CLIPSonicSystem

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"
TOY_CLIP_DIM = 32
"""The toy CLIP's embedding size (``recipes/align_toy_clip.py``'s default)."""


def _model_settings(name: str) -> dict:
    """The ``model`` section of ``recipes/configs/<name>/toy.yaml``, without its query encoder
    (a folder the quick start makes; the benchmark gives the embedding size instead)."""
    model = yaml.safe_load((CONFIGS / name / "toy.yaml").read_text())["model"]
    model.pop("query_encoder", None)
    return model


def _batch(size: int, sources: int, samples: int, dim: int, generator: torch.Generator) -> MixBatch:
    waves = 0.1 * torch.randn(size, sources, samples, generator=generator)
    embeddings = F.normalize(torch.randn(size, sources, dim, generator=generator), dim=-1)
    return MixBatch(waves.sum(1), waves, embeddings, None, [[None] * sources] * size, [["a", "b"][:sources]] * size)


def clipsep_step(width: int, generator: torch.Generator):
    """A training step of the quick start's CLIPSep-NIT (noise-invariant loss from the first step)."""
    settings = _model_settings("clipsep")
    settings["model_args"] = {**settings["model_args"], "base_channels": width, "mask_channels": width}
    system = CLIPSepSystem(**{**settings, "nit_warmup_steps": 0})
    batch = _batch(8, 2, settings["model_args"]["segment_samples"], system.model.query_dim, generator)
    optimizer = system.configure_optimizers()["optimizer"]
    system.train()

    def step() -> None:
        loss = system.loss_terms(system.outputs(batch))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def clipsonic_step(generator: torch.Generator):
    """A training step of the quick start's CLIPSonic: diffusion loss with condition dropout,
    AdamW, gradient clipping at 1 (the config's trainer) and the EMA update."""
    settings = _model_settings("clipsonic")
    system = CLIPSonicSystem(**settings, embed_dim=TOY_CLIP_DIM)
    batch = _batch(16, 1, 8000, TOY_CLIP_DIM, generator)
    optimizer = system.configure_optimizers()["optimizer"]
    system.train()

    def step() -> None:
        loss = system.diffusion_loss(system.model, batch, dropout=settings["condition_dropout"])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(system.model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            for averaged, live in zip(system.ema.parameters(), system.model.parameters()):
                averaged.lerp_(live, 1 - settings["ema_decay"])

    return step


def seconds_per_step(step, bf16: bool, steps: int) -> float:
    """Median wall seconds of ``steps`` steps (after two warm-up steps), bf16 autocast or not."""
    times = []
    for k in range(steps + 2):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            step()
        if k >= 2:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model and precision (default: 10)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, one training lane)")
    parser.add_argument("--clipsep-width", type=int, default=8, help="CLIPSep's base and mask channels (default: 8)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    flags = _cpu_flags()
    result: dict = {"benchmark": "toy_train_steps", "threads": torch.get_num_threads(),
                    "clipsep_width": args.clipsep_width, "amx_tile": "amx_tile" in flags,
                    "avx512_bf16": "avx512_bf16" in flags}
    for name, step in (("clipsep", clipsep_step(args.clipsep_width, generator)), ("clipsonic", clipsonic_step(generator))):
        # float32, bf16, then both again: the second pair is kept (caches and allocator warm)
        for _ in range(2):
            fp32, bf16 = (seconds_per_step(step, enabled, args.steps) for enabled in (False, True))
        result |= {f"{name}_s_fp32": round(fp32, 4), f"{name}_s_bf16": round(bf16, 4),
                   f"{name}_fp32_over_bf16": round(fp32 / bf16, 2)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
