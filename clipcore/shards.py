"""Video shards: the format, and writing and finding them.

A shard is a webdataset tar file with one sample per video clip, key
``<dataset>/<video_id>/<start_ms>`` (the video id with dots and slashes made underscores,
and a short hash added where two videos would share it: :func:`distinct_key_ids`; the
``json`` member holds the id as it is) and members ``flac`` (mono audio), ``0.jpg``,
``1.jpg``, ... (frames at ``fps``; frame ``k`` shows time ``(k + 0.5) / fps``), ``json``
(metadata) and optionally ``<encoder>.npy`` (float16 CLIP image embeddings, frames x dim).

An audio shard holds labelled audio instead (a sound library): no frames, and
``<encoder>.npy`` is ``[1, dim]``, the raw CLIP text embedding of the label averaged over
prompt templates; its ``json`` says ``"embedding": "text"`` and lists the ``templates``.

:func:`write_shard` writes :class:`ShardSample` objects; :func:`expand_shards` turns a
shard spec into the URLs to read. Reading them into training batches is
:mod:`clipcore.shard_stream`'s job, and :mod:`clipcore.datamodule` serves those batches
to Lightning.
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import soundfile as sf
import torch
from PIL import Image
from webdataset.shardlists import expand_urls

from clipcore.errors import ClipAudioError
from clipcore.files import atomic_write
from clipcore.naming import unique_names

__all__ = ["ShardSample", "ShardError", "write_shard", "frame_embeddings", "expand_shards", "key_part",
           "distinct_key_ids"]

JPEG_QUALITY = 90


class ShardError(ClipAudioError):
    """Shards that cannot be used at all (none found, none readable), in one sentence."""


def key_part(part: str) -> str:
    """``part`` (a dataset name, a video id) made one part of a sample key: dots and
    slashes become underscores (webdataset splits a member name at the first dot of its
    base name), and nothing becomes ``_``."""
    return str(part).replace(".", "_").replace("/", "_") or "_"


def distinct_key_ids(videos: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The video part of the sample keys of ``(video id, file)`` pairs, distinct for
    distinct pairs: the id made safe for a key (dots and slashes become underscores), with
    a short hash of the id and file added to every id whose safe form another pair shares
    (``x/good`` and ``x_good``; one id for two files; ids that differ only in case, as
    :func:`clipcore.naming.unique_names` compares them).

    Returns:
        ``{(video id, file): key part}`` for :attr:`ShardSample.key_id`.
    """
    pairs = sorted(set(videos))
    names = unique_names([key_part(video_id) for video_id, _ in pairs], [f"{video_id}\n{file}" for video_id, file in pairs])
    return dict(zip(pairs, names))


@dataclass
class ShardSample:
    """One clip as stored in a shard.

    Attributes:
        dataset: dataset name (first part of the key).
        video_id: video identifier (dots and slashes become underscores in the key).
        start: clip start in the source video, seconds.
        audio: float32 ``[S]`` mono (stored as 16-bit FLAC; audio peaking beyond full scale
            is scaled to a peak of 1, not clipped, and the JSON records the ``gain``).
        sample_rate: audio rate.
        frames: uint8 ``[F, H, W, 3]`` RGB (stored as JPEG).
        fps: frame rate.
        label: optional label (evaluation metadata only).
        embeddings: ``{encoder name: [F, D] array}``, stored as float16 ``<name>.npy``.
        text_templates: for labelled audio (no frames): the prompt templates whose text
            embeddings of the label ``embeddings`` holds (``[1, D]``); None for video.
        key_id: the video part of the key, where the video id made safe would be another
            video's too (see :func:`distinct_key_ids`); None: the video id made safe.
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
    text_templates: list[str] | None = None
    key_id: str | None = None

    @property
    def key(self) -> str:
        """``<dataset>/<video_id>/<start_ms>`` (``key_id`` in place of the video id, when given)."""
        video = key_part(self.video_id) if self.key_id is None else self.key_id
        return f"{key_part(self.dataset)}/{video}/{int(round(self.start * 1000))}"

    def members(self) -> dict[str, bytes]:
        """Tar members of this sample: ``{suffix: bytes}``."""
        audio = np.asarray(self.audio, dtype=np.float32)
        if audio.ndim != 1 or len(audio) == 0 or not np.isfinite(audio).all():
            raise ValueError(f"{self.key}: audio must be a finite, non-empty mono array.")
        peak = float(np.abs(audio).max())
        gain = 1.0 / peak if peak > 1.0 else 1.0  # beyond full scale (a float file, a codec's overshoot): scaled, not clipped
        flac = io.BytesIO()
        sf.write(flac, np.clip(audio * gain, -1.0, 1.0), int(self.sample_rate), format="FLAC", subtype="PCM_16")
        meta = {
            "dataset": self.dataset,
            "video_id": self.video_id,
            "start": float(self.start),
            "duration": len(audio) / self.sample_rate,
            "sample_rate": int(self.sample_rate),
            "fps": float(self.fps),
        }
        if gain != 1.0:
            meta["gain"] = gain
        if self.label is not None:
            meta["label"] = self.label
        if self.text_templates is not None:
            meta["embedding"], meta["templates"] = "text", list(self.text_templates)
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
