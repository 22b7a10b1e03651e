"""Starting a training run from trained weights: the initial model, and parts kept frozen.

The systems' ``init_from`` argument names the weights to start from: a project
checkpoint folder (``config.json`` + ``model.safetensors``, see :mod:`clipcore.checkpoint`)
of the system's model class, or a foreign file that the system knows how to read (for
CLIPSep, the official ``best_model.pt``). The network's size comes from the checkpoint;
the system's preset and model arguments do not apply. The model keeps the checkpoint's
provenance, so conventions recorded there (``query_normalization``, ``query_encoder``)
are written again into every export of the fine-tuned model.

``freeze`` names parts of the model (dotted module or parameter names, as in
``model.named_modules()``) whose weights stay as they are; their BatchNorm statistics stay
too (:func:`hold_frozen` keeps those modules in eval mode; a system that inherits
:class:`HoldsFrozenParts` does so at construction, at every training batch and in ``train()``).

Usage::

    model = initial_model("runs/x/pretrained/best", CLIPSep, foreign=load_official_model)
    frozen = freeze(model, ["input_norm", "down"])     # the U-Net encoder
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from torch import nn

from clipcore.checkpoint import CheckpointError, Pretrained, load_pretrained

__all__ = ["initial_model", "freeze", "hold_frozen", "HoldsFrozenParts"]

T = TypeVar("T", bound=Pretrained)


def initial_model(init_from: str | os.PathLike, expected: type[T],
                  foreign: Callable[[Path], T] | None = None) -> T:
    """The model a fine-tuning run starts from.

    Args:
        init_from: a checkpoint folder holding an ``expected`` (or a subclass), or a file
            that ``foreign`` reads.
        expected: the model class the system trains.
        foreign: reader of a foreign checkpoint file (raises ``CheckpointError`` naming
            the file when it is not one), or None when only folders are accepted.

    Returns:
        The model in training mode, with the checkpoint's provenance.

    Raises:
        CheckpointError: no such folder or file, a folder of another kind, weights that do
            not fit, or a file no reader accepts.
    """
    path = Path(init_from)
    if path.is_dir():
        model = load_pretrained(path, expected=expected)
    elif path.is_file() and foreign is not None:
        model = foreign(path)
    elif path.is_file():
        raise CheckpointError(f"init_from {path}: is a file; a {expected.__name__} starts from a checkpoint folder "
                              "(config.json + model.safetensors).")
    else:
        raise CheckpointError(f"init_from {path}: no such checkpoint folder or file.")
    return model.train()


def freeze(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Stop the gradients of named parts of ``model``.

    Args:
        model: the network.
        names: dotted names of its modules or parameters (``down``, ``down.0``,
            ``query_proj.weight``).

    Returns:
        The names of the frozen modules (for :func:`hold_frozen`).

    Raises:
        CheckpointError: a name that is not a part of ``model`` (the message lists its parts).
    """
    modules, parameters = dict(model.named_modules()), dict(model.named_parameters())
    frozen = []
    for name in names:
        if name and name in modules:
            modules[name].requires_grad_(False)
            frozen.append(name)
        elif name in parameters:
            parameters[name].requires_grad_(False)
        else:
            parts = ", ".join(child for child, _ in model.named_children())
            parts += "".join(f", {p}" for p, _ in model.named_parameters(recurse=False))
            raise CheckpointError(f"freeze: {type(model).__name__} has no part named {name!r} (its parts: {parts}).")
    if not any(p.requires_grad for p in model.parameters()):
        raise CheckpointError(f"freeze: {', '.join(names)} freezes every weight of {type(model).__name__}.")
    return frozen


def hold_frozen(model: nn.Module, frozen: Iterable[str]) -> None:
    """Put the frozen modules back in eval mode (BatchNorm statistics stay fixed); call it
    after every ``train()``."""
    modules = dict(model.named_modules())
    for name in frozen:
        modules[name].eval()


class HoldsFrozenParts:
    """Mixin for a training system whose ``model`` has frozen parts: they stay in eval mode
    from :meth:`freeze_parts` on, at every training batch and after every ``train()``
    (Lightning 2 keeps each module's mode as it finds it and never calls the system's
    ``train()``, so the hook is what holds them while fitting). List it before the
    ``LightningModule``: ``class CLIPSepSystem(HoldsFrozenParts, LightningModule)``.

    Attributes:
        frozen: the names of the frozen modules (set by :meth:`freeze_parts`).
    """

    model: nn.Module
    frozen: list[str]

    def freeze_parts(self, names: Iterable[str]) -> None:
        """Freeze ``names`` of ``self.model`` (see :func:`freeze`) and hold them in eval mode."""
        self.frozen = freeze(self.model, list(names))
        hold_frozen(self.model, self.frozen)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        hold_frozen(self.model, self.frozen)  # whatever set the modes since

    def train(self, mode: bool = True):
        """Training mode, with the frozen parts (and their BatchNorm statistics) held in eval mode."""
        super().train(mode)  # type: ignore[misc]  # nn.Module's, through the LightningModule
        hold_frozen(self.model, self.frozen)
        return self
