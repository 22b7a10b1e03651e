"""Video shards: writing them, reading them, and mixing their clips into training batches.

A shard is a webdataset tar file with one sample per video clip, key
``<dataset>/<video_id>/<start_ms>`` and members ``flac`` (mono audio), ``0.jpg``,
``1.jpg``, ... (frames at ``fps``; frame ``k`` shows time ``(k + 0.5) / fps``), ``json``
(metadata) and optionally ``<encoder>.npy`` (float16 CLIP image embeddings, frames x dim).

Training mixes the audio of ``num_sources`` clips (mix-and-separate); each clip keeps its
query: the embedding averaged over its query frames, or the frames themselves.

Usage::

    data = ShardDataModule(train_shards="shards/train-{000000..000099}.tar",
                           val_shards="shards/val-*.tar", encoder="clip-vit-b-32-openai",
                           epoch_length=1000)
    for batch in data.train_dataloader():      # MixBatch
        batch.mixture, batch.sources, batch.embeddings
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import soundfile as sf
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.shardlists import expand_urls
from webdataset.tariterators import tarfile_samples

from clipcore.audio import resample
from clipcore.files import atomic_write

__all__ = [
    "ShardSample",
    "ShardError",
    "CorruptSampleWarning",
    "write_shard",
    "frame_embeddings",
    "expand_shards",
    "MixBatch",
    "ShardStream",
    "ShardDataModule",
]

JPEG_QUALITY = 90
MAX_FAILURES_IN_A_ROW = 200
"""A stream stops with :class:`ShardError` after this many unusable samples in a row: that
is a misconfiguration (for example an ``encoder`` whose member the shards lack), not
corruption."""
WARN_FIRST = 10
"""Each skip is warned about up to this many; after that, every 100th skip."""


class ShardError(ValueError):
    """Shards that cannot be used at all (none found, none readable), in one sentence."""


class CorruptSampleWarning(UserWarning):
    """A sample or shard was skipped; training goes on."""


def _safe(part: str) -> str:
    # webdataset splits a member name at the first dot of its base name.
    return str(part).replace(".", "_").replace("/", "_") or "_"


# ----------------------------------------------------------------------------- writing


@dataclass
class ShardSample:
    """One clip as stored in a shard.

    Attributes:
        dataset: dataset name (first part of the key).
        video_id: video identifier (dots and slashes become underscores in the key).
        start: clip start in the source video, seconds.
        audio: float32 ``[S]`` mono in ``[-1, 1]`` (stored as 16-bit FLAC).
        sample_rate: audio rate.
        frames: uint8 ``[F, H, W, 3]`` RGB (stored as JPEG).
        fps: frame rate.
        label: optional label (evaluation metadata only).
        embeddings: ``{encoder name: [F, D] array}``, stored as float16 ``<name>.npy``.
    """

    dataset: str
    video_id: str
    start: float
    audio: np.ndarray
    sample_rate: int
    frames: np.ndarray
    fps: float
    label: str | None = None
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """``<dataset>/<video_id>/<start_ms>``."""
        return f"{_safe(self.dataset)}/{_safe(self.video_id)}/{int(round(self.start * 1000))}"

    def members(self) -> dict[str, bytes]:
        """Tar members of this sample: ``{suffix: bytes}``."""
        audio = np.asarray(self.audio, dtype=np.float32)
        if audio.ndim != 1 or len(audio) == 0 or not np.isfinite(audio).all():
            raise ValueError(f"{self.key}: audio must be a finite, non-empty mono array.")
        flac = io.BytesIO()
        sf.write(flac, np.clip(audio, -1.0, 1.0), int(self.sample_rate), format="FLAC", subtype="PCM_16")
        meta = {
            "dataset": self.dataset,
            "video_id": self.video_id,
            "start": float(self.start),
            "duration": len(audio) / self.sample_rate,
            "sample_rate": int(self.sample_rate),
            "fps": float(self.fps),
        }
        if self.label is not None:
            meta["label"] = self.label
        out = {"flac": flac.getvalue(), "json": json.dumps(meta).encode()}
        for k, image in enumerate(self.frames):
            jpeg = io.BytesIO()
            Image.fromarray(np.asarray(image, dtype=np.uint8)).save(jpeg, format="JPEG", quality=JPEG_QUALITY)
            out[f"{k}.jpg"] = jpeg.getvalue()
        for name, array in self.embeddings.items():
            npy = io.BytesIO()
            np.save(npy, np.asarray(array, dtype=np.float16), allow_pickle=False)
            out[f"{name}.npy"] = npy.getvalue()
        return out


def write_shard(path: str | os.PathLike, samples: Iterable[ShardSample]) -> Path:
    """Write samples into one tar shard, atomically (a temporary name, then a rename).

    Returns:
        The shard path.
    """

    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w") as tar:
            for sample in samples:
                for suffix, data in sample.members().items():
                    info = tarfile.TarInfo(f"{sample.key}.{suffix}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tar.addfile(info, io.BytesIO(data))

    return atomic_write(path, write)


def frame_embeddings(encoder, frames: np.ndarray) -> np.ndarray:
    """CLIP image embeddings of frames with a ``QueryEncoder``.

    Args:
        encoder: has ``encode_image(uint8 [F, 3, H, W]) -> [F, D]``.
        frames: uint8 ``[F, H, W, 3]``.

    Returns:
        float16 ``[F, D]``.
    """
    images = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    with torch.inference_mode():
        return encoder.encode_image(images).float().cpu().numpy().astype(np.float16)


# ----------------------------------------------------------------------------- reading


def expand_shards(spec: str | Sequence[str]) -> list[str]:
    """Shard URLs from a spec: braces (``a-{000..009}.tar``), ``::`` lists, local globs and
    folders (all ``*.tar`` inside), ``pipe:`` commands and URLs (passed to webdataset).

    Raises:
        ShardError: nothing matches, or a local shard does not exist.
    """
    specs = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for item in specs:
        for url in expand_urls(str(item)):
            if url.startswith("pipe:") or "://" in url:
                urls.append(url)
            elif any(char in url for char in "*?["):
                found = sorted(glob.glob(url, recursive=True))
                if not found:
                    raise ShardError(f"no shards match {url}.")
                urls.extend(found)
            elif os.path.isdir(url):
                found = sorted(glob.glob(os.path.join(url, "*.tar")))
                if not found:
                    raise ShardError(f"{url}: folder holds no .tar shards.")
                urls.extend(found)
            elif not os.path.isfile(url):
                raise ShardError(f"{url}: no such shard.")
            else:
                urls.append(url)
    if not urls:
        raise ShardError(f"no shards given ({spec!r}).")
    return urls


class _CorruptSample(Exception):
    pass


@dataclass
class _Clip:
    key: str
    label: str | None
    audio: torch.Tensor  # [S]
    query: torch.Tensor  # [D] float32 or [F, 3, H, W] uint8


@dataclass
class MixBatch:
    """A batch of mixtures and the sources they were made of.

    Attributes:
        mixture: float32 ``[B, S]``, equal to ``sources.sum(1)``.
        sources: float32 ``[B, N, S]``, each scaled by a gain in 0.5-1.5 divided by N
            (no scaling when N is 1).
        embeddings: float32 ``[B, N, D]`` CLIP image embeddings (mean over the query
            frames, not re-normalised), or None when frames are delivered.
        frames: uint8 ``[B, N, F, 3, H, W]`` query frames, or None with embeddings.
        labels: ``[B][N]`` labels (None where a clip has none).
        keys: ``[B][N]`` sample keys.
        skipped: samples or shards skipped (corrupt) while this batch was assembled.
    """

    mixture: torch.Tensor
    sources: torch.Tensor
    embeddings: torch.Tensor | None
    frames: torch.Tensor | None
    labels: list[list[str | None]]
    keys: list[list[str]]
    skipped: int = 0

    def _apply(self, fn) -> "MixBatch":
        changes = {f.name: fn(getattr(self, f.name)) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **changes)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "MixBatch":
        """The batch with its tensors on ``device``."""
        return self._apply(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "MixBatch":
        """The batch with its tensors in pinned memory (used by ``DataLoader(pin_memory=True)``)."""
        return self._apply(lambda t: t.pin_memory())

    def __len__(self) -> int:
        return self.mixture.shape[0]


class ShardStream(IterableDataset):
    """Mixture batches from shards: an ``IterableDataset`` yielding :class:`MixBatch`.

    Each (rank, worker) pair -- a consumer -- reads its own part of the training data
    (validation is split among workers only, and every rank reads all of it): the shards
    are split among consumers when there are at least as many shards, otherwise the
    samples of each shard are (by index), so no two consumers ever see the same
    sample. Each consumer draws with a generator seeded by
    ``(seed, epoch, rank, worker)`` (validation ignores the epoch), so a run is
    deterministic for a given seed, world size and number of workers. A run resumed
    mid-epoch (``resume_offset`` batches already done) draws a new, equally
    deterministic stream for the rest of that epoch instead of replaying its start.

    Two modes:
      * ``epoch_length`` set (resampled): every consumer draws its shards at random,
        forever, and an epoch is exactly ``epoch_length`` batches per rank whatever the
        number of shards, ranks and workers (no rank starves, none hangs).
      * ``epoch_length=None`` (one pass): the shards are read once, split among
        consumers by shard when there are enough shards, otherwise by sample.

    Args:
        shards: see :func:`expand_shards`.
        num_sources: clips per mixture (N).
        batch_size: mixtures per batch (B).
        segment_samples: samples per crop (S); shorter clips are zero-padded.
        sample_rate: output rate; shards at another rate are resampled.
        encoder: name of the ``<encoder>.npy`` member to use, or None for frames.
        query_frames: frames per query (F): consecutive frames inside the segment.
        train: random crops, frames and shuffling (else centred and in order).
        epoch_length: batches per epoch per rank in resampled mode, or None.
        shuffle_buffer: samples held for shuffling (training only).
        frame_size: frames are resized (short side) and centre-cropped to this square.
        seed: base seed.
    """

    def __init__(
        self,
        shards: str | Sequence[str],
        num_sources: int = 2,
        batch_size: int = 32,
        segment_samples: int = 65535,
        sample_rate: int = 16000,
        encoder: str | None = None,
        query_frames: int = 3,
        train: bool = True,
        epoch_length: int | None = None,
        shuffle_buffer: int = 256,
        frame_size: int = 224,
        seed: int = 0,
    ) -> None:
        if num_sources < 1 or batch_size < 1 or segment_samples < 1 or query_frames < 1:
            raise ValueError("num_sources, batch_size, segment_samples and query_frames must be positive.")
        if epoch_length is not None and epoch_length < 1:
            raise ValueError(f"epoch_length must be positive, not {epoch_length}.")
        self.urls = expand_shards(shards)
        self.num_sources, self.batch_size = num_sources, batch_size
        self.segment_samples, self.sample_rate = segment_samples, sample_rate
        self.encoder, self.query_frames, self.frame_size = encoder, query_frames, frame_size
        self.train, self.epoch_length, self.shuffle_buffer, self.seed = train, epoch_length, shuffle_buffer, seed
        self.epoch, self.rank, self.world_size = 0, 0, 1
        self.resume_offset = 0  # batches of this epoch done before a restart
        self.skipped = 0  # samples skipped by this process (per worker with workers)
        self._pending = 0

    def __len__(self) -> int:
        if self.epoch_length is None:
            raise TypeError("a one-pass ShardStream has no known length; set epoch_length.")
        return self.epoch_length

    # -- consumers and randomness

    def _consumer(self) -> tuple[int, int, int]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if not self.train:  # every rank reads all of it: DDP hangs when ranks run unequal steps
            return worker, workers, workers
        return self.rank * workers + worker, self.world_size * workers, workers

    def __iter__(self) -> Iterator[MixBatch]:
        consumer, consumers, workers = self._consumer()
        epoch = self.epoch if self.train else 0
        resumed = [self.resume_offset] if self.train and self.resume_offset else []
        rng = np.random.default_rng([self.seed, epoch, consumer, *resumed])
        if self.epoch_length is not None:
            worker = consumer % workers
            limit = self.epoch_length // workers + (worker < self.epoch_length % workers)
            raw = self._resampled(rng, consumer, consumers)
        else:
            limit = None
            raw = self._one_pass(rng, consumer, consumers)
        if self.train:
            raw = _shuffle(raw, self.shuffle_buffer, rng)
        yield from self._batches(raw, rng, limit)

    def _read(self, url: str) -> Iterator[dict]:
        def on_error(error: Exception) -> bool:
            self._skip(f"{url}: {str(error).splitlines()[0] if str(error) else type(error).__name__}")
            return True

        yield from tarfile_samples([{"url": url}], handler=on_error)

    def _mine(self, url: str, consumer: int, consumers: int, by_shard: bool) -> Iterator[dict]:
        """The samples of one shard that belong to this consumer: all of them when the
        shards are split among consumers, else sample ``i`` of shard ``u`` (its position
        in :attr:`urls`) when ``(u + i) % consumers == consumer``."""
        first = 0 if by_shard else self.urls.index(url)
        for index, sample in enumerate(self._read(url)):
            if by_shard or (first + index) % consumers == consumer:
                yield sample

    def _resampled(self, rng: np.random.Generator, consumer: int, consumers: int) -> Iterator[dict]:
        by_shard = len(self.urls) >= consumers
        urls = self.urls[consumer::consumers] if by_shard else self.urls
        empty = 0
        while True:
            found = False
            for sample in self._mine(urls[int(rng.integers(len(urls)))], consumer, consumers, by_shard):
                found = True
                yield sample
            empty = 0 if found else empty + 1
            if empty >= max(20, 3 * len(urls)):
                raise ShardError(
                    f"{empty} shard reads in a row gave no samples to consumer {consumer} of {consumers} "
                    "(ranks x workers); are the shards readable and do they hold enough samples?"
                )

    def _one_pass(self, rng: np.random.Generator, consumer: int, consumers: int) -> Iterator[dict]:
        by_shard = len(self.urls) >= consumers
        urls = self.urls[consumer::consumers] if by_shard else list(self.urls)
        if self.train:
            urls = [urls[i] for i in rng.permutation(len(urls))]
        for url in urls:
            yield from self._mine(url, consumer, consumers, by_shard)

    # -- decoding and mixing

    def _skip(self, reason: str) -> None:
        self.skipped += 1
        self._pending += 1
        if self.skipped <= WARN_FIRST or self.skipped % 100 == 0:
            warnings.warn(f"skipped ({self.skipped} so far): {reason}", CorruptSampleWarning, stacklevel=2)

    def _batches(self, raw: Iterator[dict], rng: np.random.Generator, limit: int | None) -> Iterator[MixBatch]:
        need = self.batch_size * self.num_sources
        clips: list[_Clip] = []
        made = failures = 0
        if limit == 0:
            return
        for sample in raw:
            try:
                clips.append(self._decode(sample, rng))
                failures = 0
            except _CorruptSample as error:
                self._skip(str(error))
                failures += 1
                if failures >= MAX_FAILURES_IN_A_ROW:
                    raise ShardError(f"{failures} samples in a row could not be used; the last: {error}") from None
                continue
            if len(clips) == need:
                yield self._mix(clips, rng)
                clips, made = [], made + 1
                if limit is not None and made >= limit:
                    return
        if not self.train and len(clips) >= self.num_sources:  # a last, smaller batch
            yield self._mix(clips[: len(clips) // self.num_sources * self.num_sources], rng)

    def _decode(self, sample: dict, rng: np.random.Generator) -> _Clip:
        key = f"{sample.get('__key__')} in {sample.get('__url__')}"
        try:
            meta = json.loads(sample["json"]) if "json" in sample else {}
            with sf.SoundFile(io.BytesIO(sample["flac"])) as handle:
                rate, total = handle.samplerate, handle.frames
                want = int(np.ceil(self.segment_samples * rate / self.sample_rate))
                room = max(0, total - want)
                offset = int(rng.integers(room + 1)) if self.train else room // 2
                handle.seek(offset)
                data = handle.read(min(want, total), dtype="float32", always_2d=True)
        except KeyError as error:
            raise _CorruptSample(f"{key}: no {error.args[0]} member.") from None
        except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as error:
            raise _CorruptSample(f"{key}: unreadable audio or metadata ({error}).") from None
        audio = resample(torch.from_numpy(data.mean(axis=1)), rate, self.sample_rate)[: self.segment_samples]
        if len(audio) == 0 or not torch.isfinite(audio).all():
            raise _CorruptSample(f"{key}: empty or non-finite audio.")
        audio = torch.nn.functional.pad(audio, (0, self.segment_samples - len(audio)))
        fps = float(meta.get("fps", 1.0))
        count = sum(1 for name in sample if name.endswith(".jpg") and name[:-4].isdigit())
        indices = self._pick_frames(count, fps, offset / rate, min(want, total) / rate, rng)
        try:
            query = self._embedding(sample, indices, key) if self.encoder else self._frames(sample, indices)
        except (KeyError, ValueError, OSError, IndexError) as error:
            raise _CorruptSample(f"{key}: unreadable query member ({error}).") from None
        return _Clip(str(sample["__key__"]), meta.get("label"), audio, query)

    def _pick_frames(self, count: int, fps: float, start: float, length: float, rng) -> list[int]:
        if count == 0:
            raise _CorruptSample("no frames")
        times = np.array([(k + 0.5) / fps for k in range(count)])
        centre = start + length / 2
        inside = np.flatnonzero((times >= start) & (times < start + length))
        q = self.query_frames
        if self.train and len(inside) > q:
            first = int(rng.integers(len(inside) - q + 1))
            chosen = inside[first : first + q]
        else:
            chosen = np.sort(np.argsort(np.abs(times - centre), kind="stable")[:q])
        return [int(chosen[i % len(chosen)]) for i in range(q)]

    def _embedding(self, sample: dict, indices: list[int], key: str) -> torch.Tensor:
        member = f"{self.encoder}.npy"
        if member not in sample:
            raise _CorruptSample(f"{key}: no {member} member (prepare the shards with that --clip-model).")
        table = np.load(io.BytesIO(sample[member]), allow_pickle=False)
        if table.ndim != 2 or max(indices) >= table.shape[0]:
            raise _CorruptSample(f"{key}: {member} has shape {table.shape}, too few frames.")
        embedding = torch.from_numpy(table[indices].astype(np.float32)).mean(0)
        if not torch.isfinite(embedding).all():
            raise _CorruptSample(f"{key}: {member} holds non-finite values.")
        return embedding

    def _frames(self, sample: dict, indices: list[int]) -> torch.Tensor:
        out = []
        for k in indices:
            image = Image.open(io.BytesIO(sample[f"{k}.jpg"])).convert("RGB")
            scale = self.frame_size / min(image.size)
            w, h = max(self.frame_size, round(image.width * scale)), max(self.frame_size, round(image.height * scale))
            if (w, h) != image.size:
                image = image.resize((w, h), Image.BILINEAR)
            left, top = (w - self.frame_size) // 2, (h - self.frame_size) // 2
            image = image.crop((left, top, left + self.frame_size, top + self.frame_size))
            out.append(torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1))
        return torch.stack(out)

    def _mix(self, clips: list[_Clip], rng: np.random.Generator) -> MixBatch:
        n = self.num_sources
        b = len(clips) // n
        sources = torch.stack([c.audio for c in clips]).view(b, n, -1)
        if n > 1:
            gains = torch.from_numpy(rng.uniform(0.5, 1.5, size=(b, n, 1)).astype(np.float32)) / n
            sources = sources * gains
        queries = torch.stack([c.query for c in clips])
        queries = queries.view(b, n, *queries.shape[1:])
        skipped, self._pending = self._pending, 0
        return MixBatch(
            mixture=sources.sum(1),
            sources=sources,
            embeddings=queries if self.encoder else None,
            frames=None if self.encoder else queries,
            labels=[[c.label for c in clips[i * n : (i + 1) * n]] for i in range(b)],
            keys=[[c.key for c in clips[i * n : (i + 1) * n]] for i in range(b)],
            skipped=skipped,
        )


def _shuffle(items: Iterator[dict], size: int, rng: np.random.Generator) -> Iterator[dict]:
    """Shuffle a stream through a buffer of ``size`` items."""
    buffer: list[dict] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        index = int(rng.integers(len(buffer)))
        yield buffer[index]
        buffer[index] = item
    order = rng.permutation(len(buffer))
    for index in order:
        yield buffer[index]


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
        for batch in batches:
            self._taken += 1
            yield batch

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
    """Training, validation and test batches (:class:`MixBatch`) from video shards.

    Args:
        train_shards: training shards (see :func:`expand_shards`).
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
        seed: seed of crops, gains, pairs and shuffling.
        shuffle_buffer: samples held for shuffling per worker.
        frame_size: square size of delivered frames.
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
        seed: int = 0,
        shuffle_buffer: int = 256,
        frame_size: int = 224,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_shards, self.val_shards, self.test_shards = train_shards, val_shards, test_shards
        self.num_workers = num_workers
        self.epoch_length = epoch_length
        self.common = dict(
            num_sources=num_sources,
            batch_size=batch_size,
            segment_samples=segment_samples,
            sample_rate=sample_rate,
            encoder=encoder,
            query_frames=query_frames,
            shuffle_buffer=shuffle_buffer,
            frame_size=frame_size,
            seed=seed,
        )

    def _loader(self, shards, train: bool) -> DataLoader:
        stream = ShardStream(shards, train=train, epoch_length=self.epoch_length if train else None, **self.common)
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
