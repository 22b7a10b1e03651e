"""What every training recipe shares: periodic checkpoints, resuming, per-rank random
streams, and the one way a trained model is exported.

:class:`TrainingCLI` is the ``LightningCLI`` of ``recipes/train_*.py``. Scaling out
needs no code: ``--trainer.devices``, ``--trainer.num_nodes``, ``--trainer.strategy
ddp``, ``--trainer.precision bf16-mixed`` and ``--trainer.accumulate_grad_batches`` are
Lightning's, and :class:`clipcore.datamodule.ShardDataModule` gives every rank its own
samples. On top of that it adds:

* ``--checkpoint.*``: a :class:`StepCheckpoint` that saves every
  ``every_n_train_steps`` optimizer steps (1000 by default) into
  ``<trainer.default_root_dir>/checkpoints/``, keeps the ``save_top_k`` newest (3) and
  ``last.ckpt`` (also written when training ends; ``save_on_exception`` also saves when
  a SIGTERM, e.g. a preemption, stops the run). The folder does not depend on the
  logger's version, so rerunning the same command with ``--ckpt_path last`` finds the
  checkpoint of the run it replaces (the logs of each attempt go to a new
  ``lightning_logs/version_<n>``).
* ``--random_state.*``: :class:`RankRandomState`, which seeds each rank's global random
  generators (Python, NumPy, torch, CUDA) from ``(seed_everything, global rank, global
  step)`` when training starts, so ranks draw different noise and a resumed run goes on
  with a fresh, reproducible stream instead of replaying the one from step 0.
* :class:`RunCommit`: the git commit of the code, in every checkpoint and in the run's
  ``hparams.yaml``.
* ``--export`` (recipes that name an ``export`` folder): an :class:`ExportPretrained`
  callback that exports the model once training ends. Every system exports through
  :func:`export_pretrained`, which records the same provenance for all of them
  (:func:`training_provenance`).

What ``--ckpt_path last`` restores: weights (and the CLIPSonic EMA weights), optimizer
state, learning-rate schedule, global step and epoch, loop progress, callback states
(Lightning); and the shard stream's epoch and position (the training loader of
:class:`~clipcore.datamodule.ShardDataModule` is resumable). Not restored bit-exactly: the
random generators and the rest of the interrupted epoch's shard stream are re-seeded
from the step and position rather than rewound (the shuffle buffer is lost), so a
resumed run is deterministic but not identical to an uninterrupted one; a one-pass
shard stream (``data.epoch_length: null``) and map-style loaders (the prior's pairs)
restart the interrupted epoch's pass.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
import yaml
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from clipcore.checkpoint import CONFIG_NAME, QUERY_ENCODER_DIR, CheckpointError, Pretrained, git_commit, read_torch_file
from clipcore.errors import EXIT_INTERRUPTED, ClipAudioError, UsageError, is_whole_number, report_errors
from clipcore.files import check_not_an_input, check_output_folder

__all__ = [
    "TrainingCLI",
    "StepCheckpoint",
    "RankRandomState",
    "RunCommit",
    "ExportPretrained",
    "export_pretrained",
    "training_provenance",
    "run_config",
    "check_optimizer_settings",
    "TrainingDiverged",
    "check_finite_training",
    "rank_seed",
    "run_seed",
    "log_dir",
    "run_recipe",
]

CHECKPOINT_EVERY = 1000


def log_dir(trainer) -> Path:
    """The run's log folder, as ``Trainer.log_dir`` finds it but without its broadcast:
    that is a collective, and DDP hangs when only global rank 0 asks for it."""
    logger = trainer.loggers[0] if trainer.loggers else None
    folder = (getattr(logger, "log_dir", None) or logger.save_dir) if logger is not None else None
    return Path(folder or trainer.default_root_dir)


def run_config(trainer) -> dict | None:
    """The resolved config LightningCLI saved in the run's log folder, if any."""
    path = log_dir(trainer) / "config.yaml"
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text())


def training_provenance(module: LightningModule) -> dict[str, Any]:
    """How a system's weights were made: the git commit, the step and epoch, the system's
    arguments and, when a trainer ran it, the run's resolved config."""
    trainer = module._trainer  # None for a module no trainer has run
    return {
        "git_commit": git_commit(),
        "global_step": module.global_step,
        "epoch": module.current_epoch,
        "system": dict(module.hparams),
        "run_config": run_config(trainer) if trainer is not None else None,
    }


