"""Inference: from a text or image query to waveforms (no training code here).

A :class:`Generator` holds the mel diffusion model, a vocoder, and (loaded when first
needed) the CLIP query encoder and the diffusion prior. Three query modes, as in the paper:

- ``"image"``: CLIP image embedding of the query image (what the model was trained on);
- ``"zs"``: CLIP text embedding used directly in place of an image embedding (zero-shot);
- ``"pd"``: the diffusion prior first maps the text embedding to an image embedding.

And one of ours, with no training: ``"gap"``, the text embedding carried across CLIP's
modality gap (:meth:`clipcore.modality_gap.ModalityGap.cross`, measured with
``recipes/measure_gap.py``), as ``clipsep separate --gap`` does for separation.

Where :meth:`Generator.from_pretrained` finds the parts (``DIR`` is a CLIPSonic checkpoint
folder, ``config.json`` + ``model.safetensors``), first match wins:

- query encoder: the ``query_encoder`` argument (a ``QueryEncoder`` or a spec for
  ``QueryEncoder.load``: checkpoint folder, open_clip name, weights file); else
  ``DIR/query_encoder/``; else the spec the model recorded when it was trained.
- prior (``"pd"`` mode only): the ``prior`` argument (a ``DiffusionPrior`` or its
  folder); else ``DIR/prior/``.
- modality gap (``"gap"`` mode only): the ``gap`` argument alone (a ``ModalityGap`` or
  its file).
- vocoder: the ``vocoder`` argument (a vocoder module, ``"griffinlim"`` or a HiFi-GAN
  folder, see :mod:`clipsonic.vocoder`); else ``DIR/vocoder/``; else Griffin-Lim.

Sampling is deterministic for a seed: sample ``n`` of every query starts from noise drawn
with seed ``seed + n``, whatever the batch size.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import diffusers
import torch
from tqdm.auto import tqdm

from clipcore.embeddings import checked_embeddings
from clipcore.errors import is_whole_number
from clipcore.files import load_image
from clipcore.modality_gap import ModalityGap, ModalityGapError, text_modes
from clipsonic.generation_limits import (
    MAX_DURATION,
    MAX_GUIDANCE,
    MODES,
    SAMPLERS,
    GenerationError,
    check_guidance,
    check_output_memory,
    check_seed,
)
from clipsonic.model import CLIPSonic
from clipsonic.vocoder import load_vocoder

__all__ = ["Generator", "Generation", "GenerationError", "SAMPLERS", "MODES", "MAX_GUIDANCE", "check_guidance",
           "check_output_memory", "make_scheduler", "sample_mels"]

MEL_CEILING = 4.0
"""Largest log-mel value a generated spectrogram may hold."""


def make_scheduler(name: str, model: CLIPSonic):
    """A fresh diffusers scheduler by sampler name, on the model's training schedule."""
    if name not in SAMPLERS:
        raise GenerationError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}.")
    class_name, settings = SAMPLERS[name]
    return getattr(diffusers, class_name)(**model.scheduler_config(), **settings)


@torch.no_grad()
def sample_mels(
    model: CLIPSonic,
    embeddings: torch.Tensor,
    frames: int,
    seeds: list[int],
    steps: int = 50,
    guidance: float = 3.0,
    sampler: str = "ddim",
    on_step: Callable[[], Any] | None = None,
) -> torch.Tensor:
    """Sample log-mels with classifier-free guidance.

    Args:
        model: the diffusion model (evaluated as is: call ``eval()`` first).
        embeddings: ``[B, D]`` conditions.
        frames: mel frames to return (the U-Net runs on the next multiple of its
            ``downsample_factor``).
        seeds: ``B`` seeds, one per row: row ``i``'s starting noise depends only on ``seeds[i]``.
        steps: sampler steps.
        guidance: guidance scale (1: plain conditional; 0: unconditional).
        sampler: a name of :data:`SAMPLERS`.
        on_step: called after every step (progress bars).

    Returns:
        ``[B, n_mels, frames]`` log-mel spectrograms.
    """
    device = embeddings.device
    scheduler = make_scheduler(sampler, model)
    scheduler.set_timesteps(steps, device=device)
    shape = (1, model.mel_config.n_mels, model.padded_frames(frames))
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    x = torch.stack(noise).to(device) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        prediction = model.guided(scheduler.scale_model_input(x, t), t, embeddings, guidance)
        x = scheduler.step(prediction, t, x).prev_sample
        if on_step is not None:
            on_step()
    # The ceiling is well above any real mel (full-scale audio stays below about 2.5); it only
    # keeps an untrained or diverging model from producing non-finite audio.
    floor = math.log(model.mel_config.log_floor)
    return model.denormalize(x)[..., :frames].clamp(min=floor, max=MEL_CEILING)


