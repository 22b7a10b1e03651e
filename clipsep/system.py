"""Training CLIPSep: the LightningModule around :class:`~clipsep.model.CLIPSep`.

Mix-and-separate: a :class:`clipcore.shard_stream.MixBatch` holds mixtures of N clips and each
clip's query (its CLIP image embedding averaged over 3 frames, precomputed in the shards
or computed here from the delivered frames with a frozen query encoder). The network
predicts one mask per clip from the mixture (one U-Net pass for all N queries); the loss
is the weighted binary-mask BCE, or with noise heads the noise-invariant loss (see
:mod:`clipsep.losses`). Optimizer and schedule are the paper's: Adam 1e-3, linear warm-up
over 5k steps, then linear decay to 0.1x at 100k steps (gradient clipping 1.0 is the
trainer's ``gradient_clip_val``).

Validation (and ``test``) logs the loss, the SDR / SDR improvement of every source of
every mixture with the soft query masks and the mixture phase, as ``clipsep separate``
separates by default (the official evaluation binarises masks at 0.5, where a collapsed
model's empty masks give silent estimates that drop out of the mean), the share of
near-silent estimates (``silent``, :func:`clipsep.metrics.near_silent`), and a few
examples as audio and spectrogram images. The best (highest
validation SDR improvement: the loss is not comparable before and after the switch to
noise-invariant training) and the last model are exported with ``save_pretrained`` to ``<log_dir>/pretrained/{best,last}``, with
the git commit, step, metrics and the run's resolved config as provenance, ready for
``clipsep.separate.Separator.from_pretrained``.

The paper's baselines are query modes of the same system (``query_mode``): ``"label"``
(LabelSep) reads each source's query from a learned table with one row per label
(``batch.labels``), a supervised reference; ``"pit"`` has no query: N learned rows give N
masks, matched to the N sources by the best permutation in the loss
(:func:`clipsep.losses.best_permutation`) and in validation and test, where that
assignment is the oracle. The table is the model's ``learned_query``; the export records
``query_mode`` and ``labels`` (row order) in its provenance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torchmetrics import MeanMetric

from clipcore.checkpoint import QUERY_ENCODER_DIR, CheckpointError
from clipcore.errors import ClipAudioError, UsageError, is_whole_number
from clipcore.finetune import HoldsFrozenParts, initial_model
from clipcore.media import log_media
from clipcore.plots import figure_pixels, linear_bins, spectrogram_figure
from clipcore.spectral import STFTConfig, stft
from clipcore.training import ExportPretrained, check_finite_training, check_optimizer_settings, export_pretrained
from clipsep.convert import load_official_model
from clipsep.losses import (
    best_permutation,
    mask_loss,
    noise_activation_penalty,
    noise_invariant_loss,
    separation_targets,
)
from clipsep.masks import masked_stems
from clipsep.metrics import near_silent, separation_scores
from clipsep.model import CLIPSep

__all__ = ["CLIPSepSystem", "lr_multiplier", "validation_figure"]


def lr_multiplier(step: int, warmup_steps: int, decay_steps: int, decay_multiplier: float) -> float:
    """The official schedule: ``(step + 1) / warmup`` during warm-up, then a linear decay
    from 1 to ``decay_multiplier`` at ``decay_steps``, constant after."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= decay_steps:
        return decay_multiplier
    position = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return 1 - (1 - decay_multiplier) * position


