"""Import the CLIPSep-NIT checkpoint released with the paper into this project's format.

The official release (github.com/sony/CLIPSep) saves the ``state_dict()`` of its network
wrapped in ``nn.DataParallel``: keys such as ``module.sound_net.unet_block.model.1.model.2
.weight`` follow the nesting of its recursive U-Net blocks. :func:`official_key_map` maps
them onto the flat names of :class:`clipsep.model.CLIPSep`, and :func:`from_official`
builds the model, with every size read from the weights themselves.

Command line: ``clipsep convert official best_model.pt --out DIR``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
from pathlib import Path

import torch

from clipcore.checkpoint import CheckpointError, read_torch_file
from clipcore.cli import UsageError
from clipcore.files import check_output_folder
from clipsep.model import CLIPSep

__all__ = ["official_key_map", "from_official", "load_official", "load_official_model", "add_convert_command"]

_PREFIX = "module."
# Positions inside the official blocks' nn.Sequential:
#   outermost: [downconv, submodule, relu, upsample, upconv]
#   middle:    [leakyrelu, downconv, downnorm, submodule, relu, upsample, upconv, upnorm]
#   innermost: [leakyrelu, downconv, relu, upsample, upconv, upnorm]
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _block_prefix(level: int) -> str:
    """Official module path of U-Net level ``level`` (0 = outermost)."""
    if level == 0:
        return "sound_net.unet_block"
    return "sound_net.unet_block.model.1" + ".model.3" * (level - 1)


def official_key_map(layers: int = 7, noise_heads: int = 2) -> dict[str, str]:
    """Official parameter names (without ``module.``) -> :class:`CLIPSep` names."""
    mapping = {f"sound_net.bn0.{name}": f"input_norm.{name}" for name in _BN}
    for level in range(layers):
        block = _block_prefix(level) + ".model"
        if level == 0:
            mapping[f"{block}.0.weight"] = "down.0.conv.weight"
            mapping[f"{block}.4.weight"] = "up.0.conv.weight"
            mapping[f"{block}.4.bias"] = "up.0.conv.bias"
            continue
        innermost = level == layers - 1
        mapping[f"{block}.1.weight"] = f"down.{level}.conv.weight"
        up_conv, up_norm = (4, 5) if innermost else (6, 7)
        mapping[f"{block}.{up_conv}.weight"] = f"up.{level}.conv.weight"
        for name in _BN:
            mapping[f"{block}.{up_norm}.{name}"] = f"up.{level}.norm.{name}"
            if not innermost:
                mapping[f"{block}.2.{name}"] = f"down.{level}.norm.{name}"
    for name in ("weight", "bias"):
        mapping[f"frame_net.{name}"] = f"query_proj.{name}"
        for head in range(noise_heads):
            mapping[f"pit_nets.{head}.{name}"] = f"noise_proj.{head}.{name}"
    mapping["synth_net.scale"] = "mask_scale"
    mapping["synth_net.bias"] = "mask_bias"
    return mapping


def _sizes(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Read the network's constructor arguments off an (unprefixed) official state dict."""
    try:
        frame = state["frame_net.weight"]
        base = state["sound_net.unet_block.model.0.weight"]
    except KeyError as missing:
        raise CheckpointError(f"it has no {missing} entry, so it is not an official CLIPSep state dict.") from None
    if frame.dim() != 2 or base.dim() != 4:
        raise CheckpointError(f"its frame_net.weight is {list(frame.shape)} and its first convolution "
                              f"{list(base.shape)}, not 2-d and 4-d, so it is not an official CLIPSep state dict.")
    layers = 1 + sum(1 for key in state if re.fullmatch(r"sound_net\.unet_block(\.model\.[13])+\.model\.1\.weight", key))
    noise_heads = len({key.split(".")[1] for key in state if key.startswith("pit_nets.")})
    return dict(query_dim=frame.shape[1], base_channels=base.shape[0], mask_channels=frame.shape[0],
                layers=layers, noise_heads=noise_heads)


