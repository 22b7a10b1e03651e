"""A CLIP's modality gap, measured, and text embeddings carried across it.

CLIP's image and text embeddings lie in two separate cones (Liang et al., "Mind the Gap",
NeurIPS 2022), so a model trained on image embeddings alone (CLIPSep) reads a text query
far from anything it saw. That paper moves a text embedding by the difference of the two
modalities' mean embeddings. A mean shift leaves two differences: text varies in
directions where the images hardly do (a network trained on images answers there
anyhow), and along the directions the images use, the two modalities spread differently.
So :meth:`ModalityGap.cross` matches both moments along the image embeddings' principal
axes: a text embedding's coordinates about the text mean, along the axes that hold
:data:`VARIANCE_KEPT` of the images' variance, are rescaled to the images' spread and
placed about the image mean; its other directions are dropped. No training (unlike the
diffusion prior of :mod:`clipcore.prior`), and no pairing: the statistics are measured
once, on a training set's frames and on prompts of its labels::

    gap = ModalityGap.measure(encoder.encode_image(frames), encoder.encode_text(labels))
    gap.save("modality_gap.json")
    queries = ModalityGap.load("modality_gap.json").cross(encoder.encode_text(["cello"]))
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from clipcore.errors import ClipAudioError
from clipcore.files import atomic_write

__all__ = ["ModalityGap", "ModalityGapError", "VARIANCE_KEPT", "text_modes"]

FORMAT = "clipaudio.modality_gap"
VERSION = 2
VARIANCE_KEPT = 0.99
"""The share of the image embeddings' variance that the kept principal axes hold."""
_SPREAD_FLOOR = 0.01
"""Along an axis where the text hardly varies, its spread counts as this share of its largest
spread, so that no axis multiplies a query's coordinate there without bound."""


def text_modes(gap: bool, prior: bool) -> list[str]:
    """The ways a text query may reach a model trained on image embeddings, the default
    first: ``"gap"`` (across a measured :class:`ModalityGap`) when there is one, ``"pd"``
    (through a diffusion prior) when there is one, and ``"zs"`` (as CLIP gives it) always.
    Both systems' inference APIs offer them in this order."""
    return [mode for mode, offered in (("gap", gap), ("pd", prior), ("zs", True)) if offered]


class ModalityGapError(ClipAudioError):
    """A modality-gap file that cannot be used."""


