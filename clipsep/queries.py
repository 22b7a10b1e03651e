"""The Separator's queries: text, images or embeddings made into the vectors CLIPSep reads.

::

    queries = QueryEmbedder(query_encoder, query_dim=512)
    vectors = queries.encode(["playing violin", Path("cello.jpg")])   # [2, 512]

Text through the diffusion prior (``prior``): CLIPSep learns from image embeddings only,
and CLIP's text embeddings lie apart from them (the modality gap), so a text query is an
input the network never saw. With a prior (CLIPSonic's text-to-image-embedding model,
:class:`clipcore.prior.DiffusionPrior`) each text query is first mapped to an image
embedding, as CLIPSonic's "pd" mode does; query ``k`` samples from its own noise stream,
seeded by ``prior_seed``, so its embedding does not depend on the other queries. Image
queries are unchanged.

Text carried across the modality gap (``gap``): with no training, each text query is
placed where image embeddings lie, by statistics of both modalities measured on training
data (:meth:`clipcore.modality_gap.ModalityGap.cross`: the means, and the spreads along
the image embeddings' principal axes).

Query scale: this project trains on unit-norm CLIP embeddings; the official release was
trained on raw CLIP outputs, so a model converted from it (a folder whose provenance says
``query_normalization: none``) is fed raw embeddings.
"""

from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING, Sequence, Union

import torch

from clipcore.checkpoint import CheckpointError
from clipcore.embeddings import checked_embeddings
from clipcore.errors import ClipAudioError
from clipcore.files import load_image
from clipcore.modality_gap import ModalityGap
from clipcore.prompts import prompt_templates
from clipcore.query import QueryEncoder

if TYPE_CHECKING:
    import PIL.Image

    from clipcore.prior import DiffusionPrior

__all__ = ["Query", "QueryEmbedder", "QueryError", "load_query_encoder"]

Query = Union[str, os.PathLike, "PIL.Image.Image", torch.Tensor]


class QueryError(ClipAudioError):
    """A query that cannot be used (empty text, unreadable image), in one sentence."""


