"""Training the diffusion prior: pairs of CLIP text and image embeddings, and the
LightningModule that fits :class:`clipcore.prior.DiffusionPrior` to them.

Pairs come precomputed (``.npz`` files with ``text`` and ``image`` arrays ``[N, D]``, or
folders with ``text.npy`` and ``image.npy``) or are computed once by a query encoder from
a webdataset of images and captions: each image (``jpg``/``png`` members, or the frames
``0.jpg``, ``1.jpg``, ... of video shards, or their precomputed ``<encoder>.npy``) is paired
with the sample's caption (``txt``), or with its ``json`` label put into prompt templates.
"""

from __future__ import annotations

import importlib
import io
import json
import math
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, LightningModule
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm
from webdataset.tariterators import tarfile_samples

from clipcore.files import atomic_write
from clipcore.prior import DiffusionPrior, PriorError
from clipcore.prompts import prompt_templates
from clipcore.query import QueryEncoder
from clipcore.shards import expand_shards
from clipcore.training import check_optimizer_settings, export_pretrained

__all__ = ["PriorDataModule", "PriorSystem", "load_pairs", "save_pairs", "pairs_source", "compute_pairs"]

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


def _file_identity(path: str) -> list:
    """What tells a file from another, or from an earlier version of itself, cheaply:
    ``[resolved path, bytes, modification time in ns]``."""
    stat = os.stat(path)
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def _natural(name: str) -> tuple:
    stem = name.rsplit(".", 1)[0]
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)


def _decode(data: bytes) -> torch.Tensor:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