@dataclass(frozen=True)
class ModalityGap:
    """Where one CLIP's unit-norm image and text embeddings lie.

    Attributes:
        image_mean: ``[D]`` mean image embedding.
        text_mean: ``[D]`` mean text embedding.
        axes: ``[A, D]`` orthonormal principal axes of the centred image embeddings.
        image_spread: ``[A]`` standard deviation of the image embeddings along each axis.
        text_spread: ``[A]`` standard deviation of the text embeddings along each axis.
    """

    image_mean: torch.Tensor
    text_mean: torch.Tensor
    axes: torch.Tensor
    image_spread: torch.Tensor
    text_spread: torch.Tensor

    @classmethod
    def measure(cls, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> "ModalityGap":
        """The gap between ``image_embeddings [N, D]`` and ``text_embeddings [M, D]``
        (each normalized first; at least two of each, finite and not zero, and neither the
        images nor the texts all alike).

        Raises:
            ValueError: one sentence saying which of these does not hold.
        """
        image, text = (e.detach().float().cpu() for e in (image_embeddings, text_embeddings))
        if image.shape[-1] != text.shape[-1] or min(len(image), len(text)) < 2:
            raise ValueError(f"need at least two image and two text embeddings of one width, got "
                             f"{tuple(image_embeddings.shape)} and {tuple(text_embeddings.shape)}.")
        for name, embeddings in (("image", image), ("text", text)):
            if not bool(torch.isfinite(embeddings).all() and (embeddings.norm(dim=-1) > 0).all()):
                raise ValueError(f"some {name} embeddings are zero or not finite; the encoder gives no direction there.")
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        image_mean, text_mean = image.mean(0), text.mean(0)
        _, singular, directions = torch.linalg.svd(image - image_mean, full_matrices=False)
        if not bool(singular[0] > 1e-6):
            raise ValueError("the image embeddings are all alike; measure the gap on frames of several videos.")
        variance = singular**2
        kept = int((variance.cumsum(0) < VARIANCE_KEPT * variance.sum()).sum()) + 1
        axes = directions[:kept]
        text_spread = ((text - text_mean) @ axes.T).std(0, correction=0)
        if not bool((text_spread > 0).any()):
            raise ValueError("the text embeddings are all alike; measure the gap on several prompts.")
        return cls(image_mean, text_mean, axes, singular[:kept] / math.sqrt(len(image)), text_spread)

    @property
    def embed_dim(self) -> int:
        return self.image_mean.shape[-1]

    def cross(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """``[Q, D]`` text embeddings carried across the gap (see the module doc): unit-norm, float32."""
        device = text_embeddings.device
        axes = self.axes.to(device)
        text_spread = self.text_spread.clamp_min(_SPREAD_FLOOR * float(self.text_spread.max()))
        scale = (self.image_spread / text_spread).to(device)
        coordinates = (text_embeddings.float() - self.text_mean.to(device)) @ axes.T * scale  # [Q, A]
        return F.normalize(self.image_mean.to(device) + coordinates @ axes, dim=-1)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the statistics as JSON (atomically); returns the path."""
        record = {"format": FORMAT, "version": VERSION,
                  **{name: getattr(self, name).tolist() for name in _FIELDS}}
        return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(record) + "\n"))

    @classmethod
    def of_width(cls, gap: "ModalityGap | str | os.PathLike", embed_dim: int) -> "ModalityGap":
        """``gap``, or the file it names loaded, checked to be ``embed_dim``-d.

        Raises:
            ModalityGapError: an unreadable file, or a gap of another width (naming its file).
        """
        found = gap if isinstance(gap, ModalityGap) else cls.load(gap)
        if found.embed_dim != embed_dim:
            where = "" if isinstance(gap, ModalityGap) else f"{gap}: "
            raise ModalityGapError(f"{where}the modality gap is {found.embed_dim}-d, but the model reads "
                                   f"{embed_dim}-d queries.")
        return found

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ModalityGap":
        """The gap saved by :meth:`save`.

        Raises:
            ModalityGapError: a missing, unreadable or malformed file, or one of an earlier
                version (the two means alone).
        """
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else "not a JSON file"
            raise ModalityGapError(f"{path}: cannot read the modality gap ({reason}).") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ModalityGapError(f"{path}: not a modality gap file (a {FORMAT} JSON).")
        if record.get("version") != VERSION:
            raise ModalityGapError(f"{path}: a modality gap file of an earlier version, which holds the means "
                                   "alone; measure it again with recipes/measure_gap.py.")
        try:
            fields = {name: torch.tensor(record[name], dtype=torch.float32) for name in _FIELDS}
        except (KeyError, TypeError, ValueError):
            fields = {}
        if not _consistent(fields):
            raise ModalityGapError(f"{path}: a modality gap file whose statistics are missing, not finite or "
                                   "not of matching sizes.")
        return cls(**fields)


_FIELDS = tuple(field.name for field in dataclasses.fields(ModalityGap))  # what a file holds, in order


def _consistent(fields: dict[str, torch.Tensor]) -> bool:
    """Whether loaded statistics have the shapes of :class:`ModalityGap` and are finite
    (the image spreads positive; the text spreads not negative, and not all zero)."""
    if set(fields) != set(_FIELDS) or not all(bool(torch.isfinite(v).all()) for v in fields.values()):
        return False
    dim = fields["image_mean"].shape
    count = fields["axes"].shape[:1]
    return (len(dim) == 1 and dim[0] > 0 and fields["text_mean"].shape == dim
            and fields["axes"].dim() == 2 and fields["axes"].shape[1:] == dim and count[0] > 0
            and fields["image_spread"].shape == count == fields["text_spread"].shape
            and bool((fields["image_spread"] > 0).all()) and bool((fields["text_spread"] >= 0).all())
            and float(fields["text_spread"].max()) > 0)
