"""Diffusion prior: a CLIP text embedding in, the CLIP image embedding it would have had out.

CLIPSonic-PD closes the modality gap between text queries and the image embeddings the
audio model was trained on with a DALL-E 2 style prior: a diffusers ``PriorTransformer``
denoises a (normalized) image embedding conditioned on the text embedding, predicting the
clean embedding at every step; classifier-free guidance contrasts it with a learned null
condition. The normalization statistics of both embeddings live in the checkpoint::

    prior = DiffusionPrior.load("runs/prior/model", embed_dim=encoder.embed_dim)
    image_like = prior.sample(encoder.encode_text(["violin"]), steps=25, guidance=2.0)

Training lives in :mod:`clipcore.prior_system`; this module never imports Lightning.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import diffusers
import torch
import torch.nn.functional as F
from diffusers import PriorTransformer
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from clipcore.checkpoint import CONFIG_NAME, CheckpointError, Pretrained

__all__ = ["DiffusionPrior", "PriorError", "DEFAULT_SCHEDULER"]

DEFAULT_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "sample",
    "clip_sample": True,
    "clip_sample_range": 10.0,
    "timestep_spacing": "trailing",
}
"""Noise schedule of the prior (as in the DALL-E 2 / Karlo prior: cosine betas, the model
predicts the clean embedding, predictions clipped to +-10 standard deviations)."""


class PriorError(CheckpointError):
    """A prior that cannot be loaded or used with a query encoder, in one sentence."""


class DiffusionPrior(Pretrained, nn.Module):
    """Text embedding -> image embedding by conditional diffusion.

    Args:
        embed_dim: size of the CLIP embeddings (text in, image out).
        transformer: ``PriorTransformer`` config (diffusers argument names); None gives
            the DALL-E 2 size (20 layers, 32 heads of 64) conditioned on the pooled text
            embedding only (no per-token text states).
        scheduler: noise schedule config for diffusers schedulers; None gives
            :data:`DEFAULT_SCHEDULER`.
        sampler: diffusers scheduler class used by :meth:`sample` (e.g. ``DDIMScheduler``,
            ``DPMSolverMultistepScheduler``).
        condition_dropout: probability that training replaces the text condition by the
            learned null condition (classifier-free guidance).

    The weights are drawn from the global random state (a training run seeds it from its
    config); :meth:`tiny` and :meth:`paper` take a ``seed`` and leave that state alone.
    """

    RENAMED_ARGUMENTS = {"cond_drop_prob": "condition_dropout"}
    RETIRED_ARGUMENTS = frozenset({"seed"})
    PRESETS = {
        "paper": {},  # the constructor's defaults: DALL-E 2's prior size
        "tiny": {"transformer": {"num_layers": 2, "num_attention_heads": 4, "attention_head_dim": 16}},
    }

    def __init__(
        self,
        embed_dim: int = 768,
        transformer: dict | None = None,
        scheduler: dict | None = None,
        sampler: str = "DDIMScheduler",
        condition_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        transformer = {
            "num_layers": 20, "num_attention_heads": 32, "attention_head_dim": 64, "embedding_dim": embed_dim,
            "num_embeddings": 0, "additional_embeddings": 4, "encoder_hid_proj_type": None, **(transformer or {}),
        }
        self.scheduler_config = {**DEFAULT_SCHEDULER, **(scheduler or {})}
        if not hasattr(diffusers, sampler):
            raise PriorError(f"diffusers has no scheduler {sampler!r}; use e.g. DDIMScheduler.")
        self.sampler = sampler
        if not 0.0 <= condition_dropout < 1.0:
            raise PriorError(f"condition_dropout must be in [0, 1), got {condition_dropout}.")
        self.condition_dropout = condition_dropout
        self.transformer = PriorTransformer(**transformer)
        self.null_embedding = nn.Parameter(torch.zeros(1, embed_dim))
        self.embed_dim = embed_dim
        in_dim = transformer.get("embedding_proj_dim") or transformer["embedding_dim"]
        out_dim = transformer.get("clip_embed_dim") or transformer["embedding_dim"]
        if in_dim != embed_dim or out_dim != embed_dim:
            raise PriorError(
                f"the prior transformer maps {in_dim}-d text embeddings to {out_dim}-d image embeddings, "
                f"not {embed_dim}-d to {embed_dim}-d."
            )
        # Image statistics are the transformer's own clip_mean/clip_std (as in diffusers'
        # pretrained priors); they are statistics, not trained weights.
        self.transformer.clip_mean.requires_grad_(False)
        self.transformer.clip_std.requires_grad_(False)
        self.transformer.clip_std.data.fill_(1.0)
        self.register_buffer("text_mean", torch.zeros(1, embed_dim))
        self.register_buffer("text_std", torch.ones(1, embed_dim))
        self.noise_scheduler = diffusers.DDPMScheduler.from_config(self.scheduler_config)

    @classmethod
    def tiny(cls, embed_dim: int = 32, seed: int = 0, **overrides: Any) -> "DiffusionPrior":
        """A small prior (2 layers, 4 heads of 16) for tests and the toy world; ``seed``
        initialises it without touching the global random state."""
        return cls.from_preset("tiny", seed, embed_dim=embed_dim, **overrides)

    @classmethod
    def paper(cls, embed_dim: int = 768, seed: int = 0, **overrides: Any) -> "DiffusionPrior":
        """The DALL-E 2 size (20 layers, 32 heads of 64), ViT-L/14 embeddings by default."""
        return cls.from_preset("paper", seed, embed_dim=embed_dim, **overrides)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls, path: str | os.PathLike, embed_dim: int | None = None, map_location: str | torch.device = "cpu"
    ) -> "DiffusionPrior":
        """Load a project prior checkpoint or a pretrained prior in diffusers layout.

        Args:
            path: a folder written by :meth:`save_pretrained`; or a diffusers
                ``PriorTransformer`` folder (``config.json`` with ``_class_name`` and
                ``diffusion_pytorch_model.safetensors``), or a diffusers pipeline folder
                holding one in ``prior/`` (the pipeline's ``prior_scheduler/`` or
                ``scheduler/`` config is used when present).
            embed_dim: the query encoder's embedding size; a prior of another size is
                refused with an error naming both sizes.
            map_location: device of the weights.

        Raises:
            PriorError: not a prior folder, a config that is not valid JSON, or sizes that disagree.
        """
        folder = Path(path)
        config = _read_json(folder / CONFIG_NAME)
        if config is not None and "class" in config:
            prior = cls.from_pretrained(folder, map_location=map_location)
        else:
            prior = cls._from_diffusers(folder, config).to(map_location)
        if embed_dim is not None and prior.embed_dim != embed_dim:
            raise PriorError(
                f"{folder}: the prior works on {prior.embed_dim}-d CLIP embeddings but the query encoder "
                f"makes {embed_dim}-d ones; use a prior trained with the same CLIP model."
            )
        return prior

    @classmethod
    def _from_diffusers(cls, folder: Path, config: dict | None) -> "DiffusionPrior":
        root = folder
        if config is None and (folder / "prior" / CONFIG_NAME).is_file():
            folder, config = folder / "prior", _read_json(folder / "prior" / CONFIG_NAME)
        if not isinstance(config, dict) or config.get("_class_name") != "PriorTransformer":
            raise PriorError(
                f"{root}: is neither a prior checkpoint of this project nor a diffusers PriorTransformer folder."
            )
        try:
            transformer = PriorTransformer.from_pretrained(folder)
        except (OSError, ValueError, RuntimeError) as error:
            reason = " ".join(str(error).split())[:200]
            raise PriorError(f"{folder}: the diffusers prior cannot be loaded ({reason}).") from None
        candidates = [base / name / "scheduler_config.json" for base in dict.fromkeys((root, folder.parent))
                      for name in ("prior_scheduler", "scheduler")]
        scheduler = next((_read_json(path) for path in candidates if path.is_file()), None)
        if transformer.encoder_hidden_states_proj is not None:
            raise PriorError(
                f"{folder}: this prior also needs per-token text encoder states, which the query encoder "
                "does not provide; use a prior conditioned on the pooled text embedding only."
            )
        keys = ("num_train_timesteps", "beta_schedule", "prediction_type", "clip_sample", "clip_sample_range")
        dims = [transformer.config.embedding_proj_dim, transformer.config.clip_embed_dim]
        embed_dim = transformer.config.embedding_dim
        if any(dim not in (None, embed_dim) for dim in dims):
            raise PriorError(f"{folder}: priors whose text and image embedding sizes differ are not supported.")
        prior = cls(
            embed_dim=embed_dim,
            transformer={key: value for key, value in transformer.config.items() if not key.startswith("_")},
            scheduler={key: scheduler[key] for key in keys if key in (scheduler or {})},
            condition_dropout=0.0,
        )
        prior.transformer.load_state_dict(transformer.state_dict())
        prior.provenance = {"converted_from": str(root)}
        return prior

    # ------------------------------------------------------------------ statistics
    @torch.no_grad()
    def set_statistics(self, text_embeddings: torch.Tensor, image_embeddings: torch.Tensor) -> None:
        """Set the per-dimension mean and standard deviation of both embeddings.

        Args:
            text_embeddings: ``[N, D]`` text embeddings of training pairs.
            image_embeddings: ``[N, D]`` image embeddings of the same pairs.
        """
        for mean, std, values in (
            (self.text_mean, self.text_std, text_embeddings),
            (self.transformer.clip_mean, self.transformer.clip_std, image_embeddings),
        ):
            values = values.detach().float().to(mean.device)
            mean.copy_(values.mean(0, keepdim=True))
            std.copy_(values.std(0, keepdim=True).clamp_min(1e-4) if len(values) > 1 else torch.ones_like(std))

    def normalize_text(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` text embeddings -> the standardised condition."""
        return (text_embeddings - self.text_mean) / self.text_std

    def normalize_image(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` image embeddings -> the standardised diffusion space."""
        return (image_embeddings - self.transformer.clip_mean) / self.transformer.clip_std

    # ------------------------------------------------------------------ model
    def forward(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor
    ) -> torch.Tensor:
        """Predict the clean standardised image embedding.

        Args:
            noisy: ``[B, D]`` noisy standardised image embeddings.
            timesteps: ``[B]`` (or scalar) diffusion steps.
            condition: ``[B, D]`` standardised text embeddings (or null embeddings).

        Returns:
            ``[B, D]`` prediction (what the scheduler's ``prediction_type`` names).
        """
        return self.transformer(noisy, timesteps, proj_embedding=condition).predicted_image_embedding

    def drop_condition(self, condition: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Replace each row of ``condition [B, D]`` by the null embedding with
        probability ``condition_dropout`` (training for classifier-free guidance)."""
        drop = torch.rand(condition.shape[0], 1, device=condition.device, generator=generator) < self.condition_dropout
        return torch.where(drop, self.null_embedding.to(condition.dtype), condition)

    @torch.no_grad()
    def sample(
        self,
        text_embeddings: torch.Tensor,
        steps: int = 25,
        guidance: float = 2.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Sample image embeddings for text embeddings.

        Args:
            text_embeddings: ``[B, D]`` CLIP text embeddings (L2-normalized).
            steps: denoising steps.
            guidance: classifier-free guidance scale (1 = conditional model only).
            generator: random generator for the noise, or a list of ``B`` generators, one
                per row, so that row ``i`` depends only on its own text and ``generator[i]``
                (not on the other rows of the batch).
            seed: instead of ``generator``, one noise stream per row seeded with ``seed``:
                each text gets the image embedding it would get alone.

        Returns:
            float32 ``[B, D]`` L2-normalized image embeddings on the prior's device.
        """
        if text_embeddings.ndim != 2 or text_embeddings.shape[1] != self.embed_dim:
            raise PriorError(
                f"the prior takes [B, {self.embed_dim}] text embeddings, got shape {list(text_embeddings.shape)}."
            )
        if steps < 1:
            raise PriorError(f"steps must be at least 1, got {steps}.")
        if seed is not None and generator is not None:
            raise PriorError("give the prior a seed or random generators, not both.")
        device, dtype = self.text_mean.device, self.transformer.dtype
        if seed is not None:
            generator = [torch.Generator(device).manual_seed(seed) for _ in range(len(text_embeddings))]
        scheduler = getattr(diffusers, self.sampler).from_config(self.scheduler_config)
        scheduler.set_timesteps(steps, device=device)
        condition = self.normalize_text(text_embeddings.to(device=device, dtype=self.text_mean.dtype)).to(dtype)
        batch = condition.shape[0]
        if isinstance(generator, list) and len(generator) != batch:
            raise PriorError(f"got {len(generator)} random generators for {batch} text embeddings; give one per row.")
        if guidance != 1.0:
            condition = torch.cat([condition, self.null_embedding.to(dtype).expand(batch, -1)])
        latents = randn_tensor((batch, self.embed_dim), generator=generator, device=device, dtype=dtype)
        latents = latents * scheduler.init_noise_sigma
        for timestep in scheduler.timesteps:
            model_input = scheduler.scale_model_input(latents, timestep)
            if guidance != 1.0:
                conditional, unconditional = self(torch.cat([model_input] * 2), timestep, condition).chunk(2)
                prediction = unconditional + guidance * (conditional - unconditional)
            else:
                prediction = self(model_input, timestep, condition)
            latents = scheduler.step(prediction, timestep, latents, generator=generator).prev_sample
        return F.normalize(self.transformer.post_process_latents(latents).float(), dim=-1)


def _read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when there is no such file.

    Raises:
        PriorError: the file exists but does not hold a JSON object.
    """
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        reason = " ".join(str(error).split())[:200]
        raise PriorError(f"{path}: cannot be read as JSON ({type(error).__name__}: {reason}).") from None
    if not isinstance(value, dict):
        raise PriorError(f"{path}: holds JSON but not an object of settings.")
    return value