@dataclass
class Generation:
    """What :meth:`Generator.generate` returns.

    Attributes:
        waveforms: ``[Q, N, samples]`` for Q queries and N samples per query.
        mels: ``[Q, N, n_mels, frames]`` the generated log-mels.
        embeddings: ``[Q, D]`` the conditions used.
        sample_rate: rate of ``waveforms``.
    """

    waveforms: torch.Tensor
    mels: torch.Tensor
    embeddings: torch.Tensor
    sample_rate: int


class Generator:
    """Text- or image-queried audio generation with a trained CLIPSonic model.

    Args:
        model: the diffusion model, put in eval mode on ``device``; on a CPU its U-Net's
            weights are made channels-last (faster to sample from, slower to train).
        query_encoder: a ``QueryEncoder``, a spec for ``QueryEncoder.load``, or ``None``
            (use the spec the model recorded; needed only for text and image queries).
        prior: a ``DiffusionPrior``, its folder, or ``None`` (``"pd"`` mode unavailable).
        gap: a ``ModalityGap``, its file, or ``None`` (``"gap"`` mode unavailable).
        vocoder: a vocoder module, a spec for :func:`~clipsonic.vocoder.load_vocoder`, or
            ``None`` for Griffin-Lim.
        device: where to run.
        batch_size: clips sampled together.
    """

    def __init__(self, model: CLIPSonic, query_encoder=None, prior=None, vocoder=None, device="cpu", batch_size: int = 16,
                 gap: ModalityGap | str | os.PathLike | None = None):
        if not is_whole_number(batch_size) or batch_size < 1:
            raise GenerationError(f"batch_size must be a whole number, at least 1, not {batch_size!r}.")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        if self.device.type == "cpu":
            # oneDNN's CPU convolutions run faster on channels-last weights (the activations
            # follow): on a 2-core AMD EPYC, 7% off a quick start `clipsonic generate` (44
            # clips), 5% off the tiny preset's benchmark, the paper preset's unchanged.
            # `to`, not `contiguous`: a 1 x 1 or one-channel kernel counts as channels-last
            # contiguous in its first strides, which `contiguous` keeps and oneDNN reads as
            # the other layout (10% slower sampling).
            for weight in self.model.parameters():  # the U-Net's convolution kernels
                if weight.dim() == 4:
                    weight.data = weight.data.to(memory_format=torch.channels_last)
        self._query_encoder = query_encoder if query_encoder is not None else model.query_encoder
        self._prior = prior
        self.gap = None if gap is None else self._checked_gap(gap)
        if vocoder is None or isinstance(vocoder, (str, os.PathLike)):
            vocoder = load_vocoder(vocoder, mel=model.init_args.get("mel"), device=self.device)
        self.vocoder = vocoder.to(self.device).eval()
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, query_encoder=None, prior=None, vocoder=None, device="cpu",
                        **kwargs) -> "Generator":
        """Load a checkpoint folder and find its parts (see the module doc)."""
        directory = Path(directory)
        model = CLIPSonic.from_pretrained(directory, map_location=device)
        parts = {"query_encoder": query_encoder, "prior": prior, "vocoder": vocoder}
        for name, given in parts.items():
            if given is None and (directory / name).is_dir():
                parts[name] = directory / name
        return cls(model, device=device, **parts, **kwargs)

    @property
    def sample_rate(self) -> int:
        return self.vocoder.sample_rate

    @property
    def has_prior(self) -> bool:
        """Whether a diffusion prior was given or found (``"pd"`` mode possible)."""
        return self._prior is not None

    def _checked_gap(self, gap: ModalityGap | str | os.PathLike) -> ModalityGap:
        try:
            return ModalityGap.of_width(gap, self.model.embed_dim)
        except ModalityGapError as error:
            raise GenerationError(str(error)) from None

    @property
    def text_modes(self) -> list[str]:
        """The text modes this generator offers, the default first: ``"gap"`` when a gap was
        given, ``"pd"`` when a prior was given or found, and ``"zs"``."""
        return text_modes(gap=self.gap is not None, prior=self.has_prior)

    def query_encoder(self):
        """The CLIP query encoder, loaded on first use."""
        from clipcore.query import QueryEncoder  # imported here: open_clip is only needed for queries

        if self._query_encoder is None:
            raise GenerationError("no query encoder: pass one (a checkpoint folder or an open_clip name).")
        if not isinstance(self._query_encoder, QueryEncoder):
            self._query_encoder = QueryEncoder.load(str(self._query_encoder), device=str(self.device))
        if self._query_encoder.embed_dim != self.model.embed_dim:
            raise GenerationError(
                f"the query encoder gives {self._query_encoder.embed_dim}-d embeddings but the model is "
                f"conditioned on {self.model.embed_dim}-d ones."
            )
        return self._query_encoder

    def prior(self):
        """The diffusion prior, loaded on first use."""
        from clipcore.prior import DiffusionPrior

        if self._prior is None:
            raise GenerationError('mode "pd" needs a diffusion prior: pass its checkpoint folder.')
        if not isinstance(self._prior, DiffusionPrior):
            self._prior = DiffusionPrior.load(self._prior, embed_dim=self.model.embed_dim, map_location=self.device)
        return self._prior.to(self.device).eval()

    @torch.no_grad()
    def embed(self, text=None, image=None, mode: str | None = None, seed: int = 0, templates=None) -> torch.Tensor:
        """Conditions for the queries: ``[Q, D]`` normalized CLIP (image-space) embeddings.

        Args:
            text: a prompt or a list of prompts (modes ``"zs"``, ``"pd"``, ``"gap"``).
            image: a PIL image or an image file's path, a list of them, or uint8
                ``[Q, 3, H, W]`` (mode ``"image"``).
            mode: one of :data:`MODES`; by default ``"image"`` for images, for text the first of
                :attr:`text_modes` (``"gap"`` with a gap, else ``"pd"`` with a prior, else ``"zs"``).
            seed: seed of the prior's sampling (with the prior's default steps and guidance);
                every prompt's noise comes from this seed alone, so its condition is the
                same whatever the other prompts of the call.
            templates: prompt template with ``{}`` or a list of them (averaged); default
                the query encoder's ``"a photo of {}"``.
        """
        if (text is None) == (image is None):
            raise GenerationError("give either text or an image query, not both or neither.")
        check_seed(seed, 1)
        if mode is None:
            mode = "image" if image is not None else self.text_modes[0]
        if mode not in MODES:
            raise GenerationError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}.")
        if (mode == "image") != (image is not None):
            raise GenerationError(f'mode "{mode}" takes {"an image" if mode == "image" else "text"} queries.')
        encoder = self.query_encoder()
        if mode == "image":
            images = image if isinstance(image, (list, tuple, torch.Tensor)) else [image]
            if isinstance(images, torch.Tensor) and images.dim() == 3:
                images = images[None]
            elif not isinstance(images, torch.Tensor):  # files by their path, as `clipsep separate` takes them
                images = [load_image(Path(i)) if isinstance(i, (str, os.PathLike)) else i for i in images]
            return encoder.encode_image(images).to(self.device)
        if not isinstance(text, (str, list, tuple)) or not all(isinstance(t, str) for t in text):
            raise GenerationError(f"text must be a prompt or a list of prompts, not {type(text).__name__}.")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or any(not t.strip() for t in texts):
            raise GenerationError("a text query is empty.")
        try:
            embeddings = encoder.encode_text(texts, templates=templates).to(self.device)
        except ValueError as error:  # a template without {}
            raise GenerationError(str(error)) from None
        if mode == "pd":
            # One noise stream per prompt, each from the seed: a prompt's condition does not
            # depend on the other prompts of the call.
            embeddings = self.prior().sample(embeddings, seed=seed)
        elif mode == "gap":
            if self.gap is None:
                raise GenerationError('mode "gap" needs a modality gap file (recipes/measure_gap.py).')
            embeddings = self.gap.cross(embeddings)
        return embeddings

    @torch.no_grad()
    def check_duration(self, duration: float, name: str = "duration") -> None:
        """Refuse a clip length the model cannot make: above 0, at least one window of its
        mel spectrogram and at most :data:`MAX_DURATION` seconds.

        Raises:
            GenerationError: naming ``name`` (an option, say), the value and the limit it breaks.
        """
        if not 0 < duration <= MAX_DURATION:
            raise GenerationError(f"{name} must be above 0 and at most {MAX_DURATION:g} seconds, not {duration:g}.")
        config = self.model.mel_config
        if duration * config.sample_rate < config.n_fft:
            raise GenerationError(f"{name} must be at least {config.n_fft / config.sample_rate:g} seconds (one window "
                                  f"of the mel spectrogram), not {duration:g}.")

    def generate(
        self,
        text: str | list[str] | None = None,
        image=None,
        mode: str | None = None,
        embeddings: torch.Tensor | None = None,
        steps: int = 50,
        guidance: float = 3.0,
        sampler: str = "ddim",
        seed: int = 0,
        num_samples: int = 1,
        duration: float = 4.0,
        progress: bool = False,
    ) -> Generation:
        """Generate ``num_samples`` clips of ``duration`` seconds per query.

        Args:
            text, image, mode: the queries (see :meth:`embed`), or instead
            embeddings: ``[Q, D]`` conditions given directly.
            steps: sampler steps; guidance: guidance scale; sampler: a name of :data:`SAMPLERS`.
            seed: sample ``n`` of each query starts from noise of seed ``seed + n``.
            num_samples: clips per query.
            duration: seconds per clip.
            progress: show a progress bar counting sampler steps.
        """
        self._check_settings(steps, guidance, num_samples)
        self.check_duration(duration)
        config = self.model.mel_config
        check_seed(seed, num_samples)
        if embeddings is None:
            embeddings = self.embed(text, image, mode, seed=seed)
        elif text is not None or image is not None:
            raise GenerationError("give text, an image query or embeddings, not several.")
        embeddings = self._checked_conditions(embeddings)
        queries = embeddings.shape[0]
        length = round(duration * config.sample_rate)
        frames = config.frames(length)
        batch = min(self.batch_size, queries * num_samples)
        check_output_memory(queries, num_samples, duration, config, self.device,
                            self.model.sampling_bytes(batch, frames))
        rows = [(q, n) for q in range(queries) for n in range(num_samples)]
        chunks = [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        mels, waves = [], []
        with tqdm(total=len(chunks) * steps, unit="step", disable=not progress, desc="generating") as bar:
            for chunk in chunks:
                conditions = embeddings[[q for q, _ in chunk]]
                seeds = [seed + n for _, n in chunk]
                mel = sample_mels(self.model, conditions, frames, seeds, steps, guidance, sampler, bar.update)
                mels.append(mel)
                waves.append(self.vocoder(mel, length))
        mel = torch.cat(mels).view(queries, num_samples, *mels[0].shape[1:])
        wave = torch.cat(waves).view(queries, num_samples, length)
        if not (torch.isfinite(mel).all() and torch.isfinite(wave).all()):
            raise GenerationError(f"sampling diverged (non-finite values) at guidance {guidance:g}; lower it.")
        return Generation(wave, mel, embeddings, self.sample_rate)

    def _check_settings(self, steps: int, guidance: float, num_samples: int) -> None:
        """Refuse sampler settings :meth:`generate` cannot use, naming the value."""
        most = self.model.scheduler_config()["num_train_timesteps"]
        for name, value, top in (("steps", steps, most), ("the number of samples", num_samples, None)):
            if not is_whole_number(value) or value < 1 or (top and value > top):
                limit = f"between 1 and {top} (the training schedule's steps)" if top else "at least 1"
                raise GenerationError(f"{name} must be a whole number {limit}, not {value!r}.")
        check_guidance(guidance)

    def _checked_conditions(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``embeddings`` as float32 ``[Q, D]`` on the device, refused unless it is Q >= 1
        finite rows of the model's condition width D."""
        return checked_embeddings(embeddings, self.model.embed_dim, error=GenerationError).to(self.device)
