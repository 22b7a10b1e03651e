"""recipes/train_prior.py: LightningCLI runs from precomputed pairs and from shards."""

import importlib.util
import runpy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from clipcore.miniature import world
from clipcore.prior import DiffusionPrior
from clipcore.prior_pairs import load_pairs, save_pairs
from clipcore.query import QueryEncoder

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "train_prior.py"
TOY = ROOT / "recipes" / "configs" / "prior" / "toy.yaml"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def _recipe():
    spec = importlib.util.spec_from_file_location("train_prior_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pairs(path, rows=512, dim=32):
    generator = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(rows, dim, generator=generator), dim=-1)
    image = F.normalize(text.flip(-1) + 0.05 * torch.randn(rows, dim, generator=generator), dim=-1)
    save_pairs(path, text, image)


def test_fit_from_precomputed_pairs_exports_a_prior_with_provenance(tmp_path):
    _pairs(tmp_path / "pairs.npz")
    cli = _recipe().main([
        "fit", "--config", str(TOY), "--data.shards", "null", "--data.encoder", "null", "--data.cache", "null",
        "--data.captions", "null", "--data.pairs", f"[{tmp_path / 'pairs.npz'}]", "--data.val_fraction", "0.1",
        "--data.batch_size", "64", "--trainer.max_steps", "12", "--trainer.val_check_interval", "6",
        "--trainer.default_root_dir", str(tmp_path / "runs"), *QUIET,
    ])
    log_dir = Path(cli.trainer.log_dir)
    config = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert config["model"]["embed_dim"] == 32 and config["seed_everything"] == 0
    prior = DiffusionPrior.load(log_dir / "prior", embed_dim=32)
    assert prior.provenance["global_step"] == 12 and "git_commit" in prior.provenance
    assert prior.provenance["run_config"]["data"]["batch_size"] == 64
    assert {"val/loss", "val/cosine_prior", "val/cosine_text"} <= set(cli.trainer.callback_metrics)
    # The data statistics were measured, not left at their initial values.
    assert not torch.equal(prior.text_std, torch.ones_like(prior.text_std))


def test_fit_from_toy_shards_computes_and_caches_pairs(tmp_path):
    encoder = QueryEncoder.tiny(seed=0)
    encoder.save_pretrained(tmp_path / "clip")
    world.write_shards(tmp_path / "shards", 4, "train", shard_size=2, duration=2.0, frame_size=32)
    cache = tmp_path / "pairs.npz"
    _recipe().main([
        "fit", "--config", str(TOY), "--data.shards", str(tmp_path / "shards"), "--data.encoder",
        str(tmp_path / "clip"), "--data.cache", str(cache), "--data.val_fraction", "0",
        "--trainer.max_steps", "3", "--export", str(tmp_path / "prior"),
        "--trainer.default_root_dir", str(tmp_path / "runs"), *QUIET,
    ])
    text, image = load_pairs(cache)
    captions = len(world.captions("accordion"))  # the toy config's captions: the miniature world's
    assert text.shape == (4 * 2 * captions, 32)  # clips x frames x captions
    first = world.INSTRUMENTS[0]  # clip 0 of every split
    assert torch.allclose(text[0], encoder.encode_text([world.captions(first)[0]], templates="{}")[0], atol=1e-5)
    assert DiffusionPrior.load(tmp_path / "prior", embed_dim=encoder.embed_dim).provenance["global_step"] == 3


def test_bad_input_exits_with_one_line(tmp_path, monkeypatch, capsys):
    _pairs(tmp_path / "pairs.npz", dim=16)
    (tmp_path / "truncated.npz").write_bytes((tmp_path / "pairs.npz").read_bytes()[:1000])
    for bad, named, extra in ((tmp_path / "missing.npz", "missing.npz", []), (tmp_path / "pairs.npz", "16-d", []),
                              (tmp_path / "truncated.npz", "truncated.npz: cannot be read as a pairs file", []),
                              (tmp_path / "pairs.npz", "templates: prompt template '{}{}' can hold the query text "
                               "only in {}", ["--data.templates", '["{}{}"]']),
                              (tmp_path / "pairs.npz", "batch_size must be a whole number of at least 1, got 0",
                               ["--data.batch_size", "0"]),
                              (tmp_path / "pairs.npz", "learning_rate must be a positive number, got -1.0",
                               ["--model.learning_rate", "-1"])):
        monkeypatch.setattr(sys, "argv", [
            str(RECIPE), "fit", "--config", str(TOY), "--data.shards", "null", "--data.cache", "null",
            "--data.pairs", f"[{bad}]", "--trainer.max_steps", "1", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger", "false", *QUIET, *extra,
        ])
        with pytest.raises(SystemExit) as exit_info:  # as `python recipes/train_prior.py ...` runs it
            runpy.run_path(str(RECIPE), run_name="__main__")
        stderr = capsys.readouterr().err
        message = stderr.strip().splitlines()[-1]
        assert exit_info.value.code == 2 and "Traceback" not in stderr
        assert message.startswith("train_prior: error: ") and named in message
        assert not (tmp_path / "prior").exists()
