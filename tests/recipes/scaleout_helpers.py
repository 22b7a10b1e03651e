"""Callbacks and data the scale-out tests inject into the real training recipes.

They are passed on the recipe's command line (``--trainer.callbacks+=...``), so the
recipes run as users run them, in their own processes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

from clipcore.query import QueryEncoder
from clipcore.synthetic import write_toy_shards

ROOT = Path(__file__).resolve().parents[2]
SEGMENT = 16383  # 64 STFT frames: two 32-frame blocks of the toy config's 5-level U-Net


def toy_shards(root: Path, clips: int, shard_size: int) -> str:
    """Toy shards with the tiny query encoder's embeddings; returns the encoder name."""
    encoder = QueryEncoder.tiny(embed_dim=32)
    write_toy_shards(root, clips, seed=0, shard_size=shard_size, duration=1.1, frame_size=32, encoder=encoder)
    return encoder.name


def clipsep_args(shards: str, encoder: str, run_dir: Path, records: Path, *extra: str) -> list[str]:
    """``fit`` arguments of the CLIPSep recipe: the toy config, the tiny model on toy shards
    with precomputed embeddings, the schedule fixed here (Adam 1e-3, 2 warm-up steps, decay
    to 0.1x at step 6), no validation, and a :class:`Record` callback."""
    return [
        "fit", "--config", str(ROOT / "recipes" / "configs" / "clipsep" / "toy.yaml"),
        "--model.query_encoder", "null", "--model.learning_rate", "0.001", "--model.warmup_steps", "2",
        "--model.decay_steps", "6",
        "--data.train_shards", shards, "--data.val_shards", "null", "--data.encoder", encoder,
        "--data.batch_size", "2", "--data.segment_samples", str(SEGMENT), "--data.shuffle_buffer", "4",
        "--data.num_workers", "0", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(run_dir),
        "--trainer.callbacks+=tests.recipes.scaleout_helpers.Record", "--trainer.callbacks.folder", str(records),
        *extra,
    ]


def run_recipe(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the CLIPSep recipe in its own process group, killed whole on a timeout (a hung
    DDP run leaves rank processes behind otherwise)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, str(ROOT / "recipes" / "train_clipsep.py"), *args], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        err += f"\n(killed after {timeout} s)"
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def read_records(folder: Path) -> list[dict]:
    """All records the :class:`Record` callbacks of every rank wrote, in order."""
    return [json.loads(line) for path in sorted(folder.glob("rank*.jsonl")) for line in path.read_text().splitlines()]


class Record(Callback):
    """Append one JSON line per training batch (rank, step, sample keys, loss, a random
    draw) and one at the start of training (step, scheduler position, optimizer steps)
    to ``<folder>/rank<r>.jsonl``."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def _write(self, trainer, record: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"rank{trainer.global_rank}.jsonl", "a") as handle:
            handle.write(json.dumps({"rank": trainer.global_rank, "world": trainer.world_size, **record}) + "\n")

    def on_train_start(self, trainer, pl_module) -> None:
        optimizer = trainer.optimizers[0]
        steps = [float(state["step"]) for state in optimizer.state.values() if "step" in state]
        self._write(trainer, {
            "event": "start",
            "step": trainer.global_step,
            "scheduler_steps": trainer.lr_scheduler_configs[0].scheduler.last_epoch,
            "optimizer_steps": max(steps, default=0.0),
            "lr": optimizer.param_groups[0]["lr"],
        })

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self._write(trainer, {
            "event": "batch",
            "step": trainer.global_step,
            "batch_idx": batch_idx,
            "keys": [key for keys in batch.keys for key in keys],
            "loss": float(loss) if loss is not None else math.nan,
            "precision": str(trainer.precision),
            "random": torch.rand(()).item(),  # a draw from this rank's global generator
        })


class PauseAt(Callback):
    """At ``step``, write ``<marker>`` and wait (until a SIGTERM, at most 10 minutes), so
    that a test can signal the process in a known state (the checkpoint of an earlier
    step written, none after it)."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.marker.write_text(str(trainer.global_step))
            deadline = time.monotonic() + 600
            while not trainer.received_sigterm and time.monotonic() < deadline:
                time.sleep(0.05)


def start_paused(args: list[str], step: int, marker: Path) -> subprocess.Popen:
    """Start the CLIPSep recipe with a :class:`PauseAt` and wait until it pauses."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    pause = ["--trainer.callbacks+=tests.recipes.scaleout_helpers.PauseAt", "--trainer.callbacks.step", str(step),
             "--trainer.callbacks.marker", str(marker)]
    process = subprocess.Popen([sys.executable, str(ROOT / "recipes" / "train_clipsep.py"), *args, *pause],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if not marker.exists():
        process.kill()
        raise AssertionError(f"the run did not reach step {step}:\n{process.communicate()[1][-3000:]}")
    return process
