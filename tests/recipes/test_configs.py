"""Every config in ``recipes/configs/`` parses with its recipe (keys and types checked by
LightningCLI against the classes' signatures), and the embedding names the paper configs
read from shards are the names their query encoders give."""

from pathlib import Path

import pytest
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
    recipe = RECIPES[system]
    own = [k for k, v in vars(recipe).items() if isinstance(v, type) and issubclass(v, TrainingCLI)
           and v.__module__ == recipe.__name__]  # the recipe's own CLI subclass, if it has one
    cli_name = own[0] if own else "TrainingCLI"
    monkeypatch.setattr(recipe, cli_name, _parse_only(getattr(recipe, cli_name)))
    cli = recipe.main(["fit", "--config", str(CONFIGS / system / f"{name}.yaml")])
    parsed = cli.config["fit"].as_dict()
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
