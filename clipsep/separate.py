"""Separator: the CLIPSep inference API (text or image queries, audio of any length).

::

    separator = Separator.from_pretrained("checkpoints/clipsep")
    result = separator.separate(wave, rate, ["playing violin", Path("cello.jpg")])
    result.stems        # [K, C, S]: one waveform per query, at the input's rate and length

Per segment: STFT of the mixture (``model.stft``), magnitude, ``mask_logits`` for all K
queries in one U-Net pass, sigmoid (raised to ``mask_power``, 1 by default), log-to-linear
unwarp (``clipcore.spectral``), a soft mask (or binary, ``> 0.5``) times the mixture's
complex STFT (= mixture magnitude with the mixture phase), iSTFT. The input is resampled to
the model's rate and back (soxr, high quality, stateful, so that block-wise input resamples
exactly as the whole).

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

Queries (text, images, embeddings; text through a diffusion prior or across the modality
gap; the query scale of official checkpoints) are made into query vectors by
:class:`clipsep.queries.QueryEmbedder`, whose notes say how.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import torch

from clipcore.audio import MAX_CHANNELS, AudioError, check_sample_rate
from clipcore.checkpoint import QUERY_ENCODER_DIR, CheckpointError, load_pretrained
from clipcore.errors import ClipAudioError, is_whole_number
from clipcore.files import check_output_folder
from clipcore.memory import memory_exceeded
from clipcore.modality_gap import ModalityGap
from clipcore.query import QueryEncoder
from clipcore.spectral import stft
from clipsep.masks import check_mask_power, masked_stems
from clipsep.model import CLIPSep
from clipsep.queries import Query, QueryEmbedder, QueryError, load_query_encoder
from clipsep.stem_files import BLOCK_SECONDS, output_files, query_keys, separate_to_files, stem_names
from clipsep.streaming import MAX_SEGMENT_SECONDS, OverlapAdd, crossfade_window, segment_starts, stream_separation

if TYPE_CHECKING:
    from clipcore.prior import DiffusionPrior

__all__ = [
    "Separator",
    "Separation",
    "QueryError",
    "crossfade_window",
    "masked_stems",
    "segment_starts",
]

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
        mask_power: the soft masks raised to this power (above 0; 1: the network's
            probabilities as they are; above 1: sharper). Not with ``binary``.
        templates, normalize_queries, prior, prior_seed, gap: how queries become query
            vectors (:class:`clipsep.queries.QueryEmbedder`); ``normalize_queries`` defaults
            to raw embeddings when the model's provenance says ``query_normalization: none``
            (set by ``clipsep convert``), else unit-norm ones.

    Attributes:
        queries: the :class:`~clipsep.queries.QueryEmbedder` that embeds the queries.
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
        prior: DiffusionPrior | str | os.PathLike | None = None,
        prior_seed: int = 0,
        gap: ModalityGap | str | os.PathLike | None = None,
        mask_power: float = 1.0,
    ):
        if not 0.0 <= overlap <= 0.5:
            raise ClipAudioError(f"overlap must be between 0 and 0.5 of a segment, got {overlap}.")
        if not is_whole_number(batch_size) or batch_size < 1:
            raise ClipAudioError(f"batch_size must be a whole number, at least 1, got {batch_size!r}.")
        if segment is not None and not 0 < segment <= MAX_SEGMENT_SECONDS:
            raise ClipAudioError(f"segment must be above 0 and at most {MAX_SEGMENT_SECONDS:g} seconds, got {segment}.")
        check_mask_power(mask_power, binary)
        if normalize_queries is None:
            normalize_queries = (model.provenance or {}).get("query_normalization") != "none"
        self.queries = QueryEmbedder(query_encoder, model.query_dim, device, templates, normalize_queries, prior,
                                     prior_seed, gap)
        self.device = self.queries.device
        self.model = model.to(self.device).eval()
        self.sample_rate = model.sample_rate
        hop, block = model.stft.hop_length, model.frames_multiple
        samples = model.segment_samples if segment is None else round(segment * self.sample_rate)
        # frames = samples // hop + 1 must be a multiple of the U-Net's block of frames.
        frames = max(block, round((samples // hop + 1) / block) * block)
        self.segment_samples = frames * hop - 1
        self.overlap_samples = int(overlap * self.segment_samples)
        self.batch_size = batch_size
        self.binary = binary
        self.mask_power = float(mask_power)

    def with_prior(self, prior: DiffusionPrior | str | os.PathLike, prior_seed: int = 0) -> "Separator":
        """This separator with its text queries through ``prior`` (or its folder); the
        model, query encoder and settings are shared, not copied."""
        other = copy.copy(self)
        other.queries = self.queries.with_prior(prior, prior_seed)
        return other

    def with_gap(self, gap: ModalityGap | str | os.PathLike) -> "Separator":
        """This separator with its text queries carried across ``gap`` (or its file); the
        model, query encoder and settings are shared, not copied."""
        other = copy.copy(self)
        other.queries = self.queries.with_gap(gap)
        return other

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
        recorded = (model.provenance or {}).get("query_encoder")
        if query_encoder is None:
            if (directory / QUERY_ENCODER_DIR).is_dir():
                query_encoder = directory / QUERY_ENCODER_DIR
            elif recorded:
                query_encoder = recorded
            else:
                raise CheckpointError(
                    f"{directory}: has no {QUERY_ENCODER_DIR}/ folder and names no query encoder; "
                    "pass one (a folder, or an open_clip spec such as ViT-B-32=/path/to/weights.bin)."
                )
        return cls(model, load_query_encoder(query_encoder), device=device, **settings)

    @classmethod
    def from_official(
        cls,
        path: str | os.PathLike,
        query_encoder: QueryEncoder | str | os.PathLike | None,
        device: str | torch.device = "cpu",
        **settings,
    ) -> "Separator":
        """A separator from the checkpoint file released with the paper (``best_model.pt``),
        read without unpickling objects; the official model uses ``ViT-B-32/openai``, which
        the file does not name: None is refused once the file is known to be one."""
        from clipsep.convert import load_official_model

        model = load_official_model(path)  # its provenance says query_normalization: none
        if query_encoder is None:
            raise CheckpointError(
                f"{path}: an official checkpoint file needs a query encoder "
                "(for the released model: ViT-B-32/openai, or ViT-B-32=/path/to/weights.bin offline)."
            )
        return cls(model, load_query_encoder(query_encoder), device=device, **settings)

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
    @property
    def query_encoder(self) -> QueryEncoder:
        """The CLIP encoder of the queries."""
        return self.queries.encoder

    def encode_queries(self, queries: Sequence[Query] | torch.Tensor) -> torch.Tensor:
        """``[K, D]`` query vectors of K queries: see :meth:`clipsep.queries.QueryEmbedder.encode`."""
        return self.queries.encode(queries)

    def embed_text(self, texts: Sequence[str], templates: str | Sequence[str] | None = None) -> torch.Tensor:
        """``[K, D]`` query vectors of K texts: see :meth:`clipsep.queries.QueryEmbedder.embed_text`."""
        return self.queries.embed_text(texts, templates)

    def embed_images(self, images) -> torch.Tensor:
        """``[K, D]`` query vectors of K images: see :meth:`clipsep.queries.QueryEmbedder.embed_images`."""
        return self.queries.embed_images(images)

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
            ClipAudioError: ``noise=True`` with a model that has no noise heads; stems that
                would take more than half of the memory (use :meth:`separate_file`).
        """
        num_noise = self._noise_heads(noise)
        wave = torch.as_tensor(wave)  # a tensor as it is; a NumPy array, say, as one
        if wave.dim() == 1:
            wave = wave[None]
        if wave.dim() != 2 or not 1 <= wave.shape[0] <= MAX_CHANNELS or wave.shape[-1] == 0 or wave.is_complex():
            raise AudioError(f"the mixture must be a real [channels, samples] waveform of 1 to {MAX_CHANNELS} channels "
                             f"and at least one sample, got {list(wave.shape)} ({wave.dtype}).")
        if not torch.isfinite(wave).all():
            raise AudioError("the mixture contains non-finite samples (NaN or infinity).")
        mixture = wave.detach().to("cpu", torch.float32)
        if mono:
            mixture = mixture.mean(0, keepdim=True)
        embeddings = self.encode_queries(queries)
        num_queries = len(embeddings)
        _check_output_memory(num_queries + num_noise + int(residual), mixture.shape, sample_rate)
        outputs = torch.empty(num_queries + num_noise, *mixture.shape)
        done = 0
        for mix, separated in self.stream([mixture], sample_rate, embeddings, noise=noise):
            outputs[..., done:done + mix.shape[-1]] = separated
            done += mix.shape[-1]
            if progress is not None:
                progress(mix.shape[-1] / sample_rate)
        stems = outputs[:num_queries]
        return Separation(
            stems=stems,
            residual=mixture - stems.sum(0) if residual else None,
            noise=outputs[num_queries:] if noise else None,
            sample_rate=sample_rate,
        )

    @torch.inference_mode()
    def stream(
        self,
        blocks: Iterable[torch.Tensor],
        sample_rate: int,
        queries: Sequence[Query] | torch.Tensor,
        noise: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Separate a mixture given block by block, in memory that does not grow with its
        length (see :mod:`clipsep.streaming`); the output equals :meth:`separate`'s.

        Args:
            blocks: ``[C, n]`` float32 blocks at ``sample_rate``, C the same in all.
            sample_rate: their rate.
            queries: K queries (see :meth:`encode_queries`) or ``[K, D]`` embeddings.
            noise: also separate with the noise heads (M outputs after the K stems).

        Yields:
            ``(mixture, separated)``: ``[C, m]`` input samples and ``[K + M, C, m]``
            their stems, in order; together exactly the input.

        Raises:
            AudioError: an empty, misshapen or non-finite block, or one so loud that its
                stems overflow. QueryError: bad queries.
            ClipAudioError: ``noise=True`` with a model that has no noise heads.
        """
        check_sample_rate(sample_rate)
        num_noise = self._noise_heads(noise)
        embeddings = self.encode_queries(queries)

        def segments(batch: torch.Tensor) -> torch.Tensor:
            return self._separate_segments(batch.to(self.device), embeddings, num_noise)

        def engine(channels: int) -> OverlapAdd:
            return OverlapAdd(segments, len(embeddings) + num_noise, channels, self.segment_samples,
                              self.overlap_samples, self.batch_size)

        for mix, separated in stream_separation(_checked(blocks), sample_rate, self.sample_rate,
                                                len(embeddings) + num_noise, engine):
            if not torch.isfinite(separated).all():  # a finite mixture far beyond full scale overflows the STFT
                raise AudioError(f"the mixture's level is beyond what can be separated "
                                 f"(peak {mix.abs().max().item():.3g}).")
            yield mix, separated

    def separate_file(
        self,
        path: str | os.PathLike,
        queries: Sequence[Query],
        out_dir: str | os.PathLike,
        residual: bool = False,
        noise: bool = False,
        mono: bool = False,
        format: str = "wav",
        bit_depth: str = "16",
        clip: str = "rescale",
        block_seconds: float = BLOCK_SECONDS,
        progress: Callable[[float], None] | None = None,
    ) -> dict[str, Path]:
        """Separate an audio file of any length into stem files, streaming: the input is
        read, separated and written block by block, and each stem appears (renamed from a
        hidden temporary file) only when complete (see :mod:`clipsep.stem_files`).

        Args:
            path: the input audio file.
            queries: K queries (see :meth:`encode_queries`); the stems are named as
                ``clipsep separate`` names them (``playing-violin``, ``image-cello``,
                ``query-<n>`` for images and embeddings given as objects).
            out_dir: the folder of the stems (created).
            residual: also write ``residual``: the mixture minus all stems.
            noise: also write the noise heads' stems (``noise-1``, ...).
            mono: separate the channel average.
            format: ``"wav"`` or ``"flac"``.
            bit_depth: ``"16"``, ``"24"`` or ``"32f"``.
            clip: a mode of :data:`clipcore.audio.CLIP_MODES`.
            block_seconds: seconds of input read at a time.
            progress: called with the seconds of input done.

        Returns:
            Stem name -> file written.

        Raises:
            AudioError: a bad input file or output option. QueryError: bad queries.
        """
        check_output_folder(out_dir, None)
        embeddings = self.encode_queries(queries)  # bad queries (a bare string, say) are one sentence
        keys = query_keys(queries)
        repeated = [value for index, (kind, value) in enumerate(keys) if (kind, value) in keys[:index]]
        if repeated:
            raise QueryError(f"the query {repeated[0]!r} is given twice; each query names one stem file.")
        if not 0 < block_seconds < math.inf:
            raise ClipAudioError(f"block_seconds must be a positive number of seconds, got {block_seconds}.")
        heads = self.model.num_noise_heads if noise else 0
        names = stem_names(keys, heads)
        outputs = output_files(Path(out_dir), names, format, residual, heads)
        separate_to_files(self, Path(path), outputs, embeddings, residual=residual, noise=noise, mono=mono,
                          format=format, bit_depth=bit_depth, clip=clip, block_seconds=block_seconds,
                          progress=progress)
        return outputs

    def _noise_heads(self, noise: bool) -> int:
        """The noise stems to return (M): the model's noise heads with ``noise``, else 0."""
        if noise and self.model.num_noise_heads == 0:
            raise ClipAudioError("noise=True: the separation model has no noise heads (it was trained without "
                                 "noise-invariant training), so it has no noise stems to return.")
        return self.model.num_noise_heads if noise else 0

    def _separate_segments(self, batch: torch.Tensor, embeddings: torch.Tensor, num_noise: int) -> torch.Tensor:
        """``[B, C, L]`` segments -> ``[B, K + M, C, L]`` separated segments."""
        cfg = self.model.stft
        spec = stft(batch, cfg)  # [B, C, F, T]
        mix_mag = spec.abs() if batch.shape[1] == 1 else stft(batch.mean(1, keepdim=True), cfg).abs()
        queries = embeddings[None].expand(batch.shape[0], -1, -1)
        mask_logits, noise_logits = self.model(mix_mag, queries)  # [B, K, 256, T], [B, M, 256, T]
        logits = torch.cat([mask_logits, noise_logits[:, :num_noise]], dim=1)
        return masked_stems(logits, spec, batch.shape[-1], cfg, self.binary, self.mask_power)


def _check_output_memory(stems: int, shape: torch.Size, sample_rate: int) -> None:
    """Refuse to hold ``stems`` stems of a ``[C, S]`` mixture (float32, in host memory) that
    would take more than half of it: such inputs stream through ``separate_file`` instead."""
    need = stems * shape.numel() * 4
    memory = memory_exceeded(need, "cpu")
    if memory is not None:
        raise ClipAudioError(f"{stems} stems of {shape[-1] / sample_rate:.0f} s of {shape[0]}-channel audio would take "
                             f"{need / 1e9:.1f} GB, more than half of the {memory / 1e9:.0f} GB here; separate "
                             "long inputs with separate_file (or stream), which write stems as they go.")


def _checked(blocks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """The blocks as float32 on the CPU, each checked: ``[C, n]`` with ``n > 0``, C the
    same in all, finite."""
    channels = None
    for block in blocks:
        if block.dim() != 2 or block.shape[-1] == 0 or block.shape[0] != (channels or block.shape[0]):
            raise AudioError(f"each block of the mixture must be a non-empty [channels, samples] waveform "
                             f"with the same channels, got {list(block.shape)}.")
        if not torch.isfinite(block).all():
            raise AudioError("the mixture contains non-finite samples (NaN or infinity).")
        channels = block.shape[0]
        yield block.detach().to("cpu", torch.float32)