class CLIPSepSystem(HoldsFrozenParts, LightningModule):
    """CLIPSep / CLIPSep-NIT trained on mixtures of video clips.

    Args:
        preset: ``"paper"`` or ``"tiny"`` network; ``model_args`` override its arguments
            (e.g. ``{"noise_heads": 0}`` for plain CLIPSep, ``{"layers": 5}``).
        model_args: :class:`~clipsep.model.CLIPSep` arguments over the preset's.
        query_encoder: spec for ``clipcore.query.QueryEncoder.load`` (open_clip name such
            as ``ViT-B-32/openai``, ``ARCH=FILE``, or a checkpoint folder). Needed when the
            batches carry frames; recorded in the export so that inference uses the same
            CLIP space (a folder is copied into the export). With ``init_from`` it defaults
            to the checkpoint's (its ``query_encoder/`` folder, or the one it names).
        init_from: fine-tune: a CLIPSep checkpoint folder, or the official ``best_model.pt``
            (read with ``torch.load(weights_only=True)``); ``preset`` and ``model_args``
            then do not apply. A checkpoint that reads raw CLIP embeddings (provenance
            ``query_normalization: none``, as the official one) is trained on raw text
            embeddings (audio shards) and exported with that convention.
        freeze: parts of the network whose weights stay fixed (dotted module or parameter
            names: ``input_norm`` and ``down`` are the U-Net encoder, ``up`` its decoder,
            ``query_proj``, ``noise_proj``, ``mask_scale``, ``mask_bias``; ``down.0`` a level).
        learning_rate: Adam learning rate.
        warmup_steps: linear warm-up steps.
        decay_steps: step at which the linear decay reaches ``decay_multiplier``.
        decay_multiplier: final learning-rate multiplier.
        nit_warmup_steps: steps trained with the plain loss before the noise-invariant one.
        margin_weight: weight of the margin regulariser of the noise heads (official
            ``reg_coef``, 0 in the paper).
        margin: its margin (official ``reg_epsilon``).
        activation_weight: weight of the noise-activation regulariser (``reg2_coef``, 0.1).
        activation_threshold: its threshold (``reg2_epsilon``, 0.25).
        val_examples: separated examples logged at each validation.
        export_dir: where best/last models go (default ``<log_dir>/pretrained``).
        query_mode: ``"clip"`` (CLIP embeddings, CLIPSep), ``"label"`` (LabelSep) or
            ``"pit"`` (no query, permutation-invariant training).
        labels: the labels of ``query_mode="label"``, one learned query each.
        pit_outputs: masks of ``query_mode="pit"``: the number of sources per mixture.
        query_noise: standard deviation of Gaussian noise added to each element of the
            unit-norm CLIP queries in training, which are then normalized again (noise
            injection, as CapDec, Nukrai et al. 2022): the masks learn to answer queries
            near an image's, such as text embeddings across the modality gap. 0 (the
            paper) adds none; only for ``query_mode="clip"`` on normalized queries.
    """

    def __init__(
        self,
        preset: str = "paper",
        model_args: dict[str, Any] | None = None,
        query_encoder: str | None = None,
        init_from: str | None = None,
        freeze: list[str] | None = None,
        learning_rate: float = 1e-3,
        warmup_steps: int = 5000,
        decay_steps: int = 100000,
        decay_multiplier: float = 0.1,
        nit_warmup_steps: int = 0,
        margin_weight: float = 0.0,
        margin: float = 0.1,
        activation_weight: float = 0.1,
        activation_threshold: float = 0.25,
        val_examples: int = 2,
        export_dir: str | None = None,
        query_mode: Literal["clip", "label", "pit"] = "clip",
        labels: list[str] | None = None,
        pit_outputs: int = 2,
        query_noise: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_optimizer_settings(learning_rate, warmup_steps, decay_multiplier=decay_multiplier)
        if not (is_whole_number(decay_steps) and decay_steps >= 0):
            raise ValueError(f"decay_steps must be a whole number of steps, 0 or more, got {decay_steps}.")
        self._checkpoint_step = 0  # the step of a checkpoint loaded outside training (validate, test)
        rows = {"clip": 0, "label": len(labels or []), "pit": pit_outputs}.get(query_mode)
        if rows is None:
            raise ValueError(f"query_mode must be clip, label or pit, got {query_mode!r}.")
        if (query_mode == "label") != bool(labels) or len(set(labels or [])) != len(labels or []):
            raise ValueError(f"labels must be distinct names, given exactly when query_mode is label; got {labels!r} "
                             f"with query_mode {query_mode!r}.")
        if query_mode == "pit" and pit_outputs < 1:
            raise ValueError(f"pit_outputs must be at least 1, got {pit_outputs}.")
        self.label_index = {name: i for i, name in enumerate(labels or [])}
        if init_from is None:
            args = {**(model_args or {}), **({"learned_queries": rows} if rows else {})}
            self.model = CLIPSep.from_preset(preset, seed=None, **args)  # seed_everything's stream
        else:
            self.model = initial_model(init_from, CLIPSep, foreign=load_official_model)
        self.freeze_parts(freeze or [])
        facts = self.model.provenance or {}
        self.raw_queries = facts.get("query_normalization") == "none"
        if query_noise < 0 or (query_noise > 0 and (query_mode != "clip" or self.raw_queries)):
            raise ValueError(f"query_noise must be 0, or positive for CLIP queries the model normalizes; got "
                             f"{query_noise} with query_mode {query_mode!r}"
                             + (" and a model that reads raw CLIP embeddings." if self.raw_queries else "."))
        if query_encoder is None and init_from is not None:
            bundled = Path(init_from) / QUERY_ENCODER_DIR
            query_encoder = str(bundled) if bundled.is_dir() else facts.get("query_encoder")
        if query_encoder is not None:
            # Loaded only when frames need it, or at export: a spec it cannot use would
            # otherwise surface after training, or be recorded in the export as it is.
            from clipcore.query import QueryEncoder

            QueryEncoder.check_spec(query_encoder)
        self.query_encoder = query_encoder
        object.__setattr__(self, "encoder", None)  # frozen, loaded when needed, not checkpointed
        # Mean SDR / SDRi of the non-silent estimates (the official evaluation's rule), and
        # the share of near-silent estimates.
        self.scores = torch.nn.ModuleDict(
            {f"{stage}_{name}": MeanMetric(nan_strategy="ignore")
             for stage in ("val", "test") for name in ("sdr", "sdri", "silent")}
        )

    def setup(self, stage: str) -> None:
        data = getattr(self.trainer, "datamodule", None)
        rate = getattr(getattr(data, "hparams", None), "sample_rate", None)
        if rate is not None and rate != self.model.sample_rate:
            raise CheckpointError(f"the data are at {rate} Hz but {self._described_model()} works at "
                                  f"{self.model.sample_rate} Hz.")
        segment = getattr(getattr(data, "hparams", None), "segment_samples", None)
        if segment is not None and segment < self.model.stft.n_fft:
            raise CheckpointError(f"data.segment_samples {segment} is shorter than one STFT window of "
                                  f"{self._described_model()} ({self.model.stft.n_fft} samples).")
        hop, multiple = self.model.stft.hop_length, self.model.frames_multiple
        if segment is not None and (segment // hop + 1) % multiple:
            fitting = max(1, round((segment + 1) / (multiple * hop))) * multiple * hop - 1
            raise UsageError(f"data.segment_samples {segment} gives {segment // hop + 1} STFT frames, not a multiple "
                             f"of {multiple} for {self._described_model()}'s U-Net; use k * {multiple} * {hop} - 1 "
                             f"samples ({fitting}, say).")

    def _described_model(self) -> str:
        return f"the model of {self.hparams.init_from}" if self.hparams.init_from else "the model"

    # --- queries and forward ------------------------------------------------------------

    def _encoder(self):
        if self.encoder is None:
            if self.query_encoder is None:
                raise ValueError("the batches carry frames but no query_encoder is configured.")
            from clipcore.query import QueryEncoder

            encoder = QueryEncoder.load(self.query_encoder)
            if encoder.embed_dim != self.model.query_dim:
                raise CheckpointError(f"the query encoder {self.query_encoder} gives {encoder.embed_dim}-d embeddings, "
                                      f"{self._described_model()} expects {self.model.query_dim}.")
            object.__setattr__(self, "encoder", encoder.eval())
        return self.encoder.to(self.device)

    def queries(self, batch) -> torch.Tensor:
        """``[B, N, D]`` query of each source of a ``MixBatch``: its L2-normalized CLIP
        embedding (for a model that reads raw CLIP embeddings, the raw text embeddings of
        audio shards; with ``query_noise``, made noisy in training), its label's learned row
        (``"label"``), or the N learned rows (``"pit"``)."""
        mode, table = self.hparams.query_mode, self.model.learned_query
        if mode == "label":
            unknown = sorted({str(name) for row in batch.labels for name in row if name not in self.label_index})
            if unknown:
                raise ValueError(f"LabelSep has no query for the labels {unknown}; it knows {list(self.label_index)}.")
            index = torch.tensor([[self.label_index[name] for name in row] for row in batch.labels], device=self.device)
            return table(index)
        if mode == "pit":
            count = batch.sources.shape[1]
            if count != table.num_embeddings:
                raise ValueError(f"PIT has {table.num_embeddings} outputs but the mixtures have {count} sources; "
                                 f"set pit_outputs to {count}.")
            return table.weight[None].expand(len(batch.sources), -1, -1)
        queries = self._clip_queries(batch)
        if self.training and self.hparams.query_noise > 0:
            queries = F.normalize(queries + self.hparams.query_noise * torch.randn_like(queries), dim=-1)
        return queries

    def _clip_queries(self, batch) -> torch.Tensor:
        """``[B, N, D]`` CLIP queries of a ``MixBatch`` (see :meth:`queries`)."""
        if batch.embeddings is not None and batch.embeddings.shape[-1] != self.model.query_dim:
            raise CheckpointError(f"the shards hold {batch.embeddings.shape[-1]}-d embeddings but "
                                  f"{self._described_model()} reads {self.model.query_dim}-d queries; "
                                  "prepare them with its query encoder.")
        if self.raw_queries:
            if batch.embeddings is None or batch.text_queries is None or not bool(batch.text_queries.all()):
                raise ClipAudioError(f"{self.hparams.init_from} reads raw CLIP embeddings (query_normalization: "
                                     "none, as the official model), which only audio shards' text embeddings are; "
                                     "fine-tune it on audio shards with data.encoder set.")
            return batch.embeddings.float()
        if batch.embeddings is not None:
            return F.normalize(batch.embeddings.float(), dim=-1)
        frames = batch.frames  # [B, N, F, 3, H, W]
        flat = self._encoder().encode_image(frames.flatten(0, 1))  # [B*N, D], averages the F frames
        return flat.view(*frames.shape[:2], -1).to(self.device)

    def outputs(self, batch) -> dict[str, torch.Tensor]:
        """Network outputs and targets of a ``MixBatch`` (B mixtures of N sources, T frames):
        ``spec_mix [B, 513, T]`` complex, ``mask [B, N, 256, T]`` and ``noise [B, M, 256, T]``
        logits, ``targets [B, N, 256, T]``, ``weight [B, 1, 256, T]``."""
        spec_mix = stft(batch.mixture, self.model.stft)  # [B, 513, T]
        mag_mix = spec_mix.abs()[:, None]
        frames = mag_mix.shape[-1]
        if frames % self.model.frames_multiple:
            raise ValueError(
                f"segments of {batch.mixture.shape[-1]} samples give {frames} STFT frames, not a multiple of "
                f"{self.model.frames_multiple}; use segment_samples = k * {self.model.frames_multiple} * "
                f"{self.model.stft.hop_length} - 1 (65535 for the paper)."
            )
        mask_logits, noise_logits = self.model(mag_mix, self.queries(batch))
        targets, weight = separation_targets(mag_mix, stft(batch.sources, self.model.stft).abs())
        if self.hparams.query_mode == "pit":  # output k -> source: the best permutation (the oracle in evaluation)
            order = best_permutation(mask_logits, targets, weight)  # [B, N]
            mask_logits = mask_logits.gather(1, order[:, :, None, None].expand_as(mask_logits))
        return {"spec_mix": spec_mix, "mask": mask_logits, "noise": noise_logits, "targets": targets, "weight": weight}

    def loss_terms(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``loss`` (scalar, to minimise) and the mean mask activations, from :meth:`outputs`."""
        hp = self.hparams
        terms = {"mean_act": torch.sigmoid(out["mask"].float()).mean()}
        step = max(self.global_step, self._checkpoint_step)  # validate/test start at step 0
        if self.model.num_noise_heads and step >= hp.nit_warmup_steps:
            separation, _ = noise_invariant_loss(
                out["mask"], out["noise"], out["targets"], out["weight"], hp.margin_weight, hp.margin
            )
            penalty = noise_activation_penalty(out["noise"], hp.activation_threshold)
            terms["loss"] = separation.mean() + hp.activation_weight * penalty
            terms["mean_noise_act"] = torch.sigmoid(out["noise"].float()).sum(1).mean()
        else:
            terms["loss"] = mask_loss(out["mask"], out["targets"], out["weight"]).mean()
            if self.model.num_noise_heads:  # heads waiting for NIT: a zero term keeps them in DDP's graph
                terms["loss"] = terms["loss"] + 0.0 * out["noise"].float().sum()
        return terms

    # --- training -----------------------------------------------------------------------

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = self.outputs(batch)
        check_finite_training(self, "mask network's output", out["mask"], out["noise"])  # before BCE refuses it
        terms = self.loss_terms(out)
        check_finite_training(self, "training loss", terms["loss"])
        for name, value in terms.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=len(batch))
        return terms["loss"]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._checkpoint_step = int(checkpoint.get("global_step", 0))

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=hp.learning_rate)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_multiplier(step, hp.warmup_steps, hp.decay_steps, hp.decay_multiplier)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_callbacks(self):
        return [ExportPretrained(self.hparams.export_dir, folder="pretrained", best_and_last=True, monitor="val/sdri",
                                 mode="max")]

    # --- validation ---------------------------------------------------------------------

    def separate(self, out: dict[str, torch.Tensor], length: int, binary: bool = False) -> torch.Tensor:
        """``[B, N, S]`` waveforms: the soft (or with ``binary``, > 0.5) query masks of
        :meth:`outputs` on the mixture STFT, as :class:`~clipsep.separate.Separator` applies them."""
        return masked_stems(out["mask"].float(), out["spec_mix"][:, None], length, self.model.stft, binary)[:, :, 0]

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def _evaluate(self, batch, batch_idx: int, stage: str) -> None:
        out = self.outputs(batch)
        terms = self.loss_terms(out)
        for name, value in terms.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "loss", batch_size=len(batch), sync_dist=True)
        estimates = self.separate(out, batch.mixture.shape[-1])
        sources = batch.sources.float()
        mixture = batch.mixture.float()[:, None].expand_as(sources)
        scores = separation_scores(
            sources.flatten(0, 1), (mixture - sources).flatten(0, 1), estimates.flatten(0, 1), mixture.flatten(0, 1)
        )
        scores["silent"] = near_silent(estimates.flatten(0, 1), mixture.flatten(0, 1)).astype(float)
        for name in ("sdr", "sdri", "silent"):
            metric = self.scores[f"{stage}_{name}"]
            metric.update(torch.as_tensor(scores[name], dtype=torch.float32, device=self.device))
            self.log(f"{stage}/{name}", metric, prog_bar=name == "sdri", batch_size=sources.shape[0] * sources.shape[1])
        if stage == "val" and batch_idx == 0 and self.hparams.val_examples > 0 and self.trainer.is_global_zero:
            self._log_examples(batch, estimates)

    @torch.no_grad()
    def _log_examples(self, batch, estimates: torch.Tensor) -> None:
        count = min(self.hparams.val_examples, len(batch))
        for i in range(count):
            label = (batch.labels[i][0] or "source0") if batch.labels else "source0"
            waves = {"mixture": batch.mixture[i], "estimate": estimates[i, 0], "target": batch.sources[i, 0]}
            title = f"validation example {i}, query: {label}, step {self.global_step}"
            image = figure_pixels(validation_figure(waves, self.model.stft, self.model.sample_rate, title))
            log_media(self.trainer, f"val/example{i}", self.global_step, {"spectrograms": image}, waves,
                      self.model.sample_rate, caption=label)

    # --- export -------------------------------------------------------------------------

    def export(self, directory: str | Path, provenance: dict[str, Any] | None = None) -> Path:
        """Save the network for ``Separator.from_pretrained`` (a query encoder given as a
        local folder is copied to ``directory/query_encoder``)."""
        spec, mode = self.query_encoder, self.hparams.query_mode
        facts = {"query_encoder": spec} if spec is not None else {}
        if mode != "clip":
            facts.update(query_mode=mode, labels=list(self.label_index))
        if self.hparams.init_from is not None:
            facts["init_from"] = str(self.hparams.init_from)
        encoder = self._encoder() if spec is not None and Path(spec).is_dir() else None
        return export_pretrained(self, self.model, directory, {**facts, **(provenance or {})}, encoder)


def validation_figure(waves: dict[str, torch.Tensor], config: STFTConfig, sample_rate: int, title: str,
                      floor_db: float = -80.0):
    """Spectrograms of named waveforms side by side, in dB relative to the loudest bin of
    them all (so that an estimate quieter than its mixture looks quieter).

    Args:
        waves: panel title (e.g. ``"mixture"``, ``"estimate"``, ``"target"``) -> ``[S]`` waveform.
        config: the model's STFT settings.
        sample_rate: of the waveforms.
        title: above the figure.
        floor_db: the bottom of the colour map, relative to the loudest bin.

    Returns:
        a :func:`clipcore.plots.spectrogram_figure` with one row of ``len(waves)`` panels.
    """
    db = {name: 20 * torch.log10(stft(w.detach().float().cpu(), config).abs().clamp_min(1e-8)) for name, w in waves.items()}
    top = max(float(values.max()) for values in db.values())
    panels = [(name, values - top) for name, values in db.items()]
    return spectrogram_figure([panels], config.hop_length / sample_rate, linear_bins(config.n_freqs, sample_rate),
                              (floor_db, 0.0), "dB (0 = loudest bin)", title=title)