class QueryEmbedder:
    """Text, image and embedding queries -> ``[K, D]`` query vectors at the scale a CLIPSep
    model reads.

    Args:
        query_encoder: a :class:`clipcore.query.QueryEncoder` whose ``embed_dim`` equals
            ``query_dim``.
        query_dim: the query width D the separation model expects.
        device: where the encoder (and the prior) run.
        templates: text prompt template(s) with ``{}``; default ``"a photo of {}"``.
        normalize_queries: unit-norm CLIP embeddings (this project's training) or raw ones
            (the official release; a template ensemble then averages raw embeddings, as the
            official evaluation does).
        prior: a :class:`clipcore.prior.DiffusionPrior` (or its folder) that maps text
            queries to image embeddings first; None: text embeddings as they are.
        prior_seed: seed of the prior's sampling (each text query gets its own stream).
        gap: a :class:`clipcore.modality_gap.ModalityGap` (or its file) of the query
            encoder: text queries are carried across it (see the module notes); not with
            ``prior``.

    Raises:
        CheckpointError: an encoder or prior of another width than ``query_dim``.
        QueryError: templates without ``{}``; a prior or gap where it cannot work.
    """

    def __init__(
        self,
        query_encoder: QueryEncoder,
        query_dim: int,
        device: str | torch.device = "cpu",
        templates: str | Sequence[str] | None = None,
        normalize_queries: bool = True,
        prior: DiffusionPrior | str | os.PathLike | None = None,
        prior_seed: int = 0,
        gap: ModalityGap | str | os.PathLike | None = None,
    ):
        if query_encoder.embed_dim != query_dim:
            raise CheckpointError(
                f"the query encoder {query_encoder.name} gives {query_encoder.embed_dim}-d embeddings "
                f"but the separation model expects {query_dim}-d queries."
            )
        self.device = torch.device(device)
        self.encoder = query_encoder.to(self.device).eval()
        self.query_dim = query_dim
        self.templates = prompt_templates(templates, error=QueryError)
        self.normalize_queries = normalize_queries
        self.gap: ModalityGap | None = None
        self.prior = None if prior is None else self._checked_prior(prior)
        self.prior_seed = prior_seed
        self.gap = None if gap is None else self._checked_gap(gap)

    def with_prior(self, prior: DiffusionPrior | str | os.PathLike, prior_seed: int = 0) -> "QueryEmbedder":
        """These queries with text through ``prior`` (or its folder); the encoder is shared."""
        other = copy.copy(self)
        other.prior, other.prior_seed = self._checked_prior(prior), prior_seed
        return other

    def with_gap(self, gap: ModalityGap | str | os.PathLike) -> "QueryEmbedder":
        """These queries with text carried across ``gap`` (or its file); the encoder is shared."""
        other = copy.copy(self)
        other.gap = self._checked_gap(gap)
        return other

    def _checked_gap(self, gap: ModalityGap | str | os.PathLike) -> ModalityGap:
        if self.prior is not None or not self.normalize_queries:
            raise QueryError("crossing the modality gap is for unit-norm text queries as they are: not with a diffusion "
                             "prior, nor with a model that reads raw CLIP embeddings (an official checkpoint).")
        return ModalityGap.of_width(gap, self.query_dim)

    def _checked_prior(self, prior: DiffusionPrior | str | os.PathLike) -> DiffusionPrior:
        from clipcore.prior import DiffusionPrior

        if self.gap is not None:
            raise QueryError("text queries go through a diffusion prior or across the modality gap, not both.")
        if not self.normalize_queries:
            raise QueryError("a diffusion prior gives unit-norm CLIP embeddings, but this model reads raw ones "
                             "(an official checkpoint); use the prior with a model trained on unit-norm queries.")
        if not isinstance(prior, DiffusionPrior):
            return DiffusionPrior.load(prior, embed_dim=self.query_dim, map_location=self.device).eval()
        if prior.embed_dim != self.query_dim:
            raise CheckpointError(f"the diffusion prior gives {prior.embed_dim}-d embeddings but the separation model "
                                  f"expects {self.query_dim}-d queries.")
        return prior.to(self.device).eval()

    def encode(self, queries: Sequence[Query] | torch.Tensor) -> torch.Tensor:
        """Embed queries: text (``str``), images (a ``Path`` or a PIL image), or embeddings.

        A ``str`` is always text; give image files as :class:`pathlib.Path`.

        Args:
            queries: K queries, or a ``[K, D]`` tensor of embeddings.

        Returns:
            ``[K, D]`` float32 on the device.

        Raises:
            QueryError: no queries or an empty text.
            ImageError: an unreadable image.
        """
        if isinstance(queries, torch.Tensor):
            return checked_embeddings(queries, self.query_dim, "query embeddings", QueryError).to(self.device)
        if queries is None or isinstance(queries, (str, os.PathLike)) or not len(queries):
            raise QueryError("give a list of one or more queries.")
        texts: list[str] = []
        images: list = []  # PIL images
        tensors: list[torch.Tensor] = []
        rows: list[tuple[str, int]] = []  # (kind, index among the queries of that kind)
        for query in queries:
            if isinstance(query, str):
                if not query.strip():
                    raise QueryError("a text query is empty.")
                rows.append(("text", len(texts)))
                texts.append(query.strip())
            elif isinstance(query, torch.Tensor):
                rows.append(("tensor", len(tensors)))
                tensors.append(query)
            else:
                rows.append(("image", len(images)))
                images.append(load_image(query) if isinstance(query, os.PathLike) else query)
        embedded: dict[str, torch.Tensor] = {}
        if texts:
            embedded["text"] = self.embed_text(texts)
        if images:
            embedded["image"] = self.embed_images(images)
        if tensors:
            embedded["tensor"] = torch.cat([self.encode(tensor.reshape(1, -1)) for tensor in tensors])
        return torch.stack([embedded[kind][index] for kind, index in rows]).to(self.device, torch.float32)

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str], templates: str | Sequence[str] | None = None) -> torch.Tensor:
        """Text queries at the scale the model reads (see ``normalize_queries``), through
        the diffusion prior or carried across the modality gap when there is one.

        Args:
            texts: K query texts (a string alone is one).
            templates: template(s) with ``{}`` (default: these queries'); several are
                averaged (unit-norm: renormalized mean; raw: mean of raw outputs).

        Returns:
            ``[K, D]`` float32 on the device.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or not all(isinstance(text, str) and text.strip() for text in texts):
            raise QueryError("text queries must be one or more non-empty strings.")
        templates = self.templates if templates is None else prompt_templates(templates, error=QueryError)
        if not self.normalize_queries:
            return self.encoder.encode_text_raw(list(texts), templates)
        embeddings = self.encoder.encode_text(list(texts), templates=templates)
        if self.gap is not None:
            return self.gap.cross(embeddings)
        if self.prior is None:
            return embeddings
        return self.prior.sample(embeddings.to(self.device), seed=self.prior_seed)

    @torch.no_grad()
    def embed_images(self, images) -> torch.Tensor:
        """Image queries at the scale the model reads (see ``normalize_queries``).

        Args:
            images: a list of K PIL images, uint8 ``[K, 3, H, W]``, or uint8
                ``[K, F, 3, H, W]`` (F frames per query, averaged as in training).

        Returns:
            ``[K, D]`` float32 on the device.
        """
        if self.normalize_queries:
            return self.encoder.encode_image(images)
        if isinstance(images, torch.Tensor) and images.dim() == 5:
            count, frames = images.shape[:2]
            return self.embed_images(images.flatten(0, 1)).view(count, frames, -1).mean(1)
        return self.encoder.model.encode_image(self.encoder.preprocess(images)).float()


def load_query_encoder(spec: QueryEncoder | str | os.PathLike) -> QueryEncoder:
    """``spec`` itself if it is an encoder, else :meth:`QueryEncoder.load` of it (a folder,
    or an open_clip spec such as ``ViT-B-32/openai``)."""
    return spec if isinstance(spec, QueryEncoder) else QueryEncoder.load(spec)
