"""Training CLIPSonic: the LightningModule around :class:`~clipsonic.model.CLIPSonic`.

Each training clip (a :class:`clipcore.shard_stream.MixBatch` with one source) gives its mel and
its condition: the CLIP embedding of one random frame, read from the shards when they hold
precomputed embeddings, else computed from the delivered frames with the query encoder.
The condition is dropped (replaced by the learned null condition) with probability
``condition_dropout`` so that classifier-free guidance works at sampling time. Weights are
also averaged (EMA); validation and the exported model use the average.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn

from clipcore.checkpoint import QUERY_ENCODER_DIR
from clipcore.finetune import HoldsFrozenParts, initial_model
from clipcore.media import log_media
from clipcore.plots import figure_pixels, mel_figure
from clipcore.training import check_finite_training, check_optimizer_settings, export_pretrained
from clipsonic.generate import MEL_CEILING, sample_mels
from clipsonic.model import PLACEHOLDER_MEL_MEAN, PLACEHOLDER_MEL_STD, CLIPSonic
from clipsonic.vocoder import GriffinLim

__all__ = ["CLIPSonicSystem"]

class CLIPSonicSystem(HoldsFrozenParts, LightningModule):
    """Mel diffusion trained on (frame, audio) pairs of video clips.

    Args:
        preset: ``"tiny"`` or ``"paper"`` model.
        embed_dim: CLIP embedding size; by default the query encoder's, else the preset's.
        model_args: overrides of the preset's :class:`~clipsonic.model.CLIPSonic` arguments.
        prediction_type: ``"v_prediction"`` (default: on the toy overfitting task it learns
            in 150 steps what epsilon prediction has not learnt by then) or ``"epsilon"``.
        query_encoder: spec for ``clipcore.query.QueryEncoder.load`` (open_clip name,
            checkpoint folder, ``ARCH=FILE``). Needed when the batches carry frames; always
            recorded in the exported model so that inference uses the same CLIP space.
            With ``init_from`` the checkpoint's own is used.
        init_from: fine-tune: a CLIPSonic checkpoint folder (an export of this system);
            ``preset``, ``embed_dim``, ``model_args`` and ``prediction_type`` then do not
            apply, and its mel and condition statistics are kept.
        freeze: parts of the model whose weights stay fixed (dotted module or parameter
            names of :class:`~clipsonic.model.CLIPSonic`, e.g. ``unet.down_blocks.0``).
        condition_dropout: probability of training a clip with the null condition.
        snr_gamma: Min-SNR-gamma loss weighting (Hang et al., 2023): each step's loss is
            weighted by ``min(SNR, gamma)`` over the weight its prediction target implies,
            so that nearly clean steps no longer dominate; ``None`` for the plain mean
            squared error.
        learning_rate: AdamW learning rate, reached after ``warmup_steps`` linear steps.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps.
        ema_decay: decay of the weight average (with the usual ``(1+n)/(10+n)`` warm-up).
        mel_stats_batches: training batches read before training to set the per-row mel
            normalization and the condition standardisation (0: keep the model's
            placeholders, with a warning).
        val_sampler, val_steps, val_guidance: sampling settings of validation examples.
        val_examples: clips generated and logged at each validation.
    """

    def __init__(
        self,
        preset: str = "tiny",
        embed_dim: int | None = None,
        model_args: dict[str, Any] | None = None,
        prediction_type: str = "v_prediction",
        query_encoder: str | None = None,
        init_from: str | None = None,
        freeze: list[str] | None = None,
        condition_dropout: float = 0.1,
        snr_gamma: float | None = None,
        learning_rate: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 1000,
        ema_decay: float = 0.999,
        mel_stats_batches: int = 16,
        val_sampler: str = "ddim",
        val_steps: int = 25,
        val_guidance: float = 3.0,
        val_examples: int = 4,
    ) -> None:
        super().__init__()
        if preset not in CLIPSonic.PRESETS:
            raise ValueError(f"preset must be one of {', '.join(CLIPSonic.PRESETS)}, not {preset!r}.")
        check_optimizer_settings(learning_rate, warmup_steps, weight_decay)
        ranges = {"ema_decay": (ema_decay, 0 <= ema_decay < 1, "at least 0 and below 1"),
                  "condition_dropout": (condition_dropout, 0 <= condition_dropout <= 1, "between 0 and 1"),
                  "snr_gamma": (snr_gamma, snr_gamma is None or 0 < snr_gamma < math.inf, "positive (or null)"),
                  "val_steps": (val_steps, val_steps >= 1, "at least 1")}
        for name, (value, valid, expected) in ranges.items():
            if not valid:
                raise ValueError(f"{name} must be {expected}, not {value}.")
        self.save_hyperparameters()
        start = initial_model(init_from, CLIPSonic) if init_from is not None else None
        if start is not None:
            if query_encoder is not None and query_encoder != start.init_args.get("query_encoder"):
                raise ValueError(f"init_from {init_from} was trained with the query encoder "
                                 f"{start.init_args.get('query_encoder')}, not {query_encoder}; leave query_encoder unset.")
            query_encoder, embed_dim = start.init_args.get("query_encoder"), start.embed_dim
            bundled = Path(init_from) / QUERY_ENCODER_DIR
            query_encoder = str(bundled) if bundled.is_dir() else query_encoder
        encoder = None
        if query_encoder is not None:
            from clipcore.query import QueryEncoder  # open_clip only when frames may need it

            encoder = QueryEncoder.load(query_encoder)
            if embed_dim is not None and embed_dim != encoder.embed_dim:
                raise ValueError(f"embed_dim {embed_dim} differs from the query encoder's {encoder.embed_dim}.")
            embed_dim = encoder.embed_dim
        object.__setattr__(self, "encoder", encoder)  # frozen and not part of the checkpoint
        self.encoder_spec = query_encoder
        settings = {"prediction_type": prediction_type, "query_encoder": query_encoder, **(model_args or {})}
        if embed_dim is not None:
            settings["embed_dim"] = embed_dim
        self.model = start if start is not None else CLIPSonic.from_preset(preset, **settings)
        self.freeze_parts(freeze or [])
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.noise_scheduler = DDPMScheduler(**self.model.scheduler_config())
        self.register_buffer("stats_ready", torch.tensor(start is not None))

    # --- conditions and mels ------------------------------------------------------------

    def conditions(self, batch) -> torch.Tensor:
        """``[B, D]`` normalized condition of each clip of a one-source ``MixBatch``."""
        if batch.embeddings is not None:
            return F.normalize(batch.embeddings[:, 0].float(), dim=-1)
        if self.encoder is None:
            raise ValueError("the batches carry frames but no query_encoder is configured.")
        frames = batch.frames[:, 0]  # [B, F, 3, H, W]
        pick = torch.randint(frames.shape[1], (frames.shape[0],), device=frames.device)
        chosen = frames[torch.arange(frames.shape[0], device=frames.device), pick]
        return self.encoder.to(self.device).encode_image(chosen).to(self.device)

    def mels(self, batch) -> torch.Tensor:
        """``[B, n_mels, T]`` log-mels of the clips, ``T`` cropped to what the U-Net halves."""
        mel = self.model.log_mel(batch.sources[:, 0])
        usable = mel.shape[-1] // self.model.downsample_factor * self.model.downsample_factor
        if usable == 0:
            raise ValueError(f"segments of {mel.shape[-1]} mel frames are too short for this model.")
        return mel[..., :usable]

    def diffusion_loss(self, model: CLIPSonic, batch, generator: torch.Generator | None = None, dropout: float = 0.0):
        """Mean squared error of the noise (or v) prediction at random steps."""
        x0 = model.normalize(self.mels(batch))
        cond = self.conditions(batch)
        batch_size = x0.shape[0]
        noise = torch.randn(x0.shape, generator=generator, device=self.device)
        t = torch.randint(0, model.num_train_timesteps, (batch_size,), generator=generator, device=self.device)
        drop = torch.rand(batch_size, generator=generator, device=self.device) < dropout
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        target = noise if model.prediction_type == "epsilon" else self.noise_scheduler.get_velocity(x0, noise, t)
        error = F.mse_loss(model(noisy, t, cond, drop=drop), target, reduction="none").mean((1, 2, 3))
        return (error * self.loss_weights(t)).mean()

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """``[B]`` Min-SNR-gamma weights of diffusion steps ``t`` (ones without ``snr_gamma``)."""
        gamma = self.hparams.snr_gamma
        if gamma is None:
            return torch.ones(t.shape, device=t.device)
        alphas = self.noise_scheduler.alphas_cumprod.to(t.device)[t]
        snr = alphas / (1 - alphas)
        return snr.clamp(max=gamma) / (snr + 1 if self.model.prediction_type == "v_prediction" else snr)

    # --- training -----------------------------------------------------------------------

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        rate = getattr(datamodule, "hparams", {}).get("sample_rate") if datamodule is not None else None
        if rate is not None and rate != self.model.mel_config.sample_rate:
            raise ValueError(f"the data are at {rate} Hz but the model's mels at {self.model.mel_config.sample_rate} Hz.")
        if bool(self.stats_ready):
            return
        if self.hparams.mel_stats_batches > 0 and datamodule is not None:
            self._set_statistics(datamodule.train_dataloader())
        if not bool(self.stats_ready) and self.model.has_placeholder_statistics:
            reason = ("model.mel_stats_batches is 0" if self.hparams.mel_stats_batches <= 0 else
                      "the trainer has no datamodule to read them from" if datamodule is None else
                      f"the first {self.hparams.mel_stats_batches} training batches held fewer than 2 clips")
            rank_zero_warn(f"CLIPSonic trains on placeholder mel statistics (mean {PLACEHOLDER_MEL_MEAN}, std "
                           f"{PLACEHOLDER_MEL_STD} in every row), not ones measured on its data: {reason}.",
                           category=UserWarning)

    @torch.no_grad()
    def _set_statistics(self, loader) -> None:
        """Mel and condition normalization from a few batches, summed over all ranks."""
        n_mels, dim = self.model.mel_config.n_mels, self.model.embed_dim
        # [frames, clips, sum |e|^2, mel sums (M), mel squares (M), condition sums (D)]
        sums = torch.zeros(3 + 2 * n_mels + dim, dtype=torch.float64, device=self.device)
        for index, batch in enumerate(loader):
            if index >= self.hparams.mel_stats_batches:
                break
            batch = batch.to(self.device)
            mel, cond = self.mels(batch).double(), self.conditions(batch).double()
            sums[0] += mel.shape[0] * mel.shape[2]
            sums[1] += cond.shape[0]
            sums[2] += (cond**2).sum()
            sums[3 : 3 + n_mels] += mel.sum((0, 2))
            sums[3 + n_mels : 3 + 2 * n_mels] += (mel**2).sum((0, 2))
            sums[3 + 2 * n_mels :] += cond.sum(0)
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        frames, clips = sums[0], sums[1]
        if clips < 2:
            return
        mel_mean = sums[3 : 3 + n_mels] / frames
        mel_std = (sums[3 + n_mels : 3 + 2 * n_mels] / frames - mel_mean**2).clamp(min=1e-6).sqrt().clamp(min=1e-3)
        cond_mean = sums[3 + 2 * n_mels :] / clips
        cond_std = ((sums[2] / clips - (cond_mean**2).sum()) / dim).clamp(min=1e-12).sqrt()
        for model in (self.model, self.ema):
            model.set_statistics(mel_mean.float(), mel_std.float(), cond_mean.float(), cond_std.float())
        self.stats_ready.fill_(True)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(self.model, batch, dropout=self.hparams.condition_dropout)
        check_finite_training(self, "training loss", loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if (batch_idx + 1) % self.trainer.accumulate_grad_batches:
            return  # the weights only change once per accumulated step
        step = self.global_step
        decay = min(self.hparams.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for averaged, live in zip(self.ema.parameters(), self.model.parameters()):
                averaged.lerp_(live, 1 - decay)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=self.hparams.learning_rate,
            weight_decay=self.hparams.weight_decay,
        )
        warmup = max(1, self.hparams.warmup_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # --- validation ---------------------------------------------------------------------

    def validation_step(self, batch, batch_idx: int) -> None:
        generator = torch.Generator(self.device).manual_seed(batch_idx)
        loss = self.diffusion_loss(self.ema, batch, generator=generator)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch), sync_dist=True)
        if batch_idx == 0 and self.hparams.val_examples > 0 and self.trainer.is_global_zero:
            self._log_examples(batch)

    @torch.no_grad()
    def _log_examples(self, batch) -> None:
        count = min(self.hparams.val_examples, len(batch))
        real = self.mels(batch)[:count]
        fake = sample_mels(
            self.ema, self.conditions(batch)[:count], real.shape[-1], list(range(count)),
            self.hparams.val_steps, self.hparams.val_guidance, self.hparams.val_sampler,
        ).float()  # bf16 under bf16 mixed precision; the figures and the vocoder take float32
        vocoder = GriffinLim(mel=self.model.init_args.get("mel")).to(self.device)
        audio = vocoder(fake)
        for i, (r, f, wave) in enumerate(zip(real, fake, audio)):
            label = batch.labels[i][0] if batch.labels else None
            title = f"validation example {i}" + (f" ({label})" if label else "") + f", step {self.global_step}"
            panels = [[("real", r), ("generated (image query)", f)]]
            scale = (math.log(vocoder.mel.config.log_floor), MEL_CEILING)  # fixed: figures of all steps compare
            image = figure_pixels(mel_figure(panels, scale, vocoder.mel.config, title))
            log_media(self.trainer, f"val/generated{i}", self.global_step, {"real-vs-generated": image},
                      {"generated": wave}, vocoder.sample_rate, caption=label)

    # --- export -------------------------------------------------------------------------

    def export(self, directory: str | Path, provenance: dict[str, Any] | None = None) -> Path:
        """Save the averaged model as a checkpoint folder for ``Generator.from_pretrained``.

        A query encoder given as a local checkpoint folder is copied to
        ``directory/query_encoder`` so that the folder is self-contained.
        """
        spec = self.encoder_spec
        encoder = self.encoder if self.encoder is not None and spec is not None and Path(spec).is_dir() else None
        return export_pretrained(self, self.ema, directory, provenance, encoder)
