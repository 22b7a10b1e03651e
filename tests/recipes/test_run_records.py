"""What a training run leaves: its own checkpoints (also when started from another run's
saved config), the git commit of its code, and an exported model even without validation;
``--ckpt_path last`` is read as safely as a named checkpoint file."""

import shutil

import pytest
import torch
import yaml

from clipcore.checkpoint import git_commit
from clipcore.errors import ClipAudioError
from recipes.train_clipsep import main as train_main
from tests.recipes.scaleout_helpers import clipsep_args, toy_shards


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    encoder = toy_shards(root / "shards", clips=4, shard_size=4)
    args = clipsep_args(str(root / "shards" / "*.tar"), encoder, root / "first", root / "records",
                        "--data.epoch_length", "2", "--trainer.max_steps", "2",
                        "--model.export_dir", str(root / "first" / "export"))
    train_main(args)
    return root, encoder


def test_a_run_from_another_runs_saved_config_writes_its_own_checkpoints(first_run, tmp_path):
    root, _ = first_run
    [config] = (root / "first" / "lightning_logs").glob("version_*/config.yaml")
    assert yaml.safe_load(config.read_text())["checkpoint"]["dirpath"] is None  # it held first/checkpoints
    first_last = (root / "first" / "checkpoints" / "last.ckpt").read_bytes()
    first_files = sorted((root / "first" / "checkpoints").iterdir())
    cli = train_main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "second"),
                      "--model.export_dir", str(tmp_path / "second" / "export"), "--trainer.max_steps", "1"])
    assert cli.trainer.global_step == 1
    assert (tmp_path / "second" / "checkpoints" / "last.ckpt").is_file()
    assert (root / "first" / "checkpoints" / "last.ckpt").read_bytes() == first_last
    assert sorted((root / "first" / "checkpoints").iterdir()) == first_files


def test_the_git_commit_goes_with_every_checkpoint_and_the_runs_hyperparameters(first_run):
    root, _ = first_run
    commit = git_commit()
    checkpoint = torch.load(root / "first" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert "git_commit" in checkpoint and checkpoint["git_commit"] == commit
    [hparams] = (root / "first" / "lightning_logs").glob("version_*/hparams.yaml")
    assert yaml.safe_load(hparams.read_text())["git_commit"] == commit


def test_validating_a_checkpoint_exports_nothing_and_records_the_commit(first_run, tmp_path):
    """`validate` scores a checkpoint: it wrote a step-0 model over the training's export
    (and a run folder's `pretrained/last`), and its hyperparameters named no commit."""
    root, _ = first_run
    [config] = (root / "first" / "lightning_logs").glob("version_*/config.yaml")
    exported = {p: p.read_bytes() for p in (root / "first" / "export").rglob("*") if p.is_file()}
    cli = train_main(["validate", "--config", str(config), "--ckpt_path", str(root / "first" / "checkpoints" / "last.ckpt"),
                      "--data.val_shards", str(root / "shards" / "*.tar"), "--trainer.limit_val_batches", "1",
                      "--trainer.default_root_dir", str(tmp_path)])
    assert "val/loss" in cli.trainer.callback_metrics
    assert {p: p.read_bytes() for p in (root / "first" / "export").rglob("*") if p.is_file()} == exported
    assert not list(tmp_path.rglob("config.json"))
    [hparams] = tmp_path.glob("lightning_logs/version_*/hparams.yaml")
    assert yaml.safe_load(hparams.read_text())["git_commit"] == git_commit()


def test_a_new_run_does_not_export_over_another_runs_models(first_run, tmp_path, capsys):
    """A new run whose export folder holds a model (another run's, or another system's)
    is refused before it trains; it replaced that model silently once it had trained."""
    from clipcore.errors import report_errors

    root, encoder = first_run
    export = root / "first" / "export"
    exported = {p: p.read_bytes() for p in export.rglob("*") if p.is_file()}
    args = clipsep_args(str(root / "shards" / "*.tar"), encoder, tmp_path / "second", tmp_path / "records",
                        "--trainer.max_steps", "1", "--model.export_dir", str(export))
    assert report_errors("train_clipsep", lambda: train_main(args)) == 2
    assert (f"--model.export_dir {export}: {export / 'last'} holds CLIPSep already, which this new run would "
            "replace; export elsewhere") in capsys.readouterr().err
    assert {p: p.read_bytes() for p in export.rglob("*") if p.is_file()} == exported
    assert not (tmp_path / "second").exists()


def test_a_run_without_validation_still_exports_its_last_model(first_run):
    root, _ = first_run
    export = root / "first" / "export"
    assert sorted(p.name for p in export.iterdir()) == ["last"]  # no best/: nothing was validated
    assert (export / "last" / "config.json").is_file() and (export / "last" / "model.safetensors").is_file()


def test_ckpt_path_last_is_read_as_a_named_file_is(first_run, tmp_path):
    root, encoder = first_run
    shutil.copytree(root / "first" / "checkpoints", tmp_path / "run" / "checkpoints")
    args = clipsep_args(str(root / "shards" / "*.tar"), encoder, tmp_path / "run", tmp_path / "records",
                        "--data.epoch_length", "2", "--trainer.max_steps", "3", "--ckpt_path", "last")
    # Other model settings on the command line: the checkpoint's win, named (a state_dict traceback before).
    with pytest.warns(UserWarning, match=r"it replaces .*--model\.model_args\.base_channels \(16 -> None\)"):
        cli = train_main([*args, "--model.model_args.base_channels", "16"])
    assert cli.trainer.global_step == 3
    # The last checkpoint of another system: one sentence.
    torch.save({"state_dict": {}, "hyper_parameters": {"embed_dim": 8, "prior_args": {}}},
               tmp_path / "run" / "checkpoints" / "last.ckpt")
    with pytest.raises(ClipAudioError, match=r"run/checkpoints/last\.ckpt: is the checkpoint of another system"):
        train_main(args)
