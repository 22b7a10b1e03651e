"""Text queries through the diffusion prior: ``Separator(prior=...)`` and ``clipsep separate --prior``."""

import json

import numpy as np
import pytest
import torch

from clipcore.audio import save_audio
from clipcore.checkpoint import CheckpointError
from clipcore.prior import DiffusionPrior
from clipcore.query import QueryEncoder
from clipsep.cli import main
from clipsep.model import CLIPSep
from clipsep.separate import QueryError, Separator

D = 16


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prior")
    prior = DiffusionPrior.tiny(embed_dim=D, seed=3)
    prior.save_pretrained(folder / "prior")
    return CLIPSep.tiny(query_dim=D, seed=0), QueryEncoder.tiny(embed_dim=D), prior, folder


def test_text_goes_through_the_prior_image_does_not(parts):
    model, encoder, prior, _ = parts
    plain = Separator(model, encoder)
    with_prior = Separator(model, encoder, prior=prior, prior_seed=7)
    text = encoder.encode_text(["cello"])
    expected = prior.sample(text, generator=[torch.Generator().manual_seed(7)])
    got = with_prior.encode_queries(["cello"])
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, plain.encode_queries(["cello"]), atol=1e-3)  # the prior moved it
    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(with_prior.embed_images(image), plain.embed_images(image))


def test_with_prior_shares_the_model_and_leaves_the_separator_as_it_was(parts):
    model, encoder, prior, folder = parts
    plain = Separator(model, encoder, segment=1.0, overlap=0.3, batch_size=2)
    derived = plain.with_prior(folder / "prior", prior_seed=7)
    direct = Separator(model, encoder, segment=1.0, overlap=0.3, batch_size=2, prior=prior, prior_seed=7)
    wave = torch.randn(1, 40000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(derived.separate(wave, 16000, ["cello"]).stems, direct.separate(wave, 16000, ["cello"]).stems)
    assert derived.model is plain.model and plain.queries.prior is None
    assert not torch.allclose(plain.encode_queries(["cello"]), derived.encode_queries(["cello"]), atol=1e-3)
    with pytest.raises(QueryError, match="raw"):
        Separator(model, encoder, normalize_queries=False).with_prior(prior)


def test_a_query_does_not_depend_on_the_others(parts):
    model, encoder, prior, _ = parts
    separator = Separator(model, encoder, prior=prior)
    alone = separator.encode_queries(["drum"])[0]
    for queries, position in ((["flute", "drum"], 1), (["flute", "cello", "harp", "drum"], 3)):
        torch.testing.assert_close(separator.encode_queries(queries)[position], alone)


def test_prior_is_refused_where_it_cannot_work(parts, tmp_path):
    model, encoder, prior, folder = parts
    with pytest.raises(QueryError, match="raw"):
        Separator(model, encoder, prior=prior, normalize_queries=False)
    with pytest.raises(CheckpointError, match="32-d"):
        Separator(model, encoder, prior=DiffusionPrior.tiny(embed_dim=32))
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        Separator(model, encoder, prior=tmp_path)  # not a prior folder


def test_cli_prior_writes_stems_and_records_it(parts, tmp_path, capsys):
    model, encoder, prior, folder = parts
    Separator(model, encoder).save_pretrained(tmp_path / "ckpt")
    mix = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, (1, 16000)).astype("float32"))
    save_audio(tmp_path / "mix.wav", mix, 16000)
    out = tmp_path / "out"
    args = ["separate", "--checkpoint", str(tmp_path / "ckpt"), "-q", "cello", str(tmp_path / "mix.wav"), "-o"]
    assert main([*args, str(out), "--prior", str(folder / "prior"), "--prior-seed", "5"]) == 0
    record = json.loads((out / "mix" / "separation.json").read_text())
    assert record["settings"]["prior"] == {"path": str((folder / "prior").resolve()), "seed": 5}
    assert main([*args, str(tmp_path / "plain")]) == 0
    assert json.loads((tmp_path / "plain" / "mix" / "separation.json").read_text())["settings"]["prior"] is None
    assert (out / "mix" / "cello.wav").exists()
    assert main([*args, str(tmp_path / "bad"), "--prior", str(tmp_path / "ckpt")]) == 2
    assert str(tmp_path / "ckpt") in capsys.readouterr().err
