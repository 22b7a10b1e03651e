"""Pairs of CLIP text and image embeddings, the diffusion prior's training data: read,
written, and computed by a query encoder (no Lightning here; :mod:`clipcore.prior_system`
trains on them).

Pairs come precomputed (``.npz`` files with ``text`` and ``image`` arrays ``[N, D]``, or
folders with ``text.npy`` and ``image.npy``) or are computed once by a query encoder from
a webdataset of images and captions: each image (``jpg``/``png`` members, or the frames
``0.jpg``, ``1.jpg``, ... of video shards, or their precomputed ``<encoder>.npy``) is paired
with the sample's caption (``txt``), or with its ``json`` label put into prompt templates.
A cache of computed pairs records what they were computed from (:func:`pairs_source`).
"""

from __future__ import annotations

import importlib
import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm
from webdataset.tariterators import tarfile_samples

from clipcore.files import atomic_write
from clipcore.prior import PriorError
from clipcore.prompts import prompt_templates
from clipcore.query import QueryEncoder
from clipcore.shards import expand_shards

__all__ = ["load_pairs", "save_pairs", "pairs_source", "compute_pairs", "load_caption_function"]

_IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")


def load_pairs(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read pairs from an ``.npz`` file (``text``, ``image``) or a folder (``text.npy``, ``image.npy``).

    Returns:
        float32 text ``[N, D]`` and image ``[N, D]`` embeddings.

    Raises:
        PriorError: no such file, or one that is empty, truncated, of another format or
            without two finite ``[N, D]`` arrays (one sentence naming it).
    """
    path = Path(path)
    if path.is_dir():
        try:
            text = np.load(path / "text.npy", allow_pickle=False)
            image = np.load(path / "image.npy", allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise PriorError(f"{path}: not a pairs folder with readable text.npy and image.npy ({error}).") from None
    else:
        arrays = _read_npz(path, ("text", "image"))
        text, image = arrays["text"], arrays["image"]
    if text.ndim != 2 or text.shape != image.shape or len(text) == 0:
        raise PriorError(f"{path}: text {text.shape} and image {image.shape} must both be [N, D] with N > 0.")
    if not (np.isfinite(text).all() and np.isfinite(image).all()):
        raise PriorError(f"{path}: holds non-finite embeddings.")
    return torch.from_numpy(text.astype(np.float32)), torch.from_numpy(image.astype(np.float32))


def _read_npz(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``names`` of a pairs ``.npz`` file, those it holds (read alone: a
    record is read without the embeddings).

    Raises:
        PriorError: no such file, or one that is empty, truncated, of another format, or
            without ``text`` and ``image`` (one sentence naming it).
    """
    if not path.exists():
        raise PriorError(f"{path}: no such pairs file or folder.")
    try:
        with np.load(path, allow_pickle=False) as arrays:  # an .npy file gives an array: TypeError
            held = set(arrays.files)
            found = {name: arrays[name] for name in names if name in held}
    except (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as error:
        raise PriorError(f"{path}: cannot be read as a pairs file (an .npz of 'text' and 'image' arrays); "
                         f"it is empty, truncated or of another format ({error}).") from None
    missing = [name for name in ("text", "image") if name not in held]
    if missing:
        raise PriorError(f"{path}: not a pairs file with 'text' and 'image' arrays (no {missing[0]!r}).")
    return found


def save_pairs(path: str | Path, text: torch.Tensor, image: torch.Tensor, source: dict | None = None) -> Path:
    """Write pairs ``[N, D]`` as an ``.npz`` file (atomically).

    Args:
        path: the ``.npz`` file.
        text: text embeddings ``[N, D]``.
        image: image embeddings ``[N, D]``.
        source: what the pairs were computed from (a cache's record, see
            :func:`pairs_source`), stored as JSON in a ``source`` array.
    """
    arrays = {"text": text.float().cpu().numpy(), "image": image.float().cpu().numpy()}
    if source is not None:
        arrays["source"] = np.array(json.dumps(source))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    return atomic_write(path, write)


def pairs_source(path: str | Path) -> dict | None:
    """What the pairs of an ``.npz`` file were computed from, as :func:`save_pairs` recorded
    it, or None for a file without that record.

    Raises:
        PriorError: the file cannot be read, or its record is not a JSON object.
    """
    path = Path(path)
    recorded = _read_npz(path, ("source",)).get("source")
    if recorded is None:
        return None
    try:
        source = json.loads(str(recorded))
    except ValueError:
        source = None
    if not isinstance(source, dict):
        raise PriorError(f"{path}: its record of what the pairs were computed from is not a JSON object.")
    return source


def compute_pairs(
    shards: str | list[str],
    encoder: QueryEncoder,
    templates: list[str] | None = None,
    max_samples: int | None = None,
    captions_of: Callable[[str], list[str]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed the images and captions of a webdataset with a query encoder.

    Args:
        shards: shard spec (paths, globs, braces, ``pipe:``, URLs).
        encoder: the query encoder (its embedding size is the prior's).
        templates: templates for ``json`` labels (default ``["a photo of {}"]``); a ``txt``
            caption is used as is.
        max_samples: stop after this many samples.
        captions_of: a function giving the captions of a ``json`` label (the toy world's
            :func:`clipcore.synthetic.captions`, say), used instead of the templates.

    Returns:
        float32 text ``[N, D]`` and image ``[N, D]``: one pair per image and caption.
    """
    templates = prompt_templates(templates or None, "templates", PriorError)  # none given: the default template
    member = f"{encoder.name}.npy"
    texts, images, skipped = [], [], 0
    pending: list[tuple[list[str], list[torch.Tensor]]] = []

    def add(captions: list[str], image_embeddings: torch.Tensor) -> None:
        text_embeddings = encoder.encode_text(captions, templates="{}").cpu()
        texts.append(text_embeddings.repeat_interleave(len(image_embeddings), 0))
        images.append(image_embeddings.repeat(len(captions), 1))

    def flush() -> None:
        if pending:
            embedded = encoder.encode_image([image for _, group in pending for image in group]).cpu()
            for captions, group in pending:
                add(captions, embedded[: len(group)])
                embedded = embedded[len(group):]
            pending.clear()

    def skip(reason: str) -> bool:
        nonlocal skipped
        skipped += 1
        warnings.warn(f"skipping {reason}", stacklevel=3)
        return True

    urls = expand_shards(shards)
    samples = tarfile_samples([{"url": url} for url in urls], handler=lambda error: skip(f"unreadable shard data ({error})."))
    for count, sample in enumerate(tqdm(samples, desc="embedding pairs", unit="sample")):
        if max_samples is not None and count >= max_samples:
            break
        where = f"{sample.get('__key__')} in {sample.get('__url__')}"
        try:
            captions = _captions(sample, templates, captions_of)
            if member in sample:
                if "json" in sample and json.loads(sample["json"]).get("embedding") == "text":
                    raise ValueError(f"its {member} holds its label's text embedding (labelled audio), not "
                                     "an image's")
                table = np.load(io.BytesIO(sample[member]), allow_pickle=False).astype(np.float32)
                if table.ndim != 2 or table.shape[1] != encoder.embed_dim or not np.isfinite(table).all():
                    raise ValueError(f"{member} is not a finite [frames, {encoder.embed_dim}] table")
                add(captions, F.normalize(torch.from_numpy(table), dim=-1))
                continue
            names = sorted((name for name in sample if name.rsplit(".", 1)[-1].lower() in _IMAGE_SUFFIXES), key=_natural)
            if not names:
                raise ValueError("no image member")
            pending.append((captions, [_decode(sample[name]) for name in names]))
        except (ValueError, KeyError, OSError) as error:
            skip(f"{where}: {error}.")
            continue
        if sum(len(group) for _, group in pending) >= 64:
            flush()
    flush()
    if not texts:
        raise PriorError(f"no usable image and caption pairs in {shards} ({skipped} samples skipped).")
    return torch.cat(texts), torch.cat(images)


def _captions(sample: dict, templates: list[str], captions_of: Callable[[str], list[str]] | None) -> list[str]:
    """The captions of a sample: its ``txt``, or its ``json`` label in templates.

    Raises:
        ValueError: no caption, or unreadable ones.
    """
    if "txt" in sample:
        caption = sample["txt"].decode("utf-8").strip()
        if not caption:
            raise ValueError("empty txt caption")
        return [caption]
    label = json.loads(sample["json"]).get("label") if "json" in sample else None
    if not label:
        raise ValueError("no txt caption or json label")
    return list(captions_of(label)) if captions_of else [template.format(label) for template in templates]


def load_caption_function(path: str) -> Callable[[str], list[str]]:
    """The function an import path names (``package.module.function``).

    Raises:
        PriorError: no such module or function.
    """
    module, _, name = path.rpartition(".")
    try:
        function = getattr(importlib.import_module(module), name) if module else None
    except (ImportError, AttributeError):
        function = None
    if not callable(function):
        raise PriorError(f"captions: {path!r} names no function (give package.module.function).")
    return function


def _natural(name: str) -> tuple:
    stem = name.rsplit(".", 1)[0]
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)


def _decode(data: bytes) -> torch.Tensor:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
