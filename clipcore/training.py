"""What every training recipe shares: periodic checkpoints, resuming, per-rank random streams.

:class:`TrainingCLI` is the ``LightningCLI`` of ``recipes/train_*.py``. Scaling out
needs no code: ``--trainer.devices``, ``--trainer.num_nodes``, ``--trainer.strategy
ddp``, ``--trainer.precision bf16-mixed`` and ``--trainer.accumulate_grad_batches`` are
Lightning's, and :class:`clipcore.datamodule.ShardDataModule` gives every rank its own
samples. On top of that it adds:

* ``--checkpoint.*``: a :class:`StepCheckpoint` that saves every
  ``every_n_train_steps`` optimiser steps (1000 by default) into
  ``<trainer.default_root_dir>/checkpoints/``, keeps the ``save_top_k`` newest (3) and
  ``last.ckpt`` (also written when training ends; ``save_on_exception`` also saves when
  a SIGTERM, e.g. a preemption, stops the run). The folder does not depend on the
  logger's version, so rerunning the same command with ``--ckpt_path last`` finds the
  checkpoint of the run it replaces (the logs of each attempt go to a new
  ``lightning_logs/version_<n>``).
* ``--random_state.*``: :class:`RankRandomState`, which seeds each rank's global random
  generators (Python, NumPy, torch, CUDA) from ``(seed_everything, global rank, global
  step)`` when training starts, so ranks draw different noise and a resumed run goes on
  with a fresh, reproducible stream instead of replaying the one from step 0.

What ``--ckpt_path last`` restores: weights (and the CLIPSonic EMA weights), optimiser
state, learning-rate schedule, global step and epoch, loop progress, callback states
(Lightning); and the shard stream's epoch and position (the training loader of
:class:`~clipcore.datamodule.ShardDataModule` is resumable). Not restored bit-exactly: the
random generators and the rest of the interrupted epoch's shard stream are re-seeded
from the step and position rather than rewound (the shuffle buffer is lost), so a
resumed run is deterministic but not identical to an uninterrupted one; map-style
loaders (the prior's pairs) restart the interrupted epoch's permutation.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from clipcore.cli import EXPECTED_ERRORS
from clipcore.shards import ShardError

__all__ = ["TrainingCLI", "StepCheckpoint", "RankRandomState", "rank_seed", "log_dir", "run_recipe"]

CHECKPOINT_EVERY = 1000


def log_dir(trainer) -> Path:
    """The run's log folder, as ``Trainer.log_dir`` finds it but without its broadcast:
    that is a collective, and DDP hangs when only global rank 0 asks for it."""
    logger = trainer.loggers[0] if trainer.loggers else None
    folder = (getattr(logger, "log_dir", None) or logger.save_dir) if logger is not None else None
    return Path(folder or trainer.default_root_dir)


def rank_seed(seed: int, rank: int, step: int) -> int:
    """A 32-bit seed for one rank at one step (distinct ranks and steps, distinct seeds)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


class RankRandomState(Callback):
    """Seed each rank's global random generators from ``(seed, rank, global step)`` when
    training starts (after a checkpoint was restored).

    Args:
        seed: base seed; None takes ``seed_everything``'s (``PL_GLOBAL_SEED``), else 0.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def on_train_start(self, trainer, pl_module) -> None:
        base = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        value = rank_seed(base, trainer.global_rank, trainer.global_step)
        random.seed(value)
        np.random.seed(value)
        torch.manual_seed(value)  # also every CUDA device


class StepCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` whose ``last.ckpt`` also holds the final state of a finished
    run (Lightning's writes it at the end only when it never wrote one), so that
    rerunning a finished job with ``--ckpt_path last`` does not repeat its last steps."""

    def on_train_end(self, trainer, pl_module) -> None:
        if self.save_last and not trainer.fast_dev_run and trainer.global_step > 0:
            trainer.save_checkpoint(self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST), self.save_weights_only)


class TrainingCLI(LightningCLI):
    """``LightningCLI`` with the project's checkpointing and random-state conventions."""

    def add_default_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_default_arguments_to_parser(parser)
        parser.add_lightning_class_args(StepCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.every_n_train_steps": CHECKPOINT_EVERY,
            "checkpoint.save_last": True,
            "checkpoint.save_top_k": 3,
            "checkpoint.monitor": "step",
            "checkpoint.mode": "max",
        })
        parser.add_lightning_class_args(RankRandomState, "random_state")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.trainer.get("enable_checkpointing") is False:  # Lightning refuses a ModelCheckpoint then
            keys = self._parser(self.subcommand).callback_keys
            if "checkpoint" in keys:
                keys.remove("checkpoint")
        elif config.get("checkpoint") is not None and config.checkpoint.get("dirpath") is None:
            root = config.trainer.get("default_root_dir") or os.getcwd()
            config.checkpoint.dirpath = str(Path(root) / "checkpoints")


def run_recipe(main: Callable[[], object], name: str) -> None:
    """Run a recipe's ``main``; expected failures (bad files, shards, checkpoints, values)
    end the process with one line ``<name>: error: ...`` and status 1, not a traceback."""
    try:
        main()
    except (*EXPECTED_ERRORS, ShardError) as error:
        sys.exit(f"{name}: error: {error}")