def export_pretrained(
    module: LightningModule,
    model: Pretrained,
    directory: str | os.PathLike,
    provenance: dict[str, Any] | None = None,
    query_encoder: Pretrained | None = None,
) -> Path:
    """Save a system's inference model with its training provenance: the one export path
    of every system.

    Args:
        module: the training system (the provenance's source).
        model: the model to save (``save_pretrained``).
        directory: the checkpoint folder to write.
        provenance: extra facts, merged over :func:`training_provenance`'s.
        query_encoder: a query encoder to copy into ``directory/query_encoder`` (one
            loaded from a local folder, so that the export is self-contained), or None.

    Returns:
        The folder.
    """
    directory = Path(directory)
    model.save_pretrained(directory, provenance={**training_provenance(module), **(provenance or {})})
    if query_encoder is not None:
        query_encoder.save_pretrained(directory / QUERY_ENCODER_DIR)
    return directory


class ExportPretrained(Callback):
    """Export the system (its ``export(directory, provenance)``) on global rank 0.

    With ``best_and_last``, after each validation (not the sanity check) to
    ``dirpath/last`` and, when ``monitor`` is the best so far (the lowest, or with
    ``mode="max"`` the highest; a NaN is never better), to ``dirpath/best``: the first
    validation's model is best until a better one comes, so ``best`` always exists once a
    validation ran; ``last`` is exported again when training ends after steps no
    validation saw (or with no validation at all). Otherwise once, when training ends, to
    ``dirpath``. Only ``fit`` exports (not ``validate``). A dev run (``fast_dev_run``) has
    no log folder, so it exports only when ``dirpath`` names one.

    Args:
        dirpath: the export folder; None: ``<log_dir>/<folder>``.
        folder: name of the default folder inside the run's log folder.
        best_and_last: export best and last after every validation, not once at the end.
        monitor: the validation metric that decides "best".
        mode: ``"min"`` (lower is better) or ``"max"``.
    """

    def __init__(self, dirpath: str | None = None, folder: str = "pretrained", best_and_last: bool = False,
                 monitor: str = "val/loss", mode: Literal["min", "max"] = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}.")
        self.dirpath, self.folder, self.best_and_last, self.monitor = dirpath, folder, best_and_last, monitor
        self.sign = 1.0 if mode == "min" else -1.0
        self.best = math.inf  # of sign * monitor
        self.has_best = False
        self.exported_step = -1  # the step last/ holds

    def state_dict(self) -> dict[str, float]:
        return {"best": self.best, "has_best": self.has_best, "exported_step": self.exported_step}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.best = state_dict["best"]
        self.has_best = bool(state_dict.get("has_best", self.best < math.inf))
        self.exported_step = int(state_dict.get("exported_step", -1))

    def _root(self, trainer) -> Path | None:
        if not trainer.is_global_zero or (trainer.fast_dev_run and not self.dirpath):
            return None
        return Path(self.dirpath or log_dir(trainer) / self.folder)

    def on_validation_end(self, trainer, pl_module) -> None:
        root = self._root(trainer)
        if not self.best_and_last or trainer.sanity_checking or root is None or trainer.state.fn != "fit":
            return  # a `validate` run scores a checkpoint: it exports nothing over the training's models
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        pl_module.export(root / "last", {"val_metrics": metrics})
        self.exported_step = trainer.global_step
        if self.monitor not in metrics:
            rank_zero_warn(f"ExportPretrained: validation logged no {self.monitor!r} (it logged "
                           f"{', '.join(sorted(metrics)) or 'nothing'}), so best/ is not exported.", category=UserWarning)
            return
        value = self.sign * metrics[self.monitor]
        if value < self.best or not self.has_best:  # a NaN is never better
            self.best = value if value < self.best else self.best
            self.has_best = True
            pl_module.export(root / "best", {"val_metrics": metrics})

    def on_fit_end(self, trainer, pl_module) -> None:
        root = self._root(trainer)
        if root is None or (self.best_and_last and self.exported_step == trainer.global_step):
            return
        if self.best_and_last:
            root = root / "last"
            if not self.has_best:
                rank_zero_warn("ExportPretrained: no validation chose a best model, so only last/ is exported.",
                               category=UserWarning)
        pl_module.export(root)
        print(f"exported the model to {root}")


