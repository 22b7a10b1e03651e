"""Text queries carried across the modality gap: ``Separator(gap=...)`` and ``clipsep separate --gap``."""

import json
import re

import numpy as np
import pytest
import torch

from clipcore.audio import save_audio
from clipcore.modality_gap import ModalityGap, ModalityGapError
from clipcore.prior import DiffusionPrior
from clipcore.query import QueryEncoder
from clipsep.cli import main
from clipsep.model import CLIPSep
from clipsep.separate import QueryError, Separator

D = 16


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gap")
    encoder = QueryEncoder.tiny(embed_dim=D)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    gap = ModalityGap.measure(encoder.encode_image(images), encoder.encode_text(["cello", "flute", "drum"]))
    gap.save(folder / "gap.json")
    return CLIPSep.tiny(query_dim=D, seed=0), encoder, gap, folder


def test_text_is_carried_across_the_gap_and_images_are_not(parts):
    model, encoder, gap, folder = parts
    plain, crossing = Separator(model, encoder), Separator(model, encoder, gap=folder / "gap.json")
    text = plain.encode_queries(["cello", "harp"])
    torch.testing.assert_close(crossing.encode_queries(["cello", "harp"]), gap.cross(text))
    derived = plain.with_gap(folder / "gap.json")
    assert derived.model is plain.model and plain.queries.gap is None
    torch.testing.assert_close(derived.encode_queries(["cello", "harp"]), gap.cross(text))
    assert not torch.allclose(crossing.encode_queries(["cello"]), text[:1], atol=1e-3)
    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(crossing.embed_images(image), plain.embed_images(image))


def test_the_gap_is_refused_where_it_cannot_work(parts, tmp_path):
    model, encoder, gap, _ = parts
    with pytest.raises(QueryError, match="raw"):
        Separator(model, encoder, gap=gap, normalize_queries=False)
    with pytest.raises(QueryError, match="prior"):
        Separator(model, encoder, gap=gap, prior=DiffusionPrior.tiny(embed_dim=D))
    with pytest.raises(QueryError, match="prior"):
        Separator(model, encoder, gap=gap).with_prior(DiffusionPrior.tiny(embed_dim=D))
    with pytest.raises(QueryError, match="prior"):
        Separator(model, encoder, prior=DiffusionPrior.tiny(embed_dim=D)).with_gap(gap)
    wide = ModalityGap(torch.zeros(32), torch.zeros(32), torch.eye(32)[:1], torch.ones(1), torch.ones(1))
    with pytest.raises(ModalityGapError, match="32-d"):
        Separator(model, encoder, gap=wide)
    wide.save(tmp_path / "wide.json")
    with pytest.raises(ModalityGapError, match=f"^{re.escape(str(tmp_path / 'wide.json'))}: .*32-d"):
        Separator(model, encoder, gap=tmp_path / "wide.json")
    with pytest.raises(ModalityGapError, match="nowhere.json"):
        Separator(model, encoder, gap=tmp_path / "nowhere.json")


def test_cli_gap_writes_stems_and_records_it(parts, tmp_path, capsys):
    model, encoder, _, folder = parts
    Separator(model, encoder).save_pretrained(tmp_path / "ckpt")
    mix = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, (1, 16000)).astype("float32"))
    save_audio(tmp_path / "mix.wav", mix, 16000)
    args = ["separate", "--checkpoint", str(tmp_path / "ckpt"), "-q", "cello", str(tmp_path / "mix.wav"), "-o"]
    assert main([*args, str(tmp_path / "out"), "--gap", str(folder / "gap.json")]) == 0
    record = json.loads((tmp_path / "out" / "mix" / "separation.json").read_text())
    assert record["settings"]["gap"] == str((folder / "gap.json").resolve())
    assert (tmp_path / "out" / "mix" / "cello.wav").exists()
    capsys.readouterr()
    assert main([*args, str(tmp_path / "both"), "--gap", str(folder / "gap.json"), "--prior", str(folder)]) == 2
    assert "--gap and --prior" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "bad"), "--gap", str(tmp_path / "mix.wav")]) == 2
    assert str(tmp_path / "mix.wav") in capsys.readouterr().err and not (tmp_path / "bad").exists()
