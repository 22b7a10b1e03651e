"""Self-describing checkpoints: ``config.json`` plus ``model.safetensors``.

Every model of the project mixes in :class:`Pretrained`. Its constructor arguments are
recorded when it is built, so that::

    model.save_pretrained("runs/x/model")
    same = ModelClass.from_pretrained("runs/x/model")

works without any training code. ``config.json`` holds the class, the constructor
arguments, a format version, the library versions, and the training provenance when it is
known (git commit, run config). Weights are safetensors: nothing is ever unpickled.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import pickle
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, TypeVar, overload

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from clipcore.errors import ClipAudioError
from clipcore.files import atomic_write

__all__ = [
    "CheckpointError",
    "Pretrained",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "QUERY_ENCODER_DIR",
    "FORMAT_VERSION",
    "read_config",
    "read_torch_file",
    "load_pretrained",
    "git_commit",
    "library_versions",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
QUERY_ENCODER_DIR = "query_encoder"
"""Subfolder of an exported model (CLIPSep's or CLIPSonic's) holding its query encoder."""
_PROJECT_PACKAGES = ("clipcore", "clipsep", "clipsonic")

T = TypeVar("T", bound="Pretrained")


class CheckpointError(ClipAudioError):
    """A checkpoint folder that cannot be loaded, described in one sentence."""


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _to_json(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_to_json(item, where) for item in value]
    if isinstance(value, dict):
        return {str(key): _to_json(item, where) for key, item in value.items()}
    raise TypeError(
        f"constructor argument {where} of type {type(value).__name__} cannot be stored in "
        f"{CONFIG_NAME}; use plain numbers, strings, lists and dicts."
    )


class Pretrained:
    """Mixin for ``torch.nn.Module`` subclasses: records ``__init__`` arguments and adds
    :meth:`save_pretrained` / :meth:`from_pretrained`.

    The arguments of the outermost constructor call are kept in ``self.init_args`` (a dict
    of JSON values). Set ``self.provenance`` (a dict) to store how the weights were made.
    """

    init_args: dict[str, Any]
    provenance: dict[str, Any] | None = None
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    """Constructor arguments of the model's named sizes (``tiny``, ``paper``)."""
    RENAMED_ARGUMENTS: ClassVar[dict[str, str]] = {}
    """Former constructor argument names -> current ones, so that older checkpoints load."""
    RETIRED_ARGUMENTS: ClassVar[frozenset[str]] = frozenset()
    """Former constructor arguments that older checkpoints hold and loading now ignores."""

    @classmethod
    def from_preset(cls: type[T], preset: str, seed: int | None = 0, **overrides: Any) -> T:
        """The model of a named preset: ``PRESETS[preset]`` with ``overrides``.

        Args:
            preset: a key of :attr:`PRESETS`.
            seed: seed of the weight initialisation, drawn from a forked generator so that
                the global random state is left as it was; None draws from the global
                generator (a training run seeded by ``seed_everything``, say).
            **overrides: constructor arguments over the preset's.
        """
        if preset not in cls.PRESETS:
            raise ValueError(f"preset must be one of {', '.join(cls.PRESETS)}, not {preset!r}.")
        arguments = {**cls.PRESETS[preset], **overrides}
        if seed is None:
            return cls(**arguments)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(**arguments)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        original = cls.__dict__["__init__"]
        signature = inspect.signature(original)

        @functools.wraps(original)
        def __init__(self, *args: Any, **kw: Any) -> None:
            if self.__dict__.get("_recording_init_args"):
                original(self, *args, **kw)
                return
            bound = signature.bind(self, *args, **kw)
            bound.apply_defaults()
            recorded: dict[str, Any] = {}
            for name, value in list(bound.arguments.items())[1:]:
                if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                    recorded.update(value)
                elif signature.parameters[name].kind is inspect.Parameter.VAR_POSITIONAL:
                    raise TypeError(f"{cls.__name__} cannot record *{name} arguments.")
                else:
                    recorded[name] = value
            object.__setattr__(self, "_recording_init_args", True)
            try:
                original(self, *args, **kw)
            finally:
                object.__setattr__(self, "_recording_init_args", False)
            object.__setattr__(
                self,
                "init_args",
                {name: _to_json(value, f"{cls.__name__}.{name}") for name, value in recorded.items()},
            )

        cls.__init__ = __init__  # type: ignore[method-assign]  # the recording wrapper

    def save_pretrained(self, directory: str | os.PathLike, provenance: dict | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (atomically).

        Args:
            directory: target folder, created if missing.
            provenance: extra facts about how the weights were made (merged over
                ``self.provenance``).

        Returns:
            The folder.

        Raises:
            CheckpointError: weights or buffers hold NaN or infinity (a diverged training,
                say): nothing is written.
        """
        assert isinstance(self, torch.nn.Module), "Pretrained is a mixin for nn.Module"
        directory = Path(directory)
        broken = [name for name, tensor in self.state_dict().items()
                  if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
        if broken:
            raise CheckpointError(f"{directory}: refusing to save a {type(self).__name__} whose weights hold NaN or "
                                  f"infinity ({len(broken)} tensors, {broken[0]} the first).")
        config = {
            "class": _qualified_name(type(self)),
            "format_version": FORMAT_VERSION,
            "arguments": self.init_args,
            "versions": library_versions(),
            "provenance": _to_json({**(self.provenance or {}), **(provenance or {})}, "provenance"),
        }
        atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_model(self, str(tmp)))
        atomic_write(
            directory / CONFIG_NAME,
            lambda tmp: tmp.write_text(json.dumps(config, indent=2, sort_keys=False) + "\n"),
        )
        return directory

    @classmethod
    def from_pretrained(
        cls: type[T], directory: str | os.PathLike, map_location: str | torch.device = "cpu"
    ) -> T:
        """Build the model from ``config.json`` and load ``model.safetensors``.

        Raises:
            CheckpointError: missing folder or files, a folder holding another class,
                arguments the class does not take (a newer version's checkpoint) or
                cannot be built from (an edited config), a truncated or corrupt weights
                file, or weights that do not fit the model.
        """
        directory = Path(directory)
        config = read_config(directory)
        _check_device(directory, map_location)
        expected = _qualified_name(cls)
        if config["class"] != expected:
            raise CheckpointError(
                f"{directory} holds a {config['class']} checkpoint, not a {expected}."
            )
        arguments = {cls.RENAMED_ARGUMENTS.get(name, name): value for name, value in config["arguments"].items()
                     if name not in cls.RETIRED_ARGUMENTS}
        parameters = inspect.signature(cls.__init__).parameters
        unknown = sorted(set(arguments) - set(parameters))
        if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            raise CheckpointError(
                f"{directory / CONFIG_NAME} gives {cls.__name__} arguments this version does not know "
                f"({', '.join(unknown)}): it was written by a newer version of the project."
            )
        try:
            model = cls(**arguments)
        except (TypeError, ValueError, RuntimeError, ArithmeticError, LookupError, NotImplementedError) as error:
            reason = " ".join(str(error).split())[:300].rstrip(".") or type(error).__name__
            raise CheckpointError(f"{directory / CONFIG_NAME}: cannot build a {cls.__name__} from its arguments "
                                  f"({reason}).") from None
        model.provenance = config.get("provenance") or None
        assert isinstance(model, torch.nn.Module), "Pretrained is a mixin for nn.Module"
        _load_weights(model, directory, map_location)
        return model


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and check the ``config.json`` of a checkpoint folder."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint folder.")
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a checkpoint folder (it has no {CONFIG_NAME}).")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: is not valid JSON.") from None
    if (not isinstance(config, dict) or not {"class", "arguments"} <= config.keys()
            or not isinstance(config["class"], str) or not isinstance(config["arguments"], dict)):
        raise CheckpointError(f"{path}: is not a checkpoint config of this project.")
    version = config.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: format_version must be a whole number, not {version!r}.")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version} is newer than this library reads "
            f"({FORMAT_VERSION}); upgrade the library."
        )
    return config


def read_torch_file(path: str | os.PathLike) -> Any:
    """Read a file that ``torch.save`` wrote (a foreign checkpoint, a Lightning one) on the
    CPU, never unpickling code: ``torch.load(weights_only=True)``, which takes tensors and
    plain values only.

    Raises:
        CheckpointError: a missing file, or one that cannot be read so, in one sentence.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message suggests weights_only=False: never for a foreign file
        raise CheckpointError(f"{path}: is not a PyTorch weights file, or holds Python objects besides tensors "
                              "(which are never unpickled here).") from None
    except Exception as error:  # noqa: BLE001 - arbitrary bytes fail in many ways (EOFError, KeyError, ...)
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:200] if str(error) else type(error).__name__
        raise CheckpointError(f"{path}: is not a PyTorch weights file that can be read safely ({reason}).") from None


def _check_device(directory: Path, map_location: str | torch.device) -> None:
    """Refuse a device name torch does not know, or a device this machine lacks, before
    the weights are read (their reader would call either a corrupt file)."""
    try:
        device = torch.device(map_location)
    except (RuntimeError, TypeError):
        raise CheckpointError(f"cannot load {directory} onto device {map_location!r}: torch has no such device "
                              "(cpu, cuda, cuda:1, mps, ...).") from None
    module = getattr(torch, device.type, None)
    if device.type != "cpu" and module is not None and hasattr(module, "is_available") and not module.is_available():
        raise CheckpointError(f"cannot load {directory} onto device {map_location!r}: this machine has none.")


def _load_weights(model: torch.nn.Module, directory: Path, map_location) -> None:
    path = directory / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: has no weights file {WEIGHTS_NAME}.")
    try:
        # load_model restores tensors that save_model stored once for several names.
        load_model(model, str(path), strict=True, device=str(map_location))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: is truncated or corrupt ({error}).") from None
    except RuntimeError as error:
        reason = " ".join(str(error).split())[:300]
        raise CheckpointError(f"{path}: does not fit {type(model).__name__} ({reason}).") from None


@overload
def load_pretrained(directory: str | os.PathLike, map_location: str | torch.device = "cpu",
                    expected: None = None) -> Pretrained: ...


@overload
def load_pretrained(directory: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                    expected: type[T]) -> T: ...


def load_pretrained(
    directory: str | os.PathLike, map_location: str | torch.device = "cpu", expected: type | None = None
) -> Pretrained:
    """Load any project checkpoint, whatever its class.

    Only classes that mix in :class:`Pretrained` are built, and only modules of this
    project's packages are imported for it (a module already imported is used as is).

    Args:
        directory: checkpoint folder.
        map_location: device for the weights.
        expected: if given, the folder must hold this class or a subclass of it.
    """
    directory = Path(directory)
    name = read_config(directory)["class"]
    module_name, _, class_name = name.rpartition(".")
    if module_name not in sys.modules and module_name.split(".")[0] not in _PROJECT_PACKAGES:
        raise CheckpointError(f"{directory}: holds a {name}, which is not a model of this project.")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise CheckpointError(f"{directory}: holds a {name}, which this library does not have.") from None
    if not (isinstance(cls, type) and issubclass(cls, Pretrained)):
        raise CheckpointError(f"{directory}: holds a {name}, which is not a model of this project.")
    if expected is not None and not issubclass(cls, expected):
        raise CheckpointError(f"{directory} holds a {name} checkpoint, not a {_qualified_name(expected)}.")
    return cls.from_pretrained(directory, map_location=map_location)


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Versions of Python, this project and its main libraries."""
    versions = {"python": platform.python_version()}
    for package in ("clipaudio", "torch", "open_clip_torch", "diffusers", "lightning"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def git_commit(directory: str | os.PathLike | None = None) -> str | None:
    """The git commit of ``directory`` (default: this source tree), with ``+dirty`` when it
    has uncommitted changes; ``None`` outside a git checkout."""
    cwd = Path(directory) if directory is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")
