"""Separator: the CLIPSep inference API (text or image queries, audio of any length).

::

    separator = Separator.from_pretrained("checkpoints/clipsep")
    result = separator.separate(wave, rate, ["playing violin", Path("cello.jpg")])
    result.stems        # [K, C, S]: one waveform per query, at the input's rate and length

Per segment: STFT of the mixture (``model.stft``), magnitude, ``mask_logits`` for all K
queries in one U-Net pass, sigmoid, log-to-linear unwarp (``clipcore.spectral``), a soft
mask (or binary, ``> 0.5``) times the mixture's complex STFT (= mixture magnitude with
the mixture phase), iSTFT. The input is resampled to the model's rate and back.

Long input is cut into segments of ``segment`` seconds that overlap by ``overlap`` of a
segment; each segment is weighted by a window that rises (sine squared) over the part it
shares with the previous segment and falls (cosine squared) over the part it shares with
the next, so the windows sum to exactly one and a segment's output counts fully away
from its neighbours. Segments are processed ``batch_size`` at a time and added into one
preallocated output, so memory beyond the input and output waveforms stays flat.

Multi-channel input: the masks are computed from the mono downmix and applied to every
channel (``mono=True`` separates the downmix instead).

Residual: ``mixture - sum(stems)`` at the input's rate, so stems plus residual give back
the input exactly. For one query that is everything the query did not take (including
content above the model's band limit, ``sample_rate / 2``); with queries whose masks
overlap, the shared part is subtracted more than once.

Noise stems: the noise heads of CLIPSep-NIT (query-free masks that absorbed off-screen
sound in training) applied like the query masks; they read the mean of the K queries'
features, as in training.

Where the query encoder comes from (:meth:`Separator.from_pretrained`): the
``query_encoder`` argument if given (an encoder, a checkpoint folder, or an open_clip
spec such as ``ViT-B-32/openai`` or ``ViT-B-32=/path/weights.bin``); otherwise the
``query_encoder/`` sub-folder of the checkpoint folder (the layout
:meth:`Separator.save_pretrained` writes); otherwise the spec recorded in the model's
provenance (``clipsep convert`` records ``ViT-B-32/openai``).

Query scale: this project trains on unit-norm CLIP embeddings; the official release was
trained on raw CLIP outputs, so a model converted from it (``from_official``, or a
folder whose provenance says ``query_normalization: none``) is fed raw embeddings.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Union

import torch

from clipcore.audio import AudioError, resample
from clipcore.checkpoint import QUERY_ENCODER_DIR, CheckpointError, load_pretrained
from clipcore.errors import ClipAudioError
from clipcore.files import load_image
from clipcore.query import DEFAULT_TEMPLATE, QueryEncoder
from clipcore.spectral import istft, stft, unwarp_to_linear
from clipsep.model import CLIPSep

__all__ = [
    "Separator",
    "Separation",
    "QueryError",
    "crossfade_window",
    "segment_starts",
]

Query = Union[str, os.PathLike, "PIL.Image.Image", torch.Tensor]  # noqa: F821


class QueryError(ClipAudioError):
    """A query that cannot be used (empty text, unreadable image), in one sentence."""


@dataclass
class Separation:
    """What :meth:`Separator.separate` returns (all at the input's rate and length).

    Attributes:
        stems: ``[K, C, S]``, one waveform per query, in query order.
        residual: ``[C, S]`` mixture minus the sum of the stems, when asked for.
        noise: ``[M, C, S]``, one waveform per noise head, when asked for.
        sample_rate: the input's sample rate.
    """

    stems: torch.Tensor
    residual: torch.Tensor | None
    noise: torch.Tensor | None
    sample_rate: int


def segment_starts(length: int, segment: int, overlap: int) -> list[int]:
    """Start samples of the segments covering ``length`` samples.

    Consecutive segments start ``segment - overlap`` apart; the last one may reach past
    the end (it is zero-padded). A signal no longer than one segment gets one segment.
    """
    if length <= segment:
        return [0]
    hop = segment - overlap
    return [i * hop for i in range(math.ceil((length - segment) / hop) + 1)]


def crossfade_window(segment: int, overlap: int, fade_in: bool, fade_out: bool) -> torch.Tensor:
    """Weights ``[segment]`` of one segment in the overlap-add.

    The first ``overlap`` samples rise as ``sin^2`` (if ``fade_in``), the last ``overlap``
    fall as ``cos^2`` (if ``fade_out``), the rest is one; where a falling edge meets the
    next segment's rising edge the two sum to one.
    """
    window = torch.ones(segment)
    if overlap > 0:
        rise = torch.sin(0.5 * math.pi * (torch.arange(overlap) + 0.5) / overlap) ** 2
        if fade_in:
            window[:overlap] = rise
        if fade_out:
            window[segment - overlap:] = 1.0 - rise
    return window


class Separator:
    """Text- or image-queried separation with a CLIPSep model.

    Args:
        model: the separation network.
        query_encoder: a :class:`clipcore.query.QueryEncoder` whose ``embed_dim`` equals
            ``model.query_dim``.
        device: where the networks run.
        segment: segment length in seconds (default: the model's training segment,
            65535 samples = 256 frames at 16 kHz), rounded to the nearest whole block of
            ``model.frames_multiple`` frames (128 frames, about 2.05 s, for the paper's model).
        overlap: fraction of a segment shared with the next one, in ``[0, 0.5]``.
        batch_size: segments per U-Net pass.
        binary: binary masks (``> 0.5``, as in the paper's evaluation) instead of soft.
        templates: text prompt template(s) with ``{}``; default ``"a photo of {}"``.
        normalize_queries: feed the model unit-norm CLIP embeddings (this project's
            training) or raw ones (the official release; a template ensemble then averages
            raw embeddings, as the official evaluation does). Default: raw when the model's
            provenance says ``query_normalization: none`` (set by ``clipsep convert``).
    """

    def __init__(
        self,
        model: CLIPSep,
        query_encoder: QueryEncoder,
        device: str | torch.device = "cpu",
        segment: float | None = None,
        overlap: float = 0.25,
        batch_size: int = 4,
        binary: bool = False,
        templates: str | Sequence[str] | None = None,
        normalize_queries: bool | None = None,
    ):
        if query_encoder.embed_dim != model.query_dim:
            raise CheckpointError(
                f"the query encoder {query_encoder.name} gives {query_encoder.embed_dim}-d embeddings "
                f"but the separation model expects {model.query_dim}-d queries."
            )
        if not 0.0 <= overlap <= 0.5:
            raise ValueError(f"overlap must be between 0 and 0.5 of a segment, got {overlap}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        if segment is not None and not segment > 0:
            raise ValueError(f"segment must be a positive number of seconds, got {segment}.")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.query_encoder = query_encoder.to(self.device).eval()
        self.sample_rate = model.sample_rate
        hop, block = model.stft.hop_length, model.frames_multiple
        samples = model.segment_samples if segment is None else round(segment * self.sample_rate)
        # frames = samples // hop + 1 must be a multiple of the U-Net's block of frames.
        frames = max(block, round((samples // hop + 1) / block) * block)
        self.segment_samples = frames * hop - 1
        self.overlap_samples = int(overlap * self.segment_samples)
        self.batch_size = batch_size
        self.binary = binary
        self.templates = [templates or DEFAULT_TEMPLATE] if templates is None or isinstance(templates, str) else list(templates)
        if not self.templates or not all("{}" in t for t in self.templates):
            raise QueryError(f"prompt templates need a {{}} for the query text, got {self.templates}.")
        if normalize_queries is None:
            normalize_queries = (model.provenance or {}).get("query_normalization") != "none"
        self.normalize_queries = normalize_queries

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        query_encoder: QueryEncoder | str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        **settings,
    ) -> "Separator":
        """A separator from a project checkpoint folder (see the module notes for where
        the query encoder comes from). ``settings`` go to the constructor.

        Raises:
            CheckpointError: a folder that is not a CLIPSep checkpoint, or no usable
                query encoder.
        """
        directory = Path(directory)
        model = load_pretrained(directory, map_location="cpu", expected=CLIPSep)
        if query_encoder is None:
            if (directory / QUERY_ENCODER_DIR).is_dir():
                query_encoder = directory / QUERY_ENCODER_DIR
            elif (model.provenance or {}).get("query_encoder"):
                query_encoder = model.provenance["query_encoder"]
            else:
                raise CheckpointError(
                    f"{directory}: has no {QUERY_ENCODER_DIR}/ folder and names no query encoder; "
                    "pass one (a folder, or an open_clip spec such as ViT-B-32=/path/to/weights.bin)."
                )
        return cls(model, _load_encoder(query_encoder), device=device, **settings)

    @classmethod
    def from_official(
        cls,
        path: str | os.PathLike,
        query_encoder: QueryEncoder | str | os.PathLike,
        device: str | torch.device = "cpu",
        **settings,
    ) -> "Separator":
        """A separator from the checkpoint file released with the paper (``best_model.pt``),
        read without unpickling objects; the official model uses ``ViT-B-32/openai``."""
        from clipsep.convert import load_official_model

        model = load_official_model(path)  # its provenance says query_normalization: none
        return cls(model, _load_encoder(query_encoder), device=device, **settings)

    @classmethod
    def load(
        cls,
        checkpoint: str | os.PathLike,
        query_encoder: QueryEncoder | str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        **settings,
    ) -> "Separator":
        """:meth:`from_pretrained` for a folder, :meth:`from_official` for a file."""
        path = Path(checkpoint)
        if path.is_file():
            if query_encoder is None:
                raise CheckpointError(
                    f"{path}: an official checkpoint file needs a query encoder "
                    "(for the released model: ViT-B-32/openai, or ViT-B-32=/path/to/weights.bin offline)."
                )
            return cls.from_official(path, query_encoder, device=device, **settings)
        if not path.exists():
            raise CheckpointError(f"{path}: no such checkpoint folder or file.")
        return cls.from_pretrained(path, query_encoder, device=device, **settings)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the model and, in ``query_encoder/``, its query encoder."""
        directory = Path(directory)
        self.model.save_pretrained(directory)
        self.query_encoder.save_pretrained(directory / QUERY_ENCODER_DIR)
        return directory

    # ------------------------------------------------------------------ queries
    def encode_queries(self, queries: Sequence[Query] | torch.Tensor) -> torch.Tensor:
        """Embed queries: text (``str``), images (a ``Path`` or a PIL image), or embeddings.

        A ``str`` is always text; give image files as :class:`pathlib.Path`.

        Args:
            queries: K queries, or a ``[K, D]`` tensor of embeddings.

        Returns:
            ``[K, D]`` float32 on the separator's device.

        Raises:
            QueryError: no queries or an empty text.
            ImageError: an unreadable image.
        """
        if isinstance(queries, torch.Tensor):
            if queries.dim() != 2 or queries.shape[1] != self.model.query_dim or not len(queries):
                raise QueryError(f"query embeddings must be [K, {self.model.query_dim}], got {list(queries.shape)}.")
            return queries.to(self.device, torch.float32)
        if isinstance(queries, (str, os.PathLike)) or not len(queries):
            raise QueryError("give a list of one or more queries.")
        texts, images, rows = [], [], []
        for query in queries:
            if isinstance(query, str):
                if not query.strip():
                    raise QueryError("a text query is empty.")
                rows.append(("text", len(texts)))
                texts.append(query.strip())
            elif isinstance(query, torch.Tensor):
                rows.append(("tensor", query))
            else:
                rows.append(("image", len(images)))
                images.append(load_image(query) if isinstance(query, os.PathLike) else query)
        text_emb = self.embed_text(texts) if texts else None
        image_emb = self.embed_images(images) if images else None
        out = []
        for kind, item in rows:
            if kind == "tensor":
                out.append(self.encode_queries(item.reshape(1, -1))[0])
            else:
                out.append((text_emb if kind == "text" else image_emb)[item])
        return torch.stack(out).to(self.device, torch.float32)

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str], templates: str | Sequence[str] | None = None) -> torch.Tensor:
        """Text queries at the scale the model reads (see ``normalize_queries``).

        Args:
            texts: K query texts.
            templates: template(s) with ``{}`` (default: the separator's); several are
                averaged (unit-norm: renormalized mean; raw: mean of raw outputs).

        Returns:
            ``[K, D]`` float32 on the separator's device.
        """
        encoder = self.query_encoder
        templates = self.templates if templates is None else [templates] if isinstance(templates, str) else list(templates)
        if self.normalize_queries:
            return encoder.encode_text(list(texts), templates=templates)
        return encoder.encode_text_raw(list(texts), templates)

    @torch.no_grad()
    def embed_images(self, images) -> torch.Tensor:
        """Image queries at the scale the model reads (see ``normalize_queries``).

        Args:
            images: a list of K PIL images, uint8 ``[K, 3, H, W]``, or uint8
                ``[K, F, 3, H, W]`` (F frames per query, averaged as in training).

        Returns:
            ``[K, D]`` float32 on the separator's device.
        """
        encoder = self.query_encoder
        if self.normalize_queries:
            return encoder.encode_image(images)
        if isinstance(images, torch.Tensor) and images.dim() == 5:
            count, frames = images.shape[:2]
            return self.embed_images(images.flatten(0, 1)).view(count, frames, -1).mean(1)
        return encoder.model.encode_image(encoder.preprocess(images)).float()

    # ------------------------------------------------------------------ separation
    @torch.inference_mode()
    def separate(
        self,
        wave: torch.Tensor,
        sample_rate: int,
        queries: Sequence[Query] | torch.Tensor,
        residual: bool = False,
        noise: bool = False,
        mono: bool = False,
        progress: Callable[[float], None] | None = None,
    ) -> Separation:
        """Separate the sounds the queries describe.

        Args:
            wave: ``[S]`` or ``[C, S]`` mixture.
            sample_rate: its rate.
            queries: K queries (see :meth:`encode_queries`) or ``[K, D]`` embeddings.
            residual: also return mixture minus the sum of the stems.
            noise: also return the noise heads' stems.
            mono: separate the channel average (output ``C = 1``).
            progress: called with the seconds of input covered by each finished batch.

        Returns:
            A :class:`Separation` at ``sample_rate`` and exactly ``S`` samples.

        Raises:
            AudioError: an empty or non-finite waveform. QueryError: bad queries.
        """
        if wave.dim() == 1:
            wave = wave[None]
        if wave.dim() != 2 or wave.shape[-1] == 0:
            raise AudioError(f"the mixture must be a non-empty [channels, samples] waveform, got {list(wave.shape)}.")
        if not torch.isfinite(wave).all():
            raise AudioError("the mixture contains non-finite samples (NaN or infinity).")
        embeddings = self.encode_queries(queries)
        mixture = wave.detach().to("cpu", torch.float32)
        if mono:
            mixture = mixture.mean(0, keepdim=True)
        length = mixture.shape[-1]
        model_wave = resample(mixture, sample_rate, self.sample_rate)
        num_noise = self.model.num_noise_heads if noise else 0
        outputs = self._overlap_add(model_wave, embeddings, num_noise, progress)
        if sample_rate != self.sample_rate:  # one stem at a time: bounded temporaries
            back = torch.empty(len(outputs), mixture.shape[0], length)
            for index, output in enumerate(outputs):
                back[index] = _fit(resample(output, self.sample_rate, sample_rate), length)
            outputs = back
        stems = outputs[: len(embeddings)]
        return Separation(
            stems=stems,
            residual=mixture - stems.sum(0) if residual else None,
            noise=outputs[len(embeddings):] if noise else None,
            sample_rate=sample_rate,
        )

    def _overlap_add(
        self, wave: torch.Tensor, embeddings: torch.Tensor, num_noise: int,
        progress: Callable[[float], None] | None,
    ) -> torch.Tensor:
        """Segment, separate in batches, crossfade: ``[C, S]`` -> ``[K + M, C, S]``."""
        channels, length = wave.shape
        segment, overlap = self.segment_samples, self.overlap_samples
        starts = segment_starts(length, segment, overlap)
        windows = {
            (fade_in, fade_out): crossfade_window(segment, overlap, fade_in, fade_out)
            for fade_in in (False, True) for fade_out in (False, True)
        }
        out = torch.zeros(len(embeddings) + num_noise, channels, length)
        done = 0
        for first in range(0, len(starts), self.batch_size):
            batch_starts = starts[first:first + self.batch_size]
            batch = torch.stack([
                torch.nn.functional.pad(wave[:, s:s + segment], (0, max(0, s + segment - length)))
                for s in batch_starts
            ]).to(self.device)
            separated = self._separate_segments(batch, embeddings, num_noise).cpu()
            for index, start in enumerate(batch_starts, start=first):
                window = windows[index > 0, index < len(starts) - 1]
                valid = min(segment, length - start)
                out[..., start:start + valid] += separated[index - first, ..., :valid] * window[:valid]
            last = first + len(batch_starts) - 1
            covered = length if last == len(starts) - 1 else batch_starts[-1] + segment - overlap
            if progress is not None:
                progress((covered - done) / self.sample_rate)
            done = covered
        return out

    def _separate_segments(self, batch: torch.Tensor, embeddings: torch.Tensor, num_noise: int) -> torch.Tensor:
        """``[B, C, L]`` segments -> ``[B, K + M, C, L]`` separated segments."""
        cfg = self.model.stft
        spec = stft(batch, cfg)  # [B, C, F, T]
        mix_mag = spec.abs() if batch.shape[1] == 1 else stft(batch.mean(1, keepdim=True), cfg).abs()
        queries = embeddings[None].expand(batch.shape[0], -1, -1)
        mask_logits, noise_logits = self.model(mix_mag, queries)  # [B, K, 256, T], [B, M, 256, T]
        logits = torch.cat([mask_logits, noise_logits[:, :num_noise]], dim=1)
        masks = unwarp_to_linear(torch.sigmoid(logits), cfg.n_freqs)  # [B, K + M, F, T]
        if self.binary:
            masks = (masks > 0.5).to(masks.dtype)
        return istft(masks[:, :, None] * spec[:, None], batch.shape[-1], cfg)


def _fit(wave: torch.Tensor, length: int) -> torch.Tensor:
    """Crop or zero-pad the last axis to ``length`` (resampling may round the length)."""
    if wave.shape[-1] >= length:
        return wave[..., :length].contiguous()
    return torch.nn.functional.pad(wave, (0, length - wave.shape[-1]))


def _load_encoder(spec: QueryEncoder | str | os.PathLike) -> QueryEncoder:
    return spec if isinstance(spec, QueryEncoder) else QueryEncoder.load(spec)
