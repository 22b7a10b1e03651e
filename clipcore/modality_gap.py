"""A CLIP's modality gap, measured, and text embeddings shifted across it.

CLIP's image and text embeddings lie in two separate cones (Liang et al., "Mind the Gap",
NeurIPS 2022), so a model trained on image embeddings alone (CLIPSep) reads a text query
far from anything it saw. Moving a text embedding by the difference of the two modalities'
mean embeddings, then renormalizing, puts it among the image embeddings and keeps what
tells prompts apart: that paper's shift, with no training (unlike the diffusion prior of
:mod:`clipcore.prior`). The means are measured once, on a training set's frames and on
prompts of its labels::

    gap = ModalityGap.measure(encoder.encode_image(frames), encoder.encode_text(labels))
    gap.save("modality_gap.json")
    queries = ModalityGap.load("modality_gap.json").shift(encoder.encode_text(["cello"]))
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from clipcore.errors import ClipAudioError
from clipcore.files import atomic_write

__all__ = ["ModalityGap", "ModalityGapError"]

FORMAT = "clipaudio.modality_gap"


class ModalityGapError(ClipAudioError):
    """A modality-gap file that cannot be used."""


@dataclass(frozen=True)
class ModalityGap:
    """The mean unit-norm image and text embeddings of one CLIP.

    Attributes:
        image_mean: ``[D]`` mean of unit-norm image embeddings.
        text_mean: ``[D]`` mean of unit-norm text embeddings.
    """

    image_mean: torch.Tensor
    text_mean: torch.Tensor

    @classmethod
    def measure(cls, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> "ModalityGap":
        """The gap between ``image_embeddings [N, D]`` and ``text_embeddings [M, D]``
        (each normalized first)."""
        if image_embeddings.shape[-1] != text_embeddings.shape[-1] or min(len(image_embeddings), len(text_embeddings)) < 1:
            raise ValueError(f"need image and text embeddings of one width, got {tuple(image_embeddings.shape)} "
                             f"and {tuple(text_embeddings.shape)}.")
        image, text = (F.normalize(e.detach().float().cpu(), dim=-1).mean(0) for e in (image_embeddings, text_embeddings))
        return cls(image, text)

    @property
    def embed_dim(self) -> int:
        return self.image_mean.shape[-1]

    def shift(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """``[K, D]`` text embeddings moved by ``image_mean - text_mean``, unit-norm, float32."""
        offset = (self.image_mean - self.text_mean).to(text_embeddings.device)
        return F.normalize(text_embeddings.float() + offset, dim=-1)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the means as JSON (atomically); returns the path."""
        record = {"format": FORMAT, "version": 1, "image_mean": self.image_mean.tolist(),
                  "text_mean": self.text_mean.tolist()}
        return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(record) + "\n"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ModalityGap":
        """The gap saved by :meth:`save`.

        Raises:
            ModalityGapError: a missing, unreadable or malformed file.
        """
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else "not a JSON file"
            raise ModalityGapError(f"{path}: cannot read the modality gap ({reason}).") from None
        means = [record.get(key) if isinstance(record, dict) else None for key in ("image_mean", "text_mean")]
        if (not isinstance(record, dict) or record.get("format") != FORMAT
                or not all(isinstance(m, list) and m and all(isinstance(x, (int, float)) and math.isfinite(x)
                                                             for x in m) for m in means)
                or len(means[0]) != len(means[1])):
            raise ModalityGapError(f"{path}: not a modality gap file (a {FORMAT} JSON with two finite means of "
                                   "one width).")
        return cls(*(torch.tensor(m, dtype=torch.float32) for m in means))
