"""The quick start's step 4 chooses CLIPSonic's guidance on clips of the validation split
that are not the test's: the text modes ask the same held-out prompts on both splits, so
only the seed keeps the validation clips from being the test clips themselves."""

from pathlib import Path

from clipcore.miniature import world
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
