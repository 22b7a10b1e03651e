"""README: the order in which ``Separator`` and ``Generator`` find their parts.

Separator: ``--query-encoder``, then ``CHECKPOINT/query_encoder/``, then the encoder the
checkpoint's provenance records. Generator: query encoder argument, then
``CHECKPOINT/query_encoder/``, then the encoder recorded at training time; prior argument,
then ``CHECKPOINT/prior/``; vocoder argument, then ``CHECKPOINT/vocoder/``, then
Griffin-Lim. Every part below is a distinct random model, told apart by its outputs.
"""

import pytest
import torch

from clipcore.checkpoint import CheckpointError
from clipcore.prior import DiffusionPrior
from clipcore.query import QueryEncoder
from clipsep.model import CLIPSep
from clipsep.separate import Separator
from clipsonic.generate import GenerationError, Generator
from clipsonic.model import CLIPSonic
from clipsonic.vocoder import GriffinLim, HiFiGAN
from tests.clipsonic.test_vocoder import SMALL

TEXT = ["a violin"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    for seed in (1, 2, 3):
        QueryEncoder.tiny(seed=seed).save_pretrained(root / f"encoder{seed}")
    for seed in (1, 2):
        DiffusionPrior.tiny(seed=seed).save_pretrained(root / f"prior{seed}")
        torch.manual_seed(seed)
        HiFiGAN(**SMALL).save_pretrained(root / f"vocoder{seed}")
    return root


def _text(folder):
    return QueryEncoder.load(folder).encode_text(TEXT)


def test_separator_query_encoder_order(parts, tmp_path):
    model = CLIPSep.tiny(query_dim=32)
    model.provenance = {"query_encoder": str(parts / "encoder3")}
    Separator(model, QueryEncoder.load(parts / "encoder2")).save_pretrained(tmp_path / "ckpt")  # writes query_encoder/
    cases = [
        (Separator.load(tmp_path / "ckpt", query_encoder=str(parts / "encoder1")), "encoder1"),  # the argument
        (Separator.load(tmp_path / "ckpt"), "encoder2"),  # then the folder's query_encoder/
    ]
    model.save_pretrained(tmp_path / "recorded")  # no query_encoder/: the provenance's
    cases.append((Separator.load(tmp_path / "recorded"), "encoder3"))
    texts = [_text(parts / f"encoder{seed}") for seed in (1, 2, 3)]
    assert all(not torch.allclose(a, b, atol=1e-3) for a, b in ((texts[0], texts[1]), (texts[1], texts[2]), (texts[0], texts[2])))
    for separator, expected in cases:
        torch.testing.assert_close(separator.query_encoder.encode_text(TEXT), _text(parts / expected))
    CLIPSep.tiny(query_dim=32).save_pretrained(tmp_path / "bare")  # none of the three: an error saying so
    with pytest.raises(CheckpointError, match="names no query encoder"):
        Separator.load(tmp_path / "bare")


def test_generator_query_encoder_prior_and_vocoder_order(parts, tmp_path):
    folder = tmp_path / "clipsonic"
    CLIPSonic.tiny(seed=0, query_encoder=str(parts / "encoder3")).save_pretrained(folder)
    recorded = Generator.from_pretrained(folder)  # nothing beside the model
    torch.testing.assert_close(recorded.query_encoder().encode_text(TEXT), _text(parts / "encoder3"))
    assert isinstance(recorded.vocoder, GriffinLim) and not recorded.has_prior
    with pytest.raises(GenerationError, match="prior"):
        recorded.embed(text=TEXT, mode="pd")

    QueryEncoder.load(parts / "encoder2").save_pretrained(folder / "query_encoder")
    DiffusionPrior.load(parts / "prior2").save_pretrained(folder / "prior")
    HiFiGAN.load(parts / "vocoder2").save_pretrained(folder / "vocoder")
    defaults = Generator.from_pretrained(folder)
    overrides = Generator.from_pretrained(folder, query_encoder=parts / "encoder1", prior=parts / "prior1",
                                          vocoder=parts / "vocoder1")
    mel = torch.randn(1, 64, 10, generator=torch.Generator().manual_seed(0)) - 4
    for generator, seed in ((defaults, 2), (overrides, 1)):
        encoder = QueryEncoder.load(parts / f"encoder{seed}")
        torch.testing.assert_close(generator.query_encoder().encode_text(TEXT), encoder.encode_text(TEXT))
        prior = DiffusionPrior.load(parts / f"prior{seed}")
        expected = prior.sample(encoder.encode_text(TEXT), generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(generator.embed(text=TEXT, mode="pd", seed=5), expected)
        with torch.no_grad():
            torch.testing.assert_close(generator.vocoder(mel), HiFiGAN.load(parts / f"vocoder{seed}")(mel))
    griffin = Generator.from_pretrained(folder, vocoder="griffinlim")  # a name overrides the folder too
    assert isinstance(griffin.vocoder, GriffinLim)
