"""The quick start's step 4 chooses CLIPSonic's guidance on clips of the validation split
that are not the test's: the text modes ask the same held-out prompts on both splits, so
only the seed keeps the validation clips from being the test clips themselves. And the
CLIPSep it trains depends on the CPU."""

import subprocess
from pathlib import Path

import pytest
import yaml

from clipcore.miniature import world
from recipes import quickstart
from recipes.miniature_eval import Queries
from recipes.quickstart import MODES, PROFILES, generate, validation_generations


def _queries(folder: Path) -> Queries:
    instruments = list(world.INSTRUMENTS)
    return Queries(instruments, {name: folder / f"{name}.png" for name in instruments}, [], 16000)


def _without_output(command: list[str]) -> list[str]:
    at = command.index("-o")
    return command[:at] + command[at + 2:]


def test_validation_generations_differ_from_the_test_generations_in_every_mode(tmp_path):
    profile = PROFILES["demo"]
    runs = validation_generations(tmp_path, profile, _queries(tmp_path / "validation"))
    assert {(guidance, mode) for guidance, mode, _, _ in runs} == {
        (g, m) for g in profile.guidance_choices for m in MODES}
    test_queries = _queries(tmp_path / "test")
    for guidance, mode, command, files in runs:
        test_command, test_files = generate(tmp_path, profile, test_queries, tmp_path / "generated" / mode, mode,
                                            guidance)
        assert _without_output(command) != _without_output(test_command), (mode, guidance)
        assert not {f for paths in files.values() for f in paths} & {f for paths in test_files.values() for f in paths}


@pytest.mark.parametrize("amx", [True, False])
def test_clipsep_trains_wider_in_bf16_and_fewer_steps_only_where_the_cpu_has_amx(tmp_path, monkeypatch, amx):
    monkeypatch.setattr(quickstart, "_bf16_in_hardware", lambda: amx)
    profile = PROFILES["demo"]
    shards = {split: str(tmp_path / split / "*.tar") for split in ("train", "validation")}
    command = quickstart.clipsep_command(tmp_path, profile, shards, tmp_path / "clipsep")
    resolved = subprocess.run(command + ["--print_config"], capture_output=True, text=True, check=True).stdout
    config = yaml.safe_load(resolved)
    width = profile.clipsep_amx_width if amx else profile.clipsep_width
    steps = profile.clipsep_amx_steps if amx else profile.clipsep_steps
    assert profile.clipsep_amx_width != profile.clipsep_width and profile.clipsep_amx_steps != profile.clipsep_steps
    assert config["model"]["model_args"]["base_channels"] == config["model"]["model_args"]["mask_channels"] == width
    assert config["trainer"]["max_steps"] == config["model"]["decay_steps"] == steps
    assert config["trainer"]["val_check_interval"] == config["data"]["epoch_length"] == steps // 4
    assert config["trainer"]["precision"] == ("bf16-mixed" if amx else None)
    assert config["data"]["in_memory"] is True
    assert config["data"]["distinct_queries"] == profile.clipsep_distinct_queries is not None


def test_zero_shot_text_keeps_the_networks_masks_and_queries_in_image_space_are_sharpened(tmp_path):
    profile = PROFILES["demo"]
    commands, _ = quickstart.test_separations(tmp_path, _queries(tmp_path / "test"), profile)
    separations = {name: command for name, command, _ in commands if name.startswith("separate_")}
    powers = {name: float(command[command.index("--mask-power") + 1]) for name, command in separations.items()}
    assert powers == {"separate_image": profile.mask_power, "separate_text": profile.mask_power_zero_shot,
                      "separate_text_prior": profile.mask_power, "separate_text_gap": profile.mask_power}
    assert profile.mask_power > profile.mask_power_zero_shot == 1.0
    assert {float(command[command.index("--overlap") + 1]) for command in separations.values()} == {profile.overlap}


def test_each_separation_waits_for_the_models_it_reads(tmp_path):
    commands, _ = quickstart.test_separations(tmp_path, _queries(tmp_path / "test"), PROFILES["demo"])
    needs = {name: set(wants) for name, _, wants in commands}
    assert needs == {"measure_gap": {"train_prior"}, "separate_image": {"train_clipsep"},
                     "separate_text": {"train_clipsep"}, "separate_text_prior": {"train_clipsep", "train_prior"},
                     "separate_text_gap": {"train_clipsep", "measure_gap"}}