class PriorDataModule(LightningDataModule):
    """Pairs of CLIP text and image embeddings, held in memory.

    Args:
        pairs: precomputed pairs files (see :func:`load_pairs`); concatenated.
        shards: a webdataset of images and captions to embed instead (see :func:`compute_pairs`).
        encoder: query encoder spec for ``shards`` (see ``QueryEncoder.load``), or ``tiny``
            (``QueryEncoder.tiny(seed=0)``).
        templates: prompt templates for ``json`` labels in ``shards``.
        captions: import path of a function giving a label's captions, used instead of
            the templates (``clipcore.synthetic.captions`` for the toy world).
        cache: where to save pairs computed from ``shards`` (``.npz``, with a record of
            the shard files, encoder, captions, templates and sample limit), and to read
            them from when it exists; a cache whose record differs from this run's (other
            shards, or these changed since), or that has none, is refused. With several
            processes (DDP) the first one computes them and the others read the cache, so
            give one.
        max_samples: read at most this many shard samples.
        val_fraction: share of the pairs held out for validation.
        batch_size: pairs per batch.
        num_workers: data loader workers.
        seed: seed of the train/validation split and of shuffling.
    """

    def __init__(
        self,
        pairs: list[str] | None = None,
        shards: str | list[str] | None = None,
        encoder: str | None = None,
        templates: list[str] | None = None,
        captions: str | None = None,
        cache: str | None = None,
        max_samples: int | None = None,
        val_fraction: float = 0.05,
        batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if (pairs is None) == (shards is None):
            raise PriorError("give either pairs (precomputed embeddings) or shards (images and captions), not both.")
        if shards is not None and encoder is None:
            raise PriorError("computing pairs from shards needs an encoder (e.g. ViT-L-14/openai).")
        if not 0.0 <= val_fraction < 1.0:
            raise PriorError(f"val_fraction must be in [0, 1), got {val_fraction}.")
        prompt_templates(templates or None, "templates", PriorError)
        self.save_hyperparameters()
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    def _compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hparams
        encoder = QueryEncoder.tiny(seed=0) if h.encoder == "tiny" else QueryEncoder.load(h.encoder)
        captions_of = load_caption_function(h.captions) if h.captions else None
        source = self._source()  # before the long work: its shards are there
        text, image = compute_pairs(h.shards, encoder, h.templates, h.max_samples, captions_of)
        if h.cache:
            save_pairs(h.cache, text, image, source)
        return text, image

    def _source(self) -> dict[str, Any]:
        """What pairs computed now come from: the shards (spec, and each file's path, size
        and modification time), the encoder (spec, local path resolved, and its files),
        captions, templates and sample limit; as JSON would give it back."""
        h = self.hparams
        shard_files = [_file_identity(url) if os.path.isfile(url) else [url] for url in expand_shards(h.shards)]
        encoder, encoder_files = h.encoder, []
        weights = h.encoder.partition("=")[2] if "=" in h.encoder else h.encoder  # ARCH=FILE, or a folder
        if h.encoder != "tiny" and os.path.exists(weights):
            local = Path(weights).resolve()
            encoder = str(local) if weights == h.encoder else f"{h.encoder.partition('=')[0]}={local}"
            encoder_files = [_file_identity(str(path)) for path in
                             (sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local])]
        source = {"shards": h.shards, "shard_files": shard_files, "encoder": encoder, "encoder_files": encoder_files,
                  "captions": h.captions, "templates": h.templates or None, "max_samples": h.max_samples}
        return json.loads(json.dumps(source))

    def _check_cache(self) -> None:
        """Refuse a cache computed from other shards, encoder or settings than this run's,
        or one that does not say what it was computed from.

        Raises:
            PriorError: naming the cache, what it was computed from, and what to do.
        """
        cache = self.hparams.cache
        recorded = pairs_source(cache)
        if recorded is None:
            raise PriorError(f"data.cache {cache}: holds pairs without a record of the shards and encoder they were "
                             "computed from (an older cache), so they cannot be checked against this run's; "
                             "delete it or give another data.cache.")
        current = self._source()
        differing = [name.replace("_", " ") for name in current if name != "shards" and recorded.get(name) != current[name]]
        if differing:
            named = " and ".join([", ".join(differing[:-1]), differing[-1]] if len(differing) > 1 else differing)
            raise PriorError(f"data.cache {cache}: holds pairs computed from the shards {recorded.get('shards')} "
                             f"with the encoder {recorded.get('encoder')}, and this run's {named} differ; "
                             "delete it or give another data.cache.")

    def prepare_data(self) -> None:
        """Compute and cache the pairs once (on the first process only)."""
        if self.hparams.shards is not None and self.hparams.cache and not Path(self.hparams.cache).is_file():
            self._compute()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        h = self.hparams
        if h.pairs is not None:
            loaded = [load_pairs(path) for path in h.pairs]
            if len({t.shape[1] for t, _ in loaded}) > 1:
                raise PriorError(f"the pairs files {', '.join(h.pairs)} hold embeddings of different sizes.")
            text, image = torch.cat([t for t, _ in loaded]), torch.cat([i for _, i in loaded])
        elif h.cache and Path(h.cache).is_file():
            self._check_cache()
            text, image = load_pairs(h.cache)
        else:
            text, image = self._compute()
        order = torch.randperm(len(text), generator=torch.Generator().manual_seed(h.seed))
        n_val = int(round(len(text) * h.val_fraction))
        if n_val >= len(text):
            raise PriorError(f"{len(text)} pairs are too few to hold out {n_val} for validation.")
        val, train = order[:n_val], order[n_val:]
        self.train_set = TensorDataset(text[train], image[train])
        self.val_set = TensorDataset(text[val], image[val]) if n_val else None

    @property
    def embed_dim(self) -> int:
        """Embedding size of the pairs (after :meth:`setup`)."""
        return self.train_set.tensors[0].shape[1]

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, drop_last=False,
                          num_workers=self.hparams.num_workers, generator=generator)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers)