def check_optimizer_settings(learning_rate: float, warmup_steps: int = 0, weight_decay: float = 0.0,
                             decay_multiplier: float = 1.0) -> None:
    """Refuse optimizer settings that would fail or misbehave only once training runs (a
    system's ``__init__`` calls it, so that the recipe reports them in one line first).

    Raises:
        ValueError: a learning rate that is not a positive finite number, a negative
            number of warm-up steps or weight decay, or a final learning-rate multiplier
            outside (0, 1].
    """
    if not (isinstance(learning_rate, (int, float)) and 0 < learning_rate < math.inf):
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate}.")
    if not (is_whole_number(warmup_steps) and warmup_steps >= 0):
        raise ValueError(f"warmup_steps must be a whole number of steps, 0 or more, got {warmup_steps}.")
    if not (isinstance(weight_decay, (int, float)) and 0 <= weight_decay < math.inf):
        raise ValueError(f"weight_decay must be 0 or a positive number, got {weight_decay}.")
    if not (isinstance(decay_multiplier, (int, float)) and 0 < decay_multiplier <= 1):
        raise ValueError(f"decay_multiplier must lie in (0, 1], got {decay_multiplier}.")


class TrainingDiverged(ClipAudioError):
    """Training met a NaN or an infinity, and stopped before the weights took it in."""


def check_finite_training(module: LightningModule, what: str, *values: torch.Tensor) -> None:
    """Stop a run at the first non-finite ``values`` (a loss, or what it is made from), in
    one sentence, before the optimiser steps: the weights and the checkpoints so far stay
    finite. A system's ``training_step`` calls it.

    Raises:
        TrainingDiverged: naming ``what`` and the step.
    """
    finite = all(bool(torch.isfinite(value).all()) for value in values)
    if not module.trainer.strategy.reduce_boolean_decision(finite, all=True):  # every rank stops at one step
        raise TrainingDiverged(
            f"step {module.global_step}: the {what} is not finite (NaN or infinity), so training stopped before the "
            f"weights took it in; lower model.learning_rate ({module.hparams.learning_rate:g}) or lengthen "
            "model.warmup_steps, and train again."
        )


def run_seed() -> int:
    """The run's ``seed_everything`` (Lightning keeps it in ``PL_GLOBAL_SEED``), else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def rank_seed(seed: int, rank: int, step: int) -> int:
    """A 32-bit seed for one rank at one step (distinct ranks and steps, distinct seeds)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


class RankRandomState(Callback):
    """Seed each rank's global random generators from ``(seed, rank, global step)`` when
    training starts (after a checkpoint was restored).

    Args:
        seed: base seed; None takes ``seed_everything``'s (``PL_GLOBAL_SEED``), else 0.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def on_train_start(self, trainer, pl_module) -> None:
        base = self.seed if self.seed is not None else run_seed()
        value = rank_seed(base, trainer.global_rank, trainer.global_step)
        random.seed(value)
        np.random.seed(value)
        torch.manual_seed(value)  # also every CUDA device


class RunCommit(Callback):
    """Record the git commit of the code with each run: in every checkpoint
    (``checkpoint["git_commit"]``) and in the loggers' hyperparameters (``hparams.yaml``
    beside ``config.yaml``). None outside a git checkout."""

    def __init__(self) -> None:
        self.commit = git_commit()

    def setup(self, trainer, pl_module, stage: str) -> None:  # every command: fit, validate, test
        for logger in trainer.loggers:
            logger.log_hyperparams({"git_commit": self.commit})

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint["git_commit"] = self.commit


class StepCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` whose ``last.ckpt`` also holds the final state of a finished
    run (Lightning's writes it at the end only when it never wrote one), so that
    rerunning a finished job with ``--ckpt_path last`` does not repeat its last steps."""

    def on_train_end(self, trainer, pl_module) -> None:
        if self.save_last and not trainer.fast_dev_run and trainer.global_step > 0:
            trainer.save_checkpoint(self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST), self.save_weights_only)


