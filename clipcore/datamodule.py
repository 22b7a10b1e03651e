"""Training, validation and test batches from video shards for Lightning:
:class:`ShardDataModule` (the only shard module that imports Lightning).

Usage::

    data = ShardDataModule(train_shards="shards/train-{000000..000099}.tar",
                           val_shards="shards/val-*.tar", encoder="clip-vit-b-32-openai",
                           epoch_length=1000)
    for batch in data.train_dataloader():      # clipcore.shard_stream.MixBatch
        batch.mixture, batch.sources, batch.embeddings
"""

from __future__ import annotations

import warnings

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from clipcore.errors import ClipAudioError
from clipcore.shard_stream import ShardStream
from clipcore.shards import ShardError
from clipcore.training import run_seed

__all__ = ["ShardDataModule"]


def _worker_reason(error: Exception) -> str:
    """The one-sentence message of an error a ``DataLoader`` worker raised.

    Torch re-raises it in the main process with the worker's traceback as its message
    (``Caught ShardError in DataLoader worker process 0.`` ... ``clipcore.shards.ShardError:
    <message>``); this is the ``<message>`` (an error from the main process is returned as is).
    """
    message = str(error)
    if not message.startswith(f"Caught {type(error).__name__} in DataLoader worker"):
        return message
    _, _, reason = message.rpartition(f"{type(error).__module__}.{type(error).__qualname__}: ")
    return reason.strip()


class _EpochLoader(DataLoader):
    """A ``DataLoader`` that tells its :class:`ShardStream` the epoch and the rank before
    its workers start, so that every epoch draws new mixtures.

    It is resumable for Lightning (``state_dict`` / ``load_state_dict``, saved in the
    checkpoint's loop state): the state is the epoch and the batches taken from it, and a
    restored loader continues with that epoch and a stream seeded by that position
    (:attr:`ShardStream.resume_offset`), not with a replay of epoch 0.
    """

    def __iter__(self):
        stream = self.dataset
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            stream.rank, stream.world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        stream.epoch = getattr(self, "_epochs_started", 0)
        stream.resume_offset, self._resume_offset = getattr(self, "_resume_offset", 0), 0
        self._epochs_started, self._taken = stream.epoch + 1, stream.resume_offset
        return self._count(super().__iter__())

    def _count(self, batches):
        try:
            for batch in batches:
                self._taken += 1
                yield batch
        except ClipAudioError as error:  # from a loader worker, torch puts the worker's traceback in the message
            raise type(error)(_worker_reason(error)) from None

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": current epoch, "batches": batches taken from it so far}``."""
        return {"epoch": max(0, getattr(self, "_epochs_started", 0) - 1), "batches": getattr(self, "_taken", 0)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Continue at ``state_dict``'s position with the next ``iter()`` (the next epoch
        if that one was complete)."""
        epoch, batches = int(state_dict["epoch"]), int(state_dict["batches"])
        if self.dataset.epoch_length is not None and batches >= self.dataset.epoch_length:
            epoch, batches = epoch + 1, 0
        self._epochs_started, self._resume_offset = epoch, batches


class ShardDataModule(LightningDataModule):
    """Training, validation and test batches (:class:`~clipcore.shard_stream.MixBatch`) from video shards.

    Args:
        train_shards: training shards (see :func:`clipcore.shards.expand_shards`).
        val_shards: validation shards, or None.
        test_shards: test shards, or None; read like the validation shards.
        num_sources: clips per mixture: 2 for CLIPSep, 1 for CLIPSonic (no mixing).
        segment_samples: samples per crop (65535 for CLIPSep at 16 kHz).
        sample_rate: audio rate of the batches.
        batch_size: mixtures per batch.
        num_workers: data-loading processes per rank.
        encoder: ``<encoder>.npy`` member holding precomputed CLIP embeddings (for
            example ``clip-vit-b-32-openai``), or None to deliver frames.
        query_frames: frames per query: 3 for CLIPSep, 1 (a random frame) for CLIPSonic.
        epoch_length: training batches per epoch per rank (resampled, infinite shards:
            use it for multi-GPU runs, where it keeps every rank in step); None reads the
            training shards once per epoch. Validation always reads its shards once,
            split among workers (by shard, or by sample when shards are fewer than
            workers); under DDP every rank reads all of them, because ranks that run
            unequal numbers of validation steps hang (DDP synchronises buffers at every
            forward), so validation metrics equal the single-device ones.
        seed: seed of the training stream's crops, gains, pairs and shuffling; None (the
            default) takes the run's ``seed_everything``, so that training seeds vary the
            data as well as the initial weights. Validation and test mixtures are drawn
            with ``seed`` when given, else 0: the same whatever the training seed.
        shuffle_buffer: samples held for shuffling per worker.
        frame_size: square size of delivered frames.
        in_memory: hold the shards in memory, audio decoded, after their first read (see
            :class:`~clipcore.shard_stream.ShardStream`): for data sets that fit in memory.
        distinct_queries: training mixes clips whose query embeddings' cosine is at most
            this where it can (see :class:`~clipcore.shard_stream.ShardStream`); None mixes
            them as they come, as the papers do.
    """

    def __init__(
        self,
        train_shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        test_shards: str | list[str] | None = None,
        num_sources: int = 2,
        segment_samples: int = 65535,
        sample_rate: int = 16000,
        batch_size: int = 32,
        num_workers: int = 4,
        encoder: str | None = None,
        query_frames: int = 3,
        epoch_length: int | None = None,
        seed: int | None = None,
        shuffle_buffer: int = 256,
        frame_size: int = 224,
        in_memory: bool = False,
        distinct_queries: float | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_shards, self.val_shards, self.test_shards = train_shards, val_shards, test_shards
        self.num_workers = num_workers
        self.epoch_length = epoch_length
        self.seed = seed
        self.common = dict(
            num_sources=num_sources,
            batch_size=batch_size,
            segment_samples=segment_samples,
            sample_rate=sample_rate,
            encoder=encoder,
            query_frames=query_frames,
            shuffle_buffer=shuffle_buffer,
            frame_size=frame_size,
            in_memory=in_memory,
            distinct_queries=distinct_queries,
        )

    def stream_seed(self, train: bool) -> int:
        """The seed of the training (``train``) or of the validation and test streams."""
        if self.seed is not None:
            return self.seed
        return run_seed() if train else 0

    def _loader(self, shards, train: bool) -> DataLoader:
        stream = ShardStream(shards, train=train, epoch_length=self.epoch_length if train else None,
                             seed=self.stream_seed(train), **self.common)
        return _EpochLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        """Training batches (shuffled; resampled when ``epoch_length`` is set)."""
        if self.train_shards is None:
            raise ShardError("no train_shards configured.")
        if self.epoch_length is None and self.trainer is not None and self.trainer.world_size > 1:
            raise ShardError(
                "training on several devices needs data.epoch_length (resampled shards): read once, the shards "
                "give the ranks unequal numbers of batches, and DDP waits forever for the rank that ran out."
            )
        # The length is exact: every worker makes its own share of the epoch.
        warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
        return self._loader(self.train_shards, train=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches (centred crops, fixed pairs and gains); empty without val_shards."""
        if self.val_shards is None:
            return []
        return self._loader(self.val_shards, train=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches, read like validation batches (``test_shards`` is required)."""
        if self.test_shards is None:
            raise ShardError("no test_shards configured.")
        return self._loader(self.test_shards, train=False)
