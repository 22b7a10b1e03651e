"""The recipes' periodic checkpoints (``TrainingCLI``'s ``--checkpoint.*``): the
``save_top_k`` newest are kept, older ones are deleted, and ``last.ckpt`` stays."""

import pytest
from lightning.pytorch.demos.boring_classes import BoringModel

from clipcore.training import TrainingCLI


def _fit(root, *extra):
    TrainingCLI(BoringModel, args=[
        "fit", "--trainer.max_steps", "6", "--trainer.limit_val_batches", "0", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(root),
        "--checkpoint.every_n_train_steps", "1", *extra,
    ])
    return sorted(path.name for path in (root / "checkpoints").iterdir())


@pytest.mark.parametrize("keep, expected_steps", [(None, [4, 5, 6]), ("1", [6]), ("4", [3, 4, 5, 6])])
def test_the_newest_save_top_k_checkpoints_are_kept_with_last(tmp_path, monkeypatch, keep, expected_steps):
    monkeypatch.setattr("sys.argv", ["train"])  # the arguments are the test's, not pytest's
    saved = _fit(tmp_path, *(["--checkpoint.save_top_k", keep] if keep else []))  # None: the default, 3
    assert saved == sorted([f"epoch=0-step={step}.ckpt" for step in expected_steps] + ["last.ckpt"])