def from_official(state_dict: dict[str, torch.Tensor]) -> CLIPSep:
    """Build a :class:`CLIPSep` (eval mode) from an official state dict.

    Args:
        state_dict: the official ``state_dict()``, with or without the ``module.`` prefix.

    Raises:
        CheckpointError: keys or shapes that are not those of the official network.
    """
    state = {(key[len(_PREFIX):] if key.startswith(_PREFIX) else key): value for key, value in state_dict.items()}
    sizes = _sizes(state)
    try:
        model = CLIPSep(**sizes)
    except ValueError as error:
        raise CheckpointError(f"the state dict does not describe a CLIPSep network ({error}).") from None
    mapping = official_key_map(sizes["layers"], sizes["noise_heads"])
    unknown = sorted(set(state) - set(mapping))
    missing = sorted(set(mapping) - set(state))
    if unknown or missing:
        detail = f"unexpected {unknown[0]}" if unknown else f"missing {missing[0]}"
        raise CheckpointError(
            f"the state dict does not match the official CLIPSep network ({detail}; "
            f"{len(unknown)} unexpected and {len(missing)} missing keys)."
        )
    own = model.state_dict()
    converted = {}
    for key, target in mapping.items():
        value = state[key]
        if not isinstance(value, torch.Tensor) or value.shape != own[target].shape:
            shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(f"entry {key} has shape {shape}, expected {list(own[target].shape)}.")
        converted[target] = value.to(own[target].dtype)
    model.load_state_dict(converted, strict=True)
    return model.eval()


def load_official(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an official checkpoint file safely (``torch.load(weights_only=True)``).

    A dict that wraps the weights under ``state_dict`` or ``model`` is unwrapped.

    Raises:
        CheckpointError: a missing file or one that is not a plain tensor dictionary.
    """
    state = read_torch_file(path)
    if isinstance(state, dict) and "pytorch-lightning_version" in state:
        raise CheckpointError(f"{path}: is a training checkpoint of Lightning, not a released model; use the folder "
                              "its run exported (<log_dir>/pretrained/best, or the recipe's --export).")
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors.")
    return state


def load_official_model(path: str | os.PathLike) -> CLIPSep:
    """The network of an official checkpoint file, with the official conventions as its
    provenance (``query_encoder`` for 512-d queries, ``query_normalization: none``).

    Raises:
        CheckpointError: naming ``path``, when it is not an official CLIPSep checkpoint.
    """
    path = Path(path)
    try:
        model = from_official(load_official(path))
    except CheckpointError as error:
        message = str(error)
        raise CheckpointError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    model.provenance = {
        "source": "official CLIPSep release (github.com/sony/CLIPSep)",
        "converted_from": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    if model.query_dim == 512:
        model.provenance["query_encoder"] = "ViT-B-32/openai"
    # The official code feeds raw CLIP outputs (encode_image averaged over 3 frames in
    # training, encode_text at inference), not unit-norm embeddings.
    model.provenance["query_normalization"] = "none"
    return model


def convert_official(path: str | Path, out: str | Path) -> Path:
    """Convert the official checkpoint ``path`` into the project checkpoint folder ``out``.

    A ``train-args.json`` next to the file is recorded in the provenance.
    """
    path = Path(path)
    model = load_official_model(path)
    provenance = {}
    args_file = path.with_name("train-args.json")
    if args_file.is_file():
        try:
            provenance["train_args"] = json.loads(args_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{args_file}: is not valid JSON.") from None
    return model.save_pretrained(out, provenance=provenance)


def _run(args: argparse.Namespace) -> int:
    check_output_folder(args.out, "--out")
    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()):  # another checkpoint's query_encoder/ would stay beside the new model
        raise UsageError(f"--out {out}: is a folder that is not empty; convert into a new one.")
    convert_official(args.file, out)
    print(f"wrote {out}")
    return 0


def add_convert_command(subparsers: "argparse._SubParsersAction") -> None:
    """Registrar of ``clipsep convert official FILE --out DIR``."""
    parser = subparsers.add_parser(
        "convert",
        help="import a released checkpoint into this project's format",
        description="Import the CLIPSep-NIT checkpoint released with the paper (best_model.pt) "
        "into a project checkpoint folder (config.json + model.safetensors).",
    )
    parser.add_argument("source", choices=["official"], help="where the checkpoint comes from")
    parser.add_argument("file", metavar="FILE", help="the released weights file (read with torch.load(weights_only=True))")
    parser.add_argument("--out", required=True, metavar="DIR", help="checkpoint folder to write")
    parser.set_defaults(run=_run)
