"""Mixing the clips of video shards into training batches: :class:`ShardStream`, an
``IterableDataset`` of :class:`MixBatch`.

Training mixes the audio of ``num_sources`` clips (mix-and-separate); each clip keeps its
query: the embedding averaged over its query frames, or the frames themselves. A clip of
an audio shard (labelled audio, no frames) brings its label's text embedding instead, so
video and audio shards mix in one run when the stream reads embeddings. The shard
format is :mod:`clipcore.shards`'s.

Usage::

    stream = ShardStream("shards/train-{000000..000099}.tar", encoder="clip-vit-b-32-openai",
                         epoch_length=1000)
    for batch in stream:      # MixBatch
        batch.mixture, batch.sources, batch.embeddings
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass, fields, replace
from typing import Iterator, Sequence

import numpy as np
import soundfile as sf
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import tarfile_samples

from clipcore.audio import resample
from clipcore.errors import UsageError
from clipcore.shards import ShardError, expand_shards

__all__ = ["CorruptSampleWarning", "MixBatch", "ShardStream"]

MAX_FAILURES_IN_A_ROW = 200
"""A stream stops with :class:`~clipcore.shards.ShardError` after this many unusable
samples in a row: that is a misconfiguration (for example an ``encoder`` whose member the
shards lack), not corruption."""
MIX_POOL = 64
"""Clips looked ahead to give each mixture clips of different labels (validation) or of
distinct queries (training with ``distinct_queries``), or held back (training without it)
for a later mixture than one that holds them already."""
_DECODED, _RATE = "__decoded_audio__", "__audio_rate__"
"""Members a sample held in memory has in place of its ``flac``."""
WARN_FIRST = 10
"""Each skip is warned about up to this many; after that, every 100th skip."""


class CorruptSampleWarning(UserWarning):
    """A sample or shard was skipped; training goes on."""


class _CorruptSample(Exception):
    pass


@dataclass
class _Clip:
    key: str
    label: str | None
    audio: torch.Tensor  # [S]
    query: torch.Tensor  # [D] float32 or [F, 3, H, W] uint8
    length: int  # samples of audio before the padding
    text: bool = False  # the query is a text embedding (an audio shard's)


@dataclass
class MixBatch:
    """A batch of mixtures and the sources they were made of.

    Attributes:
        mixture: float32 ``[B, S]``, equal to ``sources.sum(1)``.
        sources: float32 ``[B, N, S]``, each scaled by a gain in 0.5-1.5 divided by N
            (no scaling when N is 1).
        embeddings: float32 ``[B, N, D]`` CLIP image embeddings (mean over the query
            frames, not re-normalized) or, for clips of audio shards, the raw text
            embedding of their label; None when frames are delivered.
        frames: uint8 ``[B, N, F, 3, H, W]`` query frames, or None with embeddings.
        labels: ``[B][N]`` labels (None where a clip has none).
        keys: ``[B][N]`` sample keys.
        skipped: samples or shards skipped (corrupt) while this batch was assembled.
        text_queries: bool ``[B, N]``, True where the query is a text embedding (with
            ``embeddings``), else None.
        lengths: int64 ``[B, N]``: samples of each source before the silence that pads a
            clip shorter than the segment, or None where not known.
    """

    mixture: torch.Tensor
    sources: torch.Tensor
    embeddings: torch.Tensor | None
    frames: torch.Tensor | None
    labels: list[list[str | None]]
    keys: list[list[str]]
    skipped: int = 0
    text_queries: torch.Tensor | None = None
    lengths: torch.Tensor | None = None

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

    Corrupt samples and unreadable shards are skipped with a warning; a stream that can
    use none of what it reads (a consumer's whole part of a one-pass read, or many
    resampled shard reads in a row) stops with :class:`~clipcore.shards.ShardError`
    naming the last problem, rather than validating on nothing.

    Args:
        shards: see :func:`clipcore.shards.expand_shards`.
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
        distinct_queries: training mixes clips whose query embeddings have a cosine of at
            most this with each other where the next :data:`MIX_POOL` clips allow it, so
            that two clips of one kind of scene (two violins) rarely share a mixture and ask
            for different sources with nearly the same query. Needs ``encoder``. None (the
            papers' training): clips mix as they come.
        in_memory: hold each shard in memory after its first read, audio decoded (float32:
            about 230 MB per hour of 16 kHz audio, in every worker process), for small
            data sets like the toy world, where reading and decoding is a fifth of a
            training step. Batches are the same with and without it; a corrupt sample is
            warned about at its first read only. Loader workers start afresh every
            epoch, so it pays with ``num_workers=0`` or long epochs.
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
        in_memory: bool = False,
        distinct_queries: float | None = None,
    ) -> None:
        if distinct_queries is not None and encoder is None:
            raise UsageError("distinct_queries compares query embeddings: set encoder too.")
        if distinct_queries is not None and not -1 <= distinct_queries <= 1:
            raise UsageError(f"distinct_queries is a cosine, from -1 to 1, not {distinct_queries}.")
        if num_sources < 1 or batch_size < 1 or segment_samples < 1 or query_frames < 1:
            raise UsageError("num_sources, batch_size, segment_samples and query_frames must be positive.")
        if epoch_length is not None and epoch_length < 1:
            raise UsageError(f"epoch_length must be positive, not {epoch_length}.")
        self.urls = expand_shards(shards)
        self.num_sources, self.batch_size = num_sources, batch_size
        self.segment_samples, self.sample_rate = segment_samples, sample_rate
        self.encoder, self.query_frames, self.frame_size = encoder, query_frames, frame_size
        self.train, self.epoch_length, self.shuffle_buffer, self.seed = train, epoch_length, shuffle_buffer, seed
        self.in_memory, self.distinct_queries = in_memory, distinct_queries
        self._held: dict[str, list[dict]] = {}  # url -> its samples, audio decoded
        self.epoch, self.rank, self.world_size = 0, 0, 1
        self.resume_offset = 0  # batches of this epoch done before a restart
        self.skipped = 0  # samples skipped by this process (per worker with workers)
        self.last_skip: str | None = None  # why the last one was
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
            first = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)  # tarfile: (why, ...)
            self._skip(f"{url}: {first.splitlines()[0] if first else type(error).__name__}")
            return True

        if not self.in_memory:
            yield from tarfile_samples([{"url": url}], handler=on_error)
            return
        if url not in self._held:
            self._held[url] = [_audio_decoded(sample) for sample in tarfile_samples([{"url": url}], handler=on_error)]
        yield from self._held[url]

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
                    + (f" The last problem: {self.last_skip}" if self.last_skip else "")
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
        self.last_skip = reason
        self._pending += 1
        if self.skipped <= WARN_FIRST or self.skipped % 100 == 0:
            warnings.warn(f"skipped ({self.skipped} so far): {reason}", CorruptSampleWarning, stacklevel=2)

    def _batches(self, raw: Iterator[dict], rng: np.random.Generator, limit: int | None) -> Iterator[MixBatch]:
        need = self.batch_size * self.num_sources
        clips: list[_Clip] = []
        made = 0
        skipped_before = self.skipped
        if limit == 0:
            return
        for clip in self._grouped(self._decoded(raw, rng)):
            clips.append(clip)
            if len(clips) == need:
                yield self._mix(clips, rng)
                clips, made = [], made + 1
                if limit is not None and made >= limit:
                    return
        if not self.train and len(clips) >= self.num_sources:  # a last, smaller batch
            yield self._mix(clips[: len(clips) // self.num_sources * self.num_sources], rng)
        if made == 0 and not clips and self.skipped > skipped_before:  # a pass over unreadable shards: nothing used
            shards = self.urls[0] if len(self.urls) == 1 else f"{len(self.urls)} shards ({self.urls[0]}, ...)"
            raise ShardError(f"no sample of {shards} could be used; the last problem: {self.last_skip}")

    def _decoded(self, raw: Iterator[dict], rng: np.random.Generator) -> Iterator[_Clip]:
        """The usable clips of ``raw``; a corrupt sample is skipped (and counted), 200 in a
        row stop the run."""
        failures = 0
        for sample in raw:
            try:
                clip = self._decode(sample, rng)
            except _CorruptSample as error:
                self._skip(str(error))
                failures += 1
                if failures >= MAX_FAILURES_IN_A_ROW:
                    raise ShardError(f"{failures} samples in a row could not be used; the last: {error}") from None
                continue
            failures = 0
            yield clip

    def _grouped(self, clips: Iterator[_Clip]) -> Iterator[_Clip]:
        """The clips reordered so that each mixture's N clips differ where the next
        :data:`MIX_POOL` clips allow it (see :meth:`_fits`): the oldest clip waiting, then
        the first ones after it that fit its mixture. Validation needs this because shards
        are often written class by class, and consecutive clips would make mixtures of one
        class. Training without ``distinct_queries`` takes the clips as they come
        (shuffled), but never one clip twice in a mixture (:meth:`_without_repeats`).
        Deterministic, as the order is."""
        if self.num_sources == 1:
            yield from clips
            return
        if self.train and self.distinct_queries is None:
            yield from self._without_repeats(clips)
            return
        pool: list[_Clip] = []
        ended = False
        while True:
            while not ended and len(pool) < MIX_POOL:
                clip = next(clips, None)
                ended = clip is None
                if clip is not None:
                    pool.append(clip)
            if len(pool) < self.num_sources:
                return
            group = [pool.pop(0)]
            while len(group) < self.num_sources:
                index = next((i for i, c in enumerate(pool) if self._fits(c, group)), 0)
                group.append(pool.pop(index))
            yield from group

    def _without_repeats(self, clips: Iterator[_Clip]) -> Iterator[_Clip]:
        """Training clips as they come, but a clip its mixture holds already (resampled
        shards repeat clips: 7% of a 16-clip library's mixtures held one clip twice) waits
        for a later mixture; up to :data:`MIX_POOL` wait, beyond which a data set too small
        to avoid it repeats one. Where nothing repeats, the clips and the random draws
        between them are exactly those of the clips as they come."""
        waiting: list[_Clip] = []
        group: list[str] = []  # the keys of the mixture being made
        while True:
            clip = next((c for c in waiting if c.key not in group), None)
            if clip is not None:
                waiting.remove(clip)
            else:
                clip = next(clips, None)
                if clip is None:
                    return
                if clip.key in group and len(waiting) < MIX_POOL:
                    waiting.append(clip)
                    continue
            group.append(clip.key)
            yield clip
            if len(group) == self.num_sources:
                group = []

    def _fits(self, clip: _Clip, group: list[_Clip]) -> bool:
        """Whether ``clip`` may join ``group``'s mixture: in training, it is none of them
        (resampled shards repeat clips) and its query's cosine with each member's is at
        most ``distinct_queries``; in validation, its label is none of theirs (or it has
        none)."""
        if not self.train:
            return clip.label is None or clip.label not in {c.label for c in group}
        if clip.key in {c.key for c in group}:
            return False
        query = torch.nn.functional.normalize(clip.query, dim=-1)
        others = torch.nn.functional.normalize(torch.stack([c.query for c in group]), dim=-1)
        return bool((others @ query).max() <= self.distinct_queries)

    def _decode(self, sample: dict, rng: np.random.Generator) -> _Clip:
        key = f"{sample.get('__key__')} in {sample.get('__url__')}"
        try:
            meta = json.loads(sample["json"]) if "json" in sample else {}
            data, rate, offset = self._crop(sample, rng)
        except KeyError as error:
            raise _CorruptSample(f"{key}: no {error.args[0]} member.") from None
        except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as error:
            raise _CorruptSample(f"{key}: unreadable audio or metadata ({error}).") from None
        audio = resample(torch.from_numpy(data.mean(axis=1)), rate, self.sample_rate)[: self.segment_samples]
        if len(audio) == 0 or not torch.isfinite(audio).all():
            raise _CorruptSample(f"{key}: empty or non-finite audio.")
        length = len(audio)
        audio = torch.nn.functional.pad(audio, (0, self.segment_samples - length))
        text = meta.get("embedding") == "text"
        if text and not self.encoder:
            raise _CorruptSample(f"{key}: is labelled audio without frames; read its text embedding by setting "
                                 "the encoder (the name of its .npy member).")
        try:
            if text:
                query = self._embedding(sample, [0], key)
            else:
                fps = float(meta.get("fps", 1.0))
                count = sum(1 for name in sample if name.endswith(".jpg") and name[:-4].isdigit())
                indices = self._pick_frames(count, fps, offset / rate, len(data) / rate, rng)
                query = self._embedding(sample, indices, key) if self.encoder else self._frames(sample, indices)
        except (KeyError, ValueError, OSError, IndexError) as error:
            raise _CorruptSample(f"{key}: unreadable query member ({error}).") from None
        return _Clip(str(sample["__key__"]), meta.get("label"), audio, query, length, text)

    def _crop(self, sample: dict, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
        """The sample's audio crop (float32 ``[T, C]``), its rate and its first sample."""
        decoded = sample.get(_DECODED)
        if decoded is not None:
            offset, length = self._span(len(decoded), sample[_RATE], rng)
            return decoded[offset : offset + length], sample[_RATE], offset
        with sf.SoundFile(io.BytesIO(sample["flac"])) as handle:
            offset, length = self._span(handle.frames, handle.samplerate, rng)
            handle.seek(offset)
            return handle.read(length, dtype="float32", always_2d=True), handle.samplerate, offset

    def _span(self, total: int, rate: int, rng: np.random.Generator) -> tuple[int, int]:
        """First sample and length of the crop of a clip of ``total`` samples at ``rate``: a
        random one in training, else the centred one."""
        length = min(total, int(np.ceil(self.segment_samples * rate / self.sample_rate)))
        room = total - length
        return (int(rng.integers(room + 1)) if self.train else room // 2), length

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
            text_queries=torch.tensor([c.text for c in clips]).view(b, n) if self.encoder else None,
            lengths=torch.tensor([c.length for c in clips]).view(b, n),
        )


def _audio_decoded(sample: dict) -> dict:
    """``sample`` with its FLAC member decoded (float32 ``[T, C]`` under :data:`_DECODED`,
    its rate under :data:`_RATE`), or as it is when that fails (:meth:`ShardStream._decode`
    then reports it)."""
    try:
        data, rate = sf.read(io.BytesIO(sample["flac"]), dtype="float32", always_2d=True)
    except (KeyError, sf.LibsndfileError, RuntimeError, ValueError, TypeError):
        return sample
    decoded = {name: value for name, value in sample.items() if name != "flac"}
    decoded[_DECODED], decoded[_RATE] = data, rate
    return decoded


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
