"""Text carried across the modality gap: ``Generator(gap=...)``, ``clipsonic generate --gap``
and the audition page's ``gap`` mode."""

import pytest
import soundfile as sf
import torch

from clipcore.modality_gap import ModalityGap
from clipcore.prior import DiffusionPrior
from clipcore.query import QueryEncoder
from clipsonic.audition import AuditionGenerator
from clipsonic.cli import main
from clipsonic.generate import GenerationError, Generator
from clipsonic.model import CLIPSonic


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A checkpoint with its query encoder and prior, and the encoder's gap in ``gap.json``."""
    root = tmp_path_factory.mktemp("sonic_gap")
    CLIPSonic.tiny(seed=0).save_pretrained(root / "ckpt")
    encoder = QueryEncoder.tiny(seed=0)
    encoder.save_pretrained(root / "ckpt" / "query_encoder")
    DiffusionPrior.tiny(seed=0).save_pretrained(root / "ckpt" / "prior")
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    gap = ModalityGap.measure(encoder.encode_image(images), encoder.encode_text(["cello", "flute", "drum"]))
    gap.save(root / "gap.json")
    return root


def test_gap_mode_conditions_on_the_crossed_text_and_is_the_default_with_a_gap(folder):
    gap = ModalityGap.load(folder / "gap.json")
    generator = Generator.from_pretrained(folder / "ckpt", gap=folder / "gap.json")
    zs = generator.embed(text=["a cello", "a harp"], mode="zs")
    crossed = generator.embed(text=["a cello", "a harp"], mode="gap")
    torch.testing.assert_close(crossed, gap.cross(zs))
    assert not torch.allclose(crossed, zs, atol=1e-3)
    assert generator.text_modes == ["gap", "pd", "zs"]
    torch.testing.assert_close(generator.embed(text=["a cello"]), crossed[:1])  # the default text mode
    plain = Generator.from_pretrained(folder / "ckpt")
    assert plain.text_modes == ["pd", "zs"]
    with pytest.raises(GenerationError, match="gap"):
        plain.embed(text="a cello", mode="gap")


def test_a_gap_that_does_not_fit_is_refused_in_one_sentence(folder, tmp_path):
    wide = ModalityGap(torch.zeros(16), torch.zeros(16), torch.eye(16)[:1], torch.ones(1), torch.ones(1))
    with pytest.raises(GenerationError, match="16-d"):
        Generator.from_pretrained(folder / "ckpt", gap=wide)
    (tmp_path / "old.json").write_text('{"format": "clipaudio.modality_gap", "version": 1}')
    with pytest.raises(GenerationError, match="old.json"):
        Generator.from_pretrained(folder / "ckpt", gap=tmp_path / "old.json")


def test_cli_gap_mode_writes_what_the_generator_makes(folder, tmp_path):
    settings = ["--steps", "2", "--duration", "0.3", "--bit-depth", "32f", "--clip-mode", "none", "--seed", "4"]
    out = tmp_path / "out"
    code = main(["generate", "--checkpoint", str(folder / "ckpt"), "a cello", "--gap", str(folder / "gap.json"),
                 *settings, "-o", str(out)])
    assert code == 0
    written, _ = sf.read(str(out / "a-cello.wav"), dtype="float32")
    generator = Generator.from_pretrained(folder / "ckpt", gap=folder / "gap.json")
    expected = generator.generate(text="a cello", mode="gap", steps=2, duration=0.3, seed=4).waveforms[0, 0]
    torch.testing.assert_close(torch.from_numpy(written), expected, atol=1e-5, rtol=0)
    zero_shot = generator.generate(text="a cello", mode="zs", steps=2, duration=0.3, seed=4).waveforms[0, 0]
    assert not torch.allclose(zero_shot, expected, atol=1e-3)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gap", "{root}/gap.json", "--mode", "pd"], "--gap goes with --mode gap (or no --mode), not --mode pd."),
        (["--gap", "{root}/gap.json", "--prior", "{root}/ckpt/prior"], "--gap and --prior"),
        (["--gap", "{root}/nothing.json"], "{root}/nothing.json"),
        (["--mode", "gap"], "--mode gap needs --gap FILE"),
        (["--mode", "gap", "--gap", "{root}/gap.json", "--image", "{root}/gap.json"], "not --image"),
    ],
)
def test_cli_gap_misuse_is_one_line_and_nothing_written(folder, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    code = main(["generate", "--checkpoint", str(folder / "ckpt"), "a cello", "--steps", "1", "--duration", "0.2",
                 "-o", str(out), *[a.format(root=folder) for a in args]])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "generating" not in line]
    assert code == 2
    assert len(err) == 1 and message.format(root=folder) in err[0]
    assert not out.exists()


def test_the_audition_page_offers_the_gap_only_with_one(folder, tmp_path):
    with_gap = AuditionGenerator(Generator.from_pretrained(folder / "ckpt", gap=folder / "gap.json"), tmp_path)
    assert with_gap.modes == ["image", "zs", "pd", "gap"]
    assert AuditionGenerator(Generator.from_pretrained(folder / "ckpt"), tmp_path).modes == ["image", "zs", "pd"]
    clips = with_gap.generate("a cello", None, "gap", 2, 3.0, 0, 1, 0.2)
    assert len(clips) == 1 and "across the modality gap" in clips[0].title and clips[0].audio.exists()
