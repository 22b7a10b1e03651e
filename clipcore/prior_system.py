"""Training the diffusion prior: the data module of pairs of CLIP text and image
embeddings (:mod:`clipcore.prior_pairs` reads, writes and computes them), and the
LightningModule that fits :class:`clipcore.prior.DiffusionPrior` to them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, LightningModule
from torch.utils.data import DataLoader, TensorDataset

from clipcore.errors import is_whole_number
from clipcore.files import file_identity
from clipcore.prior import DiffusionPrior, PriorError
from clipcore.prior_pairs import compute_pairs, load_caption_function, load_pairs, pairs_source, save_pairs
from clipcore.prompts import prompt_templates
from clipcore.query import QueryEncoder
from clipcore.shards import expand_shards
from clipcore.training import check_finite_training, check_optimizer_settings, export_pretrained

__all__ = ["PriorDataModule", "PriorSystem"]


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
        if not (is_whole_number(batch_size) and batch_size >= 1):
            raise PriorError(f"batch_size must be a whole number of at least 1, got {batch_size}.")
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
        shard_files = [file_identity(url) if os.path.isfile(url) else {"path": url} for url in expand_shards(h.shards)]
        encoder, encoder_files = h.encoder, []
        weights = h.encoder.partition("=")[2] if "=" in h.encoder else h.encoder  # ARCH=FILE, or a folder
        if h.encoder != "tiny" and os.path.exists(weights):
            local = Path(weights).resolve()
            encoder = str(local) if weights == h.encoder else f"{h.encoder.partition('=')[0]}={local}"
            encoder_files = [file_identity(str(path)) for path in
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
        check_finite_training(self, "training loss", loss)
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