class PriorSystem(LightningModule):
    """Fits a :class:`DiffusionPrior` by denoising standardised image embeddings given
    text embeddings (DALL-E 2 recipe: predict the clean embedding, MSE, AdamW).

    Args:
        embed_dim: CLIP embedding size (must match the data).
        preset: ``"paper"`` (DALL-E 2 size) or ``"tiny"`` prior; ``prior_args`` override
            its arguments.
        prior_args: :class:`DiffusionPrior` arguments over the preset's (``transformer``,
            ``scheduler``, ``sampler``, ``condition_dropout``, ``seed``).
        init_from: a prior folder (project or diffusers layout) to fine-tune (only
            ``prior_args``' ``condition_dropout`` applies to it).
        learning_rate: peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps, then cosine decay to zero.
        val_steps: sampling steps in validation.
        val_guidance: guidance scale in validation.
    """

    def __init__(
        self,
        embed_dim: int = 768,
        preset: str = "paper",
        prior_args: dict[str, Any] | None = None,
        init_from: str | None = None,
        learning_rate: float = 1.1e-4,
        weight_decay: float = 6.0e-2,
        warmup_steps: int = 500,
        val_steps: int = 10,
        val_guidance: float = 1.0,
    ) -> None:
        super().__init__()
        if preset not in DiffusionPrior.PRESETS:
            raise PriorError(f"preset must be one of {', '.join(DiffusionPrior.PRESETS)}, not {preset!r}.")
        check_optimizer_settings(learning_rate, warmup_steps, weight_decay)
        self.save_hyperparameters()
        arguments = {**DiffusionPrior.PRESETS[preset], **(prior_args or {}), "embed_dim": embed_dim}
        if init_from is not None:
            self.prior = DiffusionPrior.load(init_from, embed_dim=embed_dim)
            self.prior.condition_dropout = arguments.get("condition_dropout", 0.1)
        else:
            self.prior = DiffusionPrior(**arguments)
        self.register_buffer("statistics_ready", torch.tensor(init_from is not None))

    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        if getattr(datamodule, "embed_dim", self.prior.embed_dim) != self.prior.embed_dim:
            raise PriorError(
                f"the pairs hold {datamodule.embed_dim}-d embeddings but the prior is {self.prior.embed_dim}-d; "
                "set model.embed_dim to match the query encoder."
            )
        if bool(self.statistics_ready):
            return
        texts, images, seen = [], [], 0
        for text, image in datamodule.train_dataloader():
            texts.append(text)
            images.append(image)
            seen += len(text)
            if seen >= 100_000:
                break
        self.prior.set_statistics(torch.cat(texts), torch.cat(images))
        self.statistics_ready.fill_(True)

    def _loss(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        prior = self.prior
        clean = prior.normalize_image(image)
        condition = prior.drop_condition(prior.normalize_text(text)) if self.training else prior.normalize_text(text)
        noise = torch.randn_like(clean)
        schedule = prior.noise_scheduler
        timesteps = torch.randint(0, schedule.config.num_train_timesteps, (len(clean),), device=clean.device)
        noisy = schedule.add_noise(clean, noise, timesteps)
        kind = schedule.config.prediction_type
        target = {"sample": clean, "epsilon": noise}.get(kind)
        if target is None:
            target = schedule.get_velocity(clean, noise, timesteps)
        return F.mse_loss(prior(noisy, timesteps, condition), target)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._loss(*batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        text, image = batch
        self.log("val/loss", self._loss(text, image), prog_bar=True)
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        sampled = self.prior.sample(text, steps=self.hparams.val_steps, guidance=self.hparams.val_guidance,
                                    generator=generator)
        target = F.normalize(image, dim=-1)
        self.log("val/cosine_prior", (sampled * target).sum(-1).mean(), prog_bar=True)
        self.log("val/cosine_text", (F.normalize(text, dim=-1) * target).sum(-1).mean())

    def configure_optimizers(self):
        parameters = [p for p in self.prior.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(self.hparams.warmup_steps, total // 2)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def export(self, directory: str | Path, provenance: dict | None = None) -> Path:
        """Save the prior for inference (``DiffusionPrior.load``), with the training
        provenance (:func:`clipcore.training.training_provenance`)."""
        return export_pretrained(self, self.prior, directory, provenance)
