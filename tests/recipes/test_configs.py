"""Every config in ``recipes/configs/`` parses with its recipe (keys and types checked by
LightningCLI against the classes' signatures), the embedding names the paper configs
read from shards are the names their query encoders give, and the configs hold the
settings the README states (the published ones, the fine-tuning preset, CLIPSonic's)."""

from pathlib import Path

import pytest
import torch
import yaml

import recipes.train_clipsep
import recipes.train_clipsonic
import recipes.train_prior
from clipcore.training import TrainingCLI

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "configs"
RECIPES = {"clipsep": recipes.train_clipsep, "clipsonic": recipes.train_clipsonic, "prior": recipes.train_prior}


def _parse_only(base: type) -> type:
    """The recipe's CLI class up to a parsed, type-checked config: nothing is built or run."""
    return type("ParseOnly", (base,), {"instantiate_classes": lambda self: None,
                                       "_run_subcommand": lambda self, subcommand: None})


def _parsed(system: str, name: str, monkeypatch) -> dict:
    """The config as its recipe parses it, defaults of the classes' signatures included."""
    recipe = RECIPES[system]
    own = [k for k, v in vars(recipe).items() if isinstance(v, type) and issubclass(v, TrainingCLI)
           and v.__module__ == recipe.__name__]  # the recipe's own CLI subclass, if it has one
    cli_name = own[0] if own else "TrainingCLI"
    monkeypatch.setattr(recipe, cli_name, _parse_only(getattr(recipe, cli_name)))
    return recipe.main(["fit", "--config", str(CONFIGS / system / f"{name}.yaml")]).config["fit"].as_dict()


def _contains(parsed, written) -> bool:
    """Whether every value written in the file arrived in the parsed config (which adds defaults)."""
    if isinstance(written, dict):
        return all(key in parsed and _contains(parsed[key], value) for key, value in written.items())
    if isinstance(written, list):
        return isinstance(parsed, list) and len(parsed) == len(written) and all(map(_contains, parsed, written))
    return parsed == written


def test_every_config_is_tested():
    found = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml"))
    assert found == sorted(f"{system}/{name}.yaml" for system, name in CASES)


CASES = [(system, path.stem) for system in RECIPES for path in sorted((CONFIGS / system).glob("*.yaml"))]


@pytest.mark.parametrize("system, name", CASES)
def test_config_parses_with_its_recipe(system, name, monkeypatch):
    parsed = _parsed(system, name, monkeypatch)
    written = yaml.safe_load((CONFIGS / system / f"{name}.yaml").read_text())
    assert written and all(_contains(parsed[key], value) for key, value in written.items())


@pytest.mark.parametrize("system", ["clipsep", "clipsonic"])
def test_paper_configs_read_the_embeddings_their_query_encoder_names(system):
    from clipcore.naming import slugify

    for name in ("music", "vggsound"):
        config = yaml.safe_load((CONFIGS / system / f"{name}.yaml").read_text())
        spec, stored = config["model"]["query_encoder"], config["data"]["encoder"]
        arch, tag = spec.split("/")
        assert stored == slugify(f"clip-{arch}-{tag}"), (name, spec, stored)


@pytest.mark.parametrize("name", ["music", "vggsound"])
def test_clipsep_paper_configs_hold_the_published_settings(name, monkeypatch):
    """README: CLIPSep-NIT with 2 noise heads, a global batch of 32, Adam 1e-3, 5k warm-up
    steps, linear decay to 0.1x at 100k, gradient clipping 1.0, 200k steps, 65,535-sample
    segments at 16 kHz, 3 query frames. The optimizer and schedule are the system's own,
    built from the parsed config (the paper network: 30,292,771 parameters)."""
    from clipsep.system import CLIPSepSystem

    config = _parsed("clipsep", name, monkeypatch)
    trainer, data = config["trainer"], config["data"]
    assert (trainer["max_steps"], trainer["gradient_clip_val"]) == (200_000, 1.0)
    assert (data["num_sources"], data["segment_samples"], data["sample_rate"], data["query_frames"]) == (2, 65535, 16000, 3)
    assert data["batch_size"] * int(trainer.get("accumulate_grad_batches") or 1) == 32
    system = CLIPSepSystem(**config["model"])
    assert system.model.num_noise_heads == 2 and sum(p.numel() for p in system.model.parameters()) == 30_292_771
    optimizers = system.configure_optimizers()
    optimizer, schedule = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    assert type(optimizer) is torch.optim.Adam and optimizer.param_groups[0]["initial_lr"] == 1e-3
    multipliers = [schedule.lr_lambdas[0](step) for step in (0, 4999, 5000, 52_500, 100_000, 200_000)]
    assert multipliers == pytest.approx([1 / 5000, 1.0, 1.0, 0.55, 0.1, 0.1])


def test_finetune_preset_and_clipsonic_configs_hold_the_documented_settings(monkeypatch):
    """README: the fine-tuning preset is Adam at 1e-4, 200 warm-up steps, linear decay to
    0.1x over 5,000 steps, batch 8, validation (and so export) every 500 steps. CLIPSonic:
    condition dropout 0.1, v-prediction, one query frame and no mixing; Min-SNR-gamma 5 in
    toy.yaml and off in the paper configs."""
    finetune = _parsed("clipsep", "finetune", monkeypatch)
    model = finetune["model"]
    assert (model["learning_rate"], model["warmup_steps"], model["decay_steps"], model["decay_multiplier"]) == (
        1e-4, 200, 5000, 0.1)
    assert (finetune["trainer"]["max_steps"], finetune["trainer"]["val_check_interval"]) == (5000, 500)
    assert finetune["data"]["batch_size"] == 8
    for name, gamma in (("toy", 5.0), ("music", None), ("vggsound", None)):
        config = _parsed("clipsonic", name, monkeypatch)
        model, data = config["model"], config["data"]
        assert (model["condition_dropout"], model["prediction_type"], model["snr_gamma"]) == (0.1, "v_prediction",
                                                                                              gamma), name
        assert (data["num_sources"], data["query_frames"]) == (1, 1), name