class TrainingCLI(LightningCLI):
    """``LightningCLI`` with the project's checkpointing, random-state and export conventions.

    Args:
        export_folder: a recipe whose system exports once training ends names the default
            folder inside the log folder (``model``, ``prior``): the CLI then takes
            ``--export DIR`` and adds an :class:`ExportPretrained` callback. None: the
            system configures its own export.
        *args, **kwargs: ``LightningCLI``'s; the resolved config is saved over an earlier
            one (``save_config_kwargs={"overwrite": True}``) unless they say otherwise.
    """

    def __init__(self, *args, export_folder: str | None = None, **kwargs) -> None:
        self.export_folder = export_folder
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        if self.export_folder is not None:
            parser.add_argument("--export", type=str | None, default=None,
                                help=f"Folder for the trained model (default: <log_dir>/{self.export_folder}).")

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]):
        callbacks = [*callbacks, RunCommit()]
        if self.export_folder is not None:
            options = self.config_init[self.subcommand] if self.subcommand else self.config_init
            callbacks = [*callbacks, ExportPretrained(options.get("export"), folder=self.export_folder)]
        return super()._instantiate_trainer(config, callbacks)

    def add_default_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_default_arguments_to_parser(parser)
        parser.add_lightning_class_args(StepCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.every_n_train_steps": CHECKPOINT_EVERY,
            "checkpoint.save_last": True,
            "checkpoint.save_top_k": 3,
            "checkpoint.monitor": "step",
            "checkpoint.mode": "max",
        })
        parser.add_lightning_class_args(RankRandomState, "random_state")

    def _parse_ckpt_path(self) -> None:
        """Lightning's step: the model settings a ``--ckpt_path`` file holds replace those of
        the command line and config files (a resumed run builds the model it saved). Here
        the file is read safely first (one sentence if it is not a Lightning checkpoint),
        and each setting it replaces is named in a warning instead of dropped silently."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path == "last":  # the file Lightning will resume from, read the same way
            folder = _checkpoint_folder(self.config[subcommand])
            found = sorted(folder.glob("last*.ckpt"), key=lambda file: file.stat().st_mtime) if folder else []
            path = str(found[-1]) if found else None
        if not path or not Path(path).is_file():
            return
        try:
            checkpoint = read_torch_file(path)
        except CheckpointError as error:
            raise UsageError(f"--ckpt_path {error}") from None
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
            raise UsageError(f"--ckpt_path {path}: is not a Lightning checkpoint (it holds no state_dict).")
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        settings = self.config[subcommand].model.as_dict()
        foreign = sorted(hparams.keys() - settings.keys())
        if foreign and "class_path" not in hparams and "class_path" not in settings:
            named = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise UsageError(f"--ckpt_path {path}: is the checkpoint of another system (its settings {named} "
                             "are not this recipe's).")
        before = _flat(settings)
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        after = _flat(self.config[subcommand].model.as_dict())
        replaced = [f"--model.{key} ({before.get(key)!r} -> {after.get(key)!r})"
                    for key in sorted(before.keys() | after.keys()) if before.get(key) != after.get(key)]
        if replaced:
            rank_zero_warn(f"--ckpt_path {path}: the model's settings are the checkpoint's; it replaces "
                           f"{'; '.join(replaced)}.", category=UserWarning)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.trainer.get("enable_checkpointing") is False:  # Lightning refuses a ModelCheckpoint then
            keys = self._parser(self.subcommand).callback_keys
            if "checkpoint" in keys:
                keys.remove("checkpoint")
        # Folders the trained model goes to, checked before any training rather than after it.
        inputs = _run_inputs(config)
        for option in ("export", "model.export_dir", "trainer.default_root_dir"):
            if config.get(option) is not None:
                check_output_folder(config.get(option), f"--{option}")
                if option != "trainer.default_root_dir":
                    check_not_an_input(config.get(option), inputs)
                    _check_export_holds_no_input(option, config.get(option), inputs)
        interval = config.trainer.get("val_check_interval")
        if interval is not None and not interval > 0:
            raise UsageError(f"--trainer.val_check_interval must be positive, got {interval}.")
        resume = config.get("ckpt_path")
        if resume is not None and resume not in ("last", "best", "hpc", "registry") and not Path(resume).is_file():
            raise UsageError(f"--ckpt_path {resume}: no such checkpoint file.")
        root = Path(config.trainer.get("default_root_dir") or os.getcwd())
        requeued = any(root.glob("hpc_ckpt_*.ckpt"))  # Lightning resumes a requeued Slurm job from these
        if self.subcommand == "fit" and resume is None and not requeued:  # a new run: others' exports stay
            for option in ("export", "model.export_dir"):
                if config.get(option) is not None:
                    _check_export_holds_no_model(option, config.get(option))

    def instantiate_classes(self) -> None:
        """Build the data, the system and the trainer; a setting they refuse (a negative
        rate, an unknown preset) is reported in one line, not as a traceback. The periodic
        checkpoints go to ``<trainer.default_root_dir>/checkpoints`` unless
        ``--checkpoint.dirpath`` says otherwise (set on the callback, not in the saved
        config, so that a run started from another run's ``config.yaml`` writes its own)."""
        try:
            super().instantiate_classes()
        except ClipAudioError:
            raise
        except (ValueError, TypeError, MisconfigurationException) as error:
            reason = " ".join(str(error).split())
            raise UsageError(f"the run cannot be built from its settings: {reason}") from None
        folder = _checkpoint_folder(self.config[self.subcommand] if self.subcommand else self.config)
        for callback in self.trainer.callbacks:
            if isinstance(callback, StepCheckpoint) and callback.dirpath is None and folder is not None:
                callback.dirpath = os.path.realpath(folder)


def _checkpoint_folder(config) -> Path | None:
    """Where the run's periodic checkpoints go (None: checkpointing is off)."""
    if config.trainer.get("enable_checkpointing") is False or config.get("checkpoint") is None:
        return None
    if config.checkpoint.get("dirpath") is not None:
        return Path(config.checkpoint.dirpath)
    return Path(config.trainer.get("default_root_dir") or os.getcwd()) / "checkpoints"


def _check_export_holds_no_input(option: str, folder: str, inputs: dict[str, str]) -> None:
    """Refuse an export folder whose exports would replace a run input: ``--export`` is
    written whole, ``--model.export_dir`` as its ``best/`` and ``last/`` (fine-tuning from
    ``runs/x/best`` with ``--model.export_dir runs/x`` replaced the starting checkpoint).

    Raises:
        UsageError: naming the option, the folder the export writes and the input.
    """
    written = [Path(folder)] if option == "export" else [Path(folder) / "best", Path(folder) / "last"]
    for target in written:
        for name, path in inputs.items():
            if Path(path).resolve().is_relative_to(target.resolve()):
                raise UsageError(f"--{option} {folder}: the export writes {target}, which holds {path}, the input of "
                                 f"{name}; export elsewhere.")


def _check_export_holds_no_model(option: str, folder: str) -> None:
    """Refuse, for a new run, an export folder that holds a model already (another run's,
    or another system's): the run would replace it, found out only once it trained. A
    resumed run (``--ckpt_path``) goes on exporting where it did.

    Raises:
        UsageError: naming the option, the model found and what to do.
    """
    written = [Path(folder)] if option == "export" else [Path(folder) / "best", Path(folder) / "last"]
    for target in written:
        if (target / CONFIG_NAME).is_file():
            try:
                kind = json.loads((target / CONFIG_NAME).read_text())["class"].rpartition(".")[2]
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                kind = "a model"
            raise UsageError(f"--{option} {folder}: {target} holds {kind} already, which this new run would replace; "
                             "export elsewhere, remove it first, or resume its run with --ckpt_path last.")


def _run_inputs(config) -> dict[str, str]:
    """The run's settings that name existing files or folders it reads (``--model.query_encoder``,
    ``--data.pairs``, ...), option -> path: an output must be none of them."""
    inputs: dict[str, str] = {}
    for section in ("model", "data"):
        values = config.get(section)
        for key, value in _flat(values.as_dict() if hasattr(values, "as_dict") else dict(values or {})).items():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str) and item and key != "export_dir" and Path(item).exists():
                    inputs[f"--{section}.{key}"] = item
    return inputs


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as one level of dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``)."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_recipe(main: Callable[[], object], name: str) -> None:
    """Run a recipe's ``main`` and exit; expected failures (bad files, shards, checkpoints,
    values) end the process with one line ``<name>: error: ...`` and status 2, not a
    traceback (:func:`clipcore.errors.report_errors`). A run stopped by SIGTERM (a cluster's
    time limit, ``scancel``) says so and ends with status 130: Lightning ends it as a
    successful exit, which a ``train && evaluate`` chain or a scheduler would take for a
    finished run."""
    try:
        status = report_errors(name, main)
    except SIGTERMException:
        print(f"{name}: stopped by SIGTERM; a training run resumes from its last checkpoint with --ckpt_path last.",
              file=sys.stderr)
        status = EXIT_INTERRUPTED
    sys.exit(status)
