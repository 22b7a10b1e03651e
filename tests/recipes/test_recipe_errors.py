"""Training recipes report expected failures in one line, not a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipcore.errors import ClipAudioError

ROOT = Path(__file__).resolve().parents[2]


def test_missing_shards_give_one_line_and_a_failing_status(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "train_clipsep.py"), "fit",
         "--config", str(ROOT / "recipes" / "configs" / "clipsep" / "toy.yaml"), "--model.query_encoder", "null",
         "--data.train_shards", str(tmp_path / "none-*.tar"), "--data.val_shards", str(tmp_path / "none-*.tar"),
         "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 2  # bad input: clipcore.errors.EXIT_BAD_INPUT
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"train_clipsep: error: no shards match {tmp_path}/none-*.tar."


@pytest.mark.parametrize("args, message", [
    (["--model.preset", "nope"], "the run cannot be built from its settings: preset must be one of paper, tiny, not 'nope'."),
    (["--trainer.max_steps", "-5"], "the run cannot be built from its settings: `max_steps` must be a non-negative"),
    (["--model.export_dir", "{tmp}/notes.txt"], "--model.export_dir {tmp}/notes.txt: is a file, not a folder."),
    (["--ckpt_path", "{tmp}/none.ckpt"], "--ckpt_path {tmp}/none.ckpt: no such checkpoint file."),
    (["--ckpt_path", "{tmp}/notes.txt"], "--ckpt_path {tmp}/notes.txt: is not a PyTorch weights file, or holds "
                                         "Python objects besides tensors (which are never unpickled here)."),
    (["--ckpt_path", "{tmp}/tensor.ckpt"], "--ckpt_path {tmp}/tensor.ckpt: is not a Lightning checkpoint (it holds no "
                                           "state_dict)."),
    (["--ckpt_path", "{tmp}/prior.ckpt"], "--ckpt_path {tmp}/prior.ckpt: is the checkpoint of another system (its "
                                          "settings embed_dim, prior_args are not this recipe's)."),
    (["--trainer.val_check_interval", "0"], "--trainer.val_check_interval must be positive, got 0."),
    (["--model.learning_rate", "-1"], "the run cannot be built from its settings: learning_rate must be a positive "
                                      "number, got -1.0."),
    (["--model.decay_multiplier", "-0.5"], "the run cannot be built from its settings: decay_multiplier must lie in "
                                           "(0, 1], got -0.5."),
    (["--model.query_encoder", "{tmp}/encoder", "--model.export_dir", "{tmp}/encoder"],
     "{tmp}/encoder: is the input of --model.query_encoder; writing it there would destroy it."),
    (["--model.query_encoder", "{tmp}/exports/last/encoder", "--model.export_dir", "{tmp}/exports"],
     "--model.export_dir {tmp}/exports: the export writes {tmp}/exports/last, which holds {tmp}/exports/last/encoder, "
     "the input of --model.query_encoder; export elsewhere."),
    (["--model.query_encoder", "{tmp}/no_encoder"], "{tmp}/no_encoder: no such query encoder folder."),
    (["--model.query_encoder", "ViT-Q-99/openai"], "ViT-Q-99/openai: no such query encoder folder, nor an open_clip "
                                                   "ARCH/TAG name (open_clip has no model 'ViT-Q-99')."),
    (["--model.query_encoder", "ViT-B-32=/no/weights.bin"], "/no/weights.bin: no such open_clip weights file."),
])
def test_settings_the_run_cannot_use_are_refused_before_training(tmp_path, args, message):
    from recipes.train_clipsep import main  # in this process: a recipe's start-up is seconds

    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "encoder").mkdir()
    (tmp_path / "exports" / "last" / "encoder").mkdir(parents=True)
    torch.save(torch.zeros(2), tmp_path / "tensor.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": {"embed_dim": 8, "prior_args": {}}}, tmp_path / "prior.ckpt")
    argv = ["fit", "--config", str(ROOT / "recipes/configs/clipsep/toy.yaml"), "--model.query_encoder", "null",
            "--trainer.default_root_dir", str(tmp_path / "run"), *[a.format(tmp=tmp_path) for a in args]]
    with pytest.raises(ClipAudioError) as raised:
        main(argv)
    assert str(raised.value).startswith(message.format(tmp=tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "keep me" and not (tmp_path / "run" / "checkpoints").exists()


def test_a_segment_shorter_than_the_models_window_is_refused_before_training(tmp_path):
    from clipcore.synthetic import write_toy_shards
    from recipes.train_clipsep import main

    write_toy_shards(tmp_path / "shards", 2, seed=0, duration=1.0, frame_size=32)
    shards = str(tmp_path / "shards" / "*.tar")
    with pytest.raises(ClipAudioError) as raised:
        main(["fit", "--config", str(ROOT / "recipes/configs/clipsep/toy.yaml"), "--model.query_encoder", "null",
              "--data.train_shards", shards,
              "--data.val_shards", shards, "--data.in_memory", "false", "--data.segment_samples", "100",
              "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.logger", "false"])
    assert str(raised.value) == "data.segment_samples 100 is shorter than one STFT window of the model (1024 samples)."
    assert not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(ClipAudioError) as raised:  # a ValueError traceback at the first step before
        main(["fit", "--config", str(ROOT / "recipes/configs/clipsep/toy.yaml"), "--model.query_encoder", "null",
              "--data.train_shards", shards, "--data.val_shards", shards, "--data.in_memory", "false",
              "--data.segment_samples", "16000", "--trainer.default_root_dir", str(tmp_path / "run"),
              "--trainer.logger", "false"])
    assert str(raised.value) == ("data.segment_samples 16000 gives 63 STFT frames, not a multiple of 32 for the model's "
                                 "U-Net; use k * 32 * 256 - 1 samples (16383, say).")
