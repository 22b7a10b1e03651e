"""Query encoders: CLIP image and text towers (open_clip) turned into frozen embedders.

A :class:`QueryEncoder` maps video frames (training) and text prompts (inference) into one
L2-normalized embedding space::

    encoder = QueryEncoder.load("ViT-B-32/openai")        # open_clip download (needs internet)
    encoder = QueryEncoder.load("ViT-B-32/openai=/models/open_clip_pytorch_model.bin")  # same, local file
    encoder = QueryEncoder.load("runs/clip")              # project checkpoint folder
    encoder = QueryEncoder.tiny(seed=0)                   # small random CLIP for tests
    image_emb = encoder.encode_image(frames_uint8)        # [B, D]
    text_emb = encoder.encode_text(["violin"], templates=CLIPSEP_EVAL_TEMPLATES)  # from clipcore.prompts

The wrapped open_clip model is ``encoder.model``; it is frozen (no gradients) unless its
parameters are explicitly unfrozen for training (see :meth:`QueryEncoder.preprocess` and
:meth:`QueryEncoder.tokenize` for its inputs).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.factory import get_model_config, load_checkpoint
from open_clip.pretrained import download_pretrained, get_pretrained_cfg, list_pretrained_tags_by_model
from open_clip.tokenizer import HFTokenizer
from torch import nn

from clipcore.checkpoint import CONFIG_NAME, CheckpointError, Pretrained
from clipcore.embeddings import mean_embedding
from clipcore.files import ImageError
from clipcore.naming import slugify
from clipcore.prompts import prompt_templates

__all__ = [
    "QueryEncoder",
    "QueryEncoderError",
    "tiny_clip_config",
]

class QueryEncoderError(CheckpointError):
    """A query encoder that cannot be built or loaded, described in one sentence."""


def tiny_clip_config(embed_dim: int = 32) -> dict[str, Any]:
    """An open_clip model config for a small CLIP: 32-px images, 2-layer towers of width 32.

    It uses the standard CLIP vocabulary (49408 tokens), so open_clip's tokenizer applies.
    """
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "head_width": 16, "layers": 2},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }


def _build_clip(model_config: dict[str, Any]) -> open_clip.CLIP | open_clip.CustomTextCLIP | open_clip.CoCa:
    """Instantiate the open_clip model class a config describes, with random weights."""
    config = json.loads(json.dumps(model_config))  # deep copy
    config.pop("preprocess_cfg", None)
    custom_text = config.pop("custom_text", False) or "hf_model_name" in config.get("text_cfg", {})
    if "timm_model_name" in config.get("vision_cfg", {}):
        config["vision_cfg"]["timm_model_pretrained"] = False
    if "hf_model_name" in config.get("text_cfg", {}):
        config["text_cfg"]["hf_model_pretrained"] = False
    if "multimodal_cfg" in config:
        return open_clip.CoCa(**config)
    return (open_clip.CustomTextCLIP if custom_text else open_clip.CLIP)(**config)


class QueryEncoder(Pretrained, nn.Module):
    """A frozen open_clip model with CLIP's preprocessing and prompt templates.

    Args:
        model_config: open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``,
            optional ``quick_gelu``, ``custom_text``); None gives :func:`tiny_clip_config`.
        name: slug naming the encoder and its weights, e.g. ``clip-vit-b-32-openai``;
            shards store its image embeddings as ``<name>.npy``.
        architecture: open_clip built-in model name (selects the tokenizer), or None for
            the config's ``hf_tokenizer_name`` or else open_clip's standard CLIP tokenizer.
        preprocess: ``size`` (int or [H, W]), ``mean``, ``std``, ``interpolation``
            (``bicubic``/``bilinear``), ``resize_mode`` (``shortest``: resize the short side
            and centre-crop; ``squash``); missing keys take CLIP's values.

    The random initialisation (which loaded weights replace) draws from a copy of the
    global random state and leaves the state as it was, so loading an encoder never moves
    a training run's random stream; :meth:`tiny` takes a ``seed``.
    """

    RETIRED_ARGUMENTS = frozenset({"seed"})
    PRESETS = {"tiny": {"name": "clip-tiny"}}  # a real CLIP comes by name through load()
    pixel_mean: torch.Tensor  # buffers [1, 3, 1, 1]
    pixel_std: torch.Tensor

    def __init__(
        self,
        model_config: dict | None = None,
        name: str = "clip-tiny",
        architecture: str | None = None,
        preprocess: dict | None = None,
    ) -> None:
        super().__init__()
        model_config = model_config if model_config is not None else tiny_clip_config()
        with torch.random.fork_rng(devices=[]):
            self.model = _build_clip(model_config)
        self.model.requires_grad_(False).eval()
        self.name = name
        self.embed_dim = int(model_config["embed_dim"])
        image_size = model_config["vision_cfg"].get("image_size", 224)
        settings = {"size": image_size, "mean": OPENAI_DATASET_MEAN, "std": OPENAI_DATASET_STD,
                    "interpolation": "bicubic", "resize_mode": "shortest", **(preprocess or {})}
        size = settings["size"]
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        if settings["resize_mode"] not in ("shortest", "squash"):
            raise QueryEncoderError(f"resize_mode {settings['resize_mode']!r} is not supported; use 'shortest' or 'squash'.")
        if settings["interpolation"] not in ("bicubic", "bilinear"):
            raise QueryEncoderError(f"interpolation {settings['interpolation']!r} is not supported; use 'bicubic' or 'bilinear'.")
        self.resize_mode = settings["resize_mode"]
        self.interpolation = settings["interpolation"]
        self.register_buffer("pixel_mean", torch.tensor(settings["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(settings["std"]).view(1, 3, 1, 1), persistent=False)
        text_cfg = model_config["text_cfg"]
        context_length = text_cfg.get("context_length", 77)
        if architecture is not None:
            self.tokenizer = open_clip.get_tokenizer(architecture, context_length=context_length)
        elif text_cfg.get("hf_tokenizer_name"):
            self.tokenizer = HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context_length)
        else:
            self.tokenizer = open_clip.SimpleTokenizer(context_length=context_length)
        self._text_cache: dict[tuple[str, str], torch.Tensor] = {}
        self._cache_version: tuple = ()

    # ------------------------------------------------------------------ construction
    @classmethod
    def tiny(cls, seed: int = 0, embed_dim: int = 32) -> "QueryEncoder":
        """A small randomly initialised CLIP (32-px images), for tests and the toy world."""
        return cls.from_preset("tiny", seed, model_config=tiny_clip_config(embed_dim),
                               name=f"clip-tiny-d{embed_dim}-s{seed}")

    @classmethod
    def load(
        cls,
        spec: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        model: str | None = None,
        name: str | None = None,
        cache_dir: str | None = None,
    ) -> "QueryEncoder":
        """Build an encoder from a checkpoint folder, an open_clip name, or a weights file.

        Args:
            spec: one of
                - a project checkpoint folder (with ``config.json``);
                - ``ARCH/TAG``, an open_clip model and pretrained tag such as
                  ``ViT-B-32/openai``: downloaded and cached by open_clip;
                - ``ARCH/TAG=FILE``: the weights of that open_clip tag from a local file
                  (``.safetensors``, ``.bin``, ``.pt``; loaded without unpickling), with
                  the tag's settings (QuickGELU, preprocessing) and name, no download;
                - ``ARCH=FILE``: a local open_clip weights file for model ``ARCH``, an
                  open_clip built-in name or the path of an open_clip model config JSON;
                - a weights file, with ``model`` naming its architecture.
            device: where the model runs.
            dtype: weight dtype (e.g. ``torch.float16`` on a GPU); embeddings are float32.
            model: architecture of a weights file given alone as ``spec``.
            name: override the embedding name (the ``<name>.npy`` member of shards).
            cache_dir: open_clip download cache.

        Raises:
            QueryEncoderError: unknown names or tags, missing files, failed downloads
                (the message says how to pass a local weights file instead).
        """
        cls.check_spec(spec, model)
        text = os.fspath(spec)
        if Path(text).is_dir():
            encoder = cls.from_pretrained(text)
        elif model is not None or "=" in text:
            arch, _, weights = (model, "", text) if model is not None else text.partition("=")
            if "/" in arch and not arch.endswith(".json"):
                arch, tag = arch.split("/", 1)
                encoder = cls._from_tag(arch, tag, name, cache_dir, weights=weights)
            else:
                encoder = cls._from_weights(arch, weights, name)
        else:
            arch, _, tag = text.partition("/")
            encoder = cls._from_tag(arch, tag, name, cache_dir)
        if name is not None:
            encoder.name = name
        return encoder.to(device=device, dtype=dtype) if dtype is not None else encoder.to(device)

    @staticmethod
    def check_spec(spec: str | os.PathLike, model: str | None = None) -> None:
        """Refuse, without loading or downloading anything, a spec :meth:`load` cannot use:
        a folder without ``config.json``, a weights file that is not there, a name open_clip
        does not know (a path that does not exist is such a name).

        Raises:
            QueryEncoderError: in one sentence naming the spec.
        """
        text = os.fspath(spec)
        if Path(text).is_dir():
            if not (Path(text) / CONFIG_NAME).is_file():
                raise QueryEncoderError(f"{text}: is a folder without {CONFIG_NAME}, not a query encoder checkpoint.")
            return
        if model is not None or "=" in text:
            weights = text if model is not None else text.partition("=")[2]
            if not Path(weights).is_file():
                raise QueryEncoderError(f"{weights}: no such open_clip weights file.")
            return
        arch, _, tag = text.partition("/")
        if not tag:
            raise QueryEncoderError(
                f"query encoder {text!r}: give a checkpoint folder, ARCH/TAG (e.g. ViT-B-32/openai) "
                "or ARCH=WEIGHTS_FILE (e.g. ViT-B-32=/models/open_clip_pytorch_model.bin)."
            )
        if not arch or text.startswith((".", "~")):
            raise QueryEncoderError(f"{text}: no such query encoder folder.")
        if get_model_config(arch) is None:
            raise QueryEncoderError(f"{text}: no such query encoder folder, nor an open_clip ARCH/TAG name "
                                    f"(open_clip has no model {arch!r}).")

    @classmethod
    def _from_tag(
        cls, arch: str, tag: str, name: str | None, cache_dir: str | None, weights: str | None = None
    ) -> "QueryEncoder":
        model_config = cls._builtin_config(arch)
        tag_config = get_pretrained_cfg(arch, tag)
        if not tag_config:
            raise QueryEncoderError(
                f"open_clip has no pretrained tag {tag!r} for {arch}; "
                f"known tags: {', '.join(list_pretrained_tags_by_model(arch)) or 'none'}."
            )
        try:
            weights = weights or download_pretrained(tag_config, cache_dir=cache_dir)
        except Exception as error:  # network, hub and file-system failures alike
            reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
            hint = ("without internet, copy the weights file from a machine that has it and pass "
                    if _is_network_failure(error) else "or pass a local copy of the weights as ")
            raise QueryEncoderError(
                f"could not download the open_clip weights {arch}/{tag} ({reason}); "
                f"{hint}'{arch}/{tag}=/path/to/open_clip_pytorch_model.bin' as the query encoder instead."
            ) from None
        if tag_config.get("quick_gelu"):
            model_config["quick_gelu"] = True
        preprocess = {key: tag_config[key] for key in ("mean", "std", "interpolation", "resize_mode") if key in tag_config}
        encoder = cls(model_config, name=name or slugify(f"clip-{arch}-{tag}"), architecture=arch,
                      preprocess=preprocess or None)
        encoder._load_open_clip_weights(weights)
        return encoder

    @classmethod
    def _from_weights(cls, arch: str, weights: str, name: str | None) -> "QueryEncoder":
        if arch.endswith(".json"):
            path = Path(arch)
            try:
                loaded = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                raise QueryEncoderError(f"{arch}: is not a readable open_clip model config JSON.") from None
            model_config = loaded.get("model_cfg", loaded) if isinstance(loaded, dict) else None
            if not isinstance(model_config, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= model_config.keys():
                raise QueryEncoderError(f"{arch}: is not an open_clip model config (embed_dim, vision_cfg, text_cfg).")
            builtin, stem = None, path.stem
        else:
            model_config, builtin, stem = cls._builtin_config(arch), arch, arch
        encoder = cls(model_config, name=name or slugify(f"clip-{stem}-{Path(weights).stem}"), architecture=builtin,
                      preprocess=model_config.get("preprocess_cfg"))
        encoder._load_open_clip_weights(weights)
        return encoder

    @staticmethod
    def _builtin_config(arch: str) -> dict[str, Any]:
        config = get_model_config(arch)
        if config is None:
            raise QueryEncoderError(
                f"open_clip has no model {arch!r}; use a name from open_clip.list_models() or an open_clip config JSON."
            )
        return config

    def _load_open_clip_weights(self, weights: str) -> None:
        try:
            load_checkpoint(self.model, str(weights), strict=True, weights_only=True)
        except pickle.UnpicklingError:  # torch's message suggests weights_only=False: never for a foreign file
            raise QueryEncoderError(f"{weights}: is not a PyTorch weights file, or holds Python objects besides "
                                    "tensors (which are never unpickled here).") from None
        except Exception as error:  # corrupt files, wrong shapes
            reason = " ".join(str(error).split())[:200]
            raise QueryEncoderError(f"{weights}: cannot be loaded as open_clip weights for {self.name} ({reason}).") from None
        self.model.requires_grad_(False).eval()

    # ------------------------------------------------------------------ inputs
    def preprocess(self, images: torch.Tensor | Sequence[Any]) -> torch.Tensor:
        """CLIP preprocessing in torch: resize, centre crop, normalize.

        Args:
            images: uint8 ``[B, 3, H, W]`` (or float in [0, 1]), any H and W; or a list of
                PIL images / ``[3, H, W]`` tensors of possibly different sizes.

        Returns:
            float ``[B, 3, S, S]`` on the encoder's device, in its dtype.
        """
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or images.shape[1] != 3:
                raise ImageError(f"images must be [B, 3, H, W], got shape {list(images.shape)}.")
            return self._preprocess_batch(images)
        if len(images) == 0:
            raise ImageError("images is an empty list.")
        return torch.cat([self._preprocess_batch(_as_tensor(image)[None]) for image in images])

    def _preprocess_batch(self, images: torch.Tensor) -> torch.Tensor:
        device = self.pixel_mean.device
        if images.dtype == torch.uint8:
            pixels = images.to(device).float() / 255.0
        elif images.is_floating_point():
            pixels = images.to(device).float()
        else:
            raise ImageError(f"images must be uint8 or float, got {images.dtype}.")
        height, width = pixels.shape[-2:]
        if not (height and width):
            raise ImageError(f"images must be at least 1 x 1 pixel, got {height} x {width}.")
        if not torch.isfinite(pixels).all():
            raise ImageError("images hold NaN or infinity.")
        target_h, target_w = self.image_size
        if self.resize_mode == "shortest":
            scale = max(target_h / height, target_w / width)
            new_size = (max(target_h, round(height * scale)), max(target_w, round(width * scale)))
        else:
            new_size = (target_h, target_w)
        if new_size != (height, width):
            pixels = F.interpolate(pixels, size=new_size, mode=self.interpolation, align_corners=False,
                                   antialias=True).clamp_(0.0, 1.0)
        top = (pixels.shape[-2] - target_h) // 2
        left = (pixels.shape[-1] - target_w) // 2
        pixels = pixels[..., top:top + target_h, left:left + target_w]
        pixels = (pixels - self.pixel_mean) / self.pixel_std
        return pixels.to(self._dtype())

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids ``[B, context_length]`` (long) on the encoder's device."""
        return self.tokenizer(list(texts)).to(self.pixel_mean.device)

    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ------------------------------------------------------------------ embeddings
    @torch.no_grad()
    def encode_image(self, images: torch.Tensor | Sequence[Any], batch_size: int = 64) -> torch.Tensor:
        """L2-normalized CLIP image embeddings.

        Args:
            images: uint8 ``[B, 3, H, W]`` or a list of PIL images (see :meth:`preprocess`);
                or uint8 ``[B, F, 3, H, W]``: F frames of each clip, whose normalized
                embeddings are averaged and renormalized (CLIPSep averages 3 frames).
            batch_size: images per forward pass.

        Returns:
            float32 ``[B, D]`` on the encoder's device.
        """
        if isinstance(images, torch.Tensor) and images.ndim == 5:
            batch, frames = images.shape[:2]
            flat = self.encode_image(images.flatten(0, 1), batch_size=batch_size)
            return mean_embedding(flat.view(batch, frames, -1))
        count = images.shape[0] if isinstance(images, torch.Tensor) else len(images)
        if count == 0:
            raise ImageError("no images to encode.")
        outputs = []
        for start in range(0, count, batch_size):
            pixels = self.preprocess(images[start:start + batch_size])
            outputs.append(F.normalize(self.model.encode_image(pixels).float(), dim=-1))
        return torch.cat(outputs)

    @torch.no_grad()
    def encode_text(
        self, texts: Sequence[str], templates: str | Sequence[str] | None = None, batch_size: int = 256
    ) -> torch.Tensor:
        """L2-normalized CLIP text embeddings of prompts made from ``texts``.

        Args:
            texts: B queries, e.g. ``["violin", "dog barking"]``.
            templates: a template with ``{}`` (default ``"a photo of {}"``) or a list of
                templates: the ensemble averages their normalized embeddings, renormalized.
            batch_size: prompts per forward pass.

        Returns:
            float32 ``[B, D]`` on the encoder's device. Embeddings of a frozen encoder are
            cached by (template, text) until its weights change.
        """
        if isinstance(texts, str):
            raise ValueError("texts must be a list of strings, not one string.")
        templates = prompt_templates(templates)
        # The cache holds while the weights are unchanged: in-place updates (optimizer steps,
        # load_state_dict) bump the parameters' version counters.
        version = tuple((p.data_ptr(), p._version) for p in self.model.parameters())
        use_cache = version == self._cache_version and not any(p.requires_grad for p in self.model.parameters())
        if not use_cache:
            self._text_cache.clear()
            self._cache_version = version
        keys = [(template, text) for template in templates for text in texts]
        missing = list(dict.fromkeys(key for key in keys if key not in self._text_cache))
        for start in range(0, len(missing), batch_size):
            chunk = missing[start:start + batch_size]
            tokens = self.tokenize([template.format(text) for template, text in chunk])
            embedded = F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu()
            self._text_cache.update(zip(chunk, embedded))
        stacked = torch.stack([self._text_cache[key] for key in keys]).view(len(templates), len(texts), -1)
        return mean_embedding(stacked, dim=0).to(self.pixel_mean.device)

    @torch.no_grad()
    def encode_text_raw(self, texts: Sequence[str], templates: str | Sequence[str] | None = None) -> torch.Tensor:
        """Unnormalized CLIP text embeddings (the official CLIPSep's queries), averaged over
        the templates.

        Args:
            texts: B queries.
            templates: a template with ``{}`` (default ``"a photo of {}"``) or a list.

        Returns:
            float32 ``[B, D]`` on the encoder's device: the mean of the raw text-tower outputs.
        """
        templates = prompt_templates(templates)
        raw = [self.model.encode_text(self.tokenize([t.format(x) for x in texts])).float() for t in templates]
        return torch.stack(raw).mean(0)

    def clear_cache(self) -> None:
        """Forget cached text embeddings."""
        self._text_cache.clear()


def _as_tensor(image: Any) -> torch.Tensor:
    """A PIL image or ``[3, H, W]`` tensor as a ``[3, H, W]`` tensor."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ImageError(f"an image tensor must be [3, H, W], got shape {list(image.shape)}.")
        return image
    if hasattr(image, "convert"):
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
    raise ImageError(f"images must be uint8 tensors or PIL images, got {type(image).__name__}.")


_NETWORK_ERRORS = ("ConnectionError", "Timeout", "URLError", "gaierror", "OfflineModeIsEnabled",
                   "LocalEntryNotFoundError", "MaxRetryError", "NewConnectionError")


def _is_network_failure(error: BaseException | None) -> bool:
    """Whether ``error`` (or an error it was raised from) is a failure to reach the network."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (ConnectionError, TimeoutError)) or any(
            name in cls.__name__ for cls in type(error).__mro__ for name in _NETWORK_ERRORS
        ):
            return True
        error = error.__cause__ or error.__context__
    return False
