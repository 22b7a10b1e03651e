"""The separation page's work (:class:`clipsep.audition.AuditionSeparator`), without a browser:
it writes what ``clipsep separate`` writes, and bad input is one sentence."""

import json
import zipfile

import numpy as np
import pytest
import soundfile as sf
import torch

from clipcore.audio import save_audio
from clipcore.errors import ClipAudioError, UsageError
from clipcore.modality_gap import ModalityGap
from clipcore.prior import DiffusionPrior
from clipcore.query import QueryEncoder
from clipsep.audition import AuditionSeparator
from clipsep.batch import SeparatorSpec
from clipsep.cli import main
from clipsep.model import CLIPSep
from clipsep.separate import Separator


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("audition")
    torch.manual_seed(0)
    encoder = QueryEncoder.tiny(embed_dim=16)
    Separator(CLIPSep.tiny(query_dim=16), encoder).save_pretrained(root / "clipsep")
    DiffusionPrior.tiny(embed_dim=16, seed=0).save_pretrained(root / "prior")
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ModalityGap.measure(encoder.encode_image(images), encoder.encode_text(["cello", "flute", "drum"])).save(root / "gap.json")
    rng = np.random.default_rng(0)
    save_audio(root / "in" / "take 1.wav", torch.from_numpy(rng.normal(0, 0.1, (2, 30000)).astype("float32")), 22050)
    (root / "in" / "broken.wav").write_bytes(b"RIFF, but not a wave file")
    return root


def _samples(folder):
    return {path.relative_to(folder).as_posix(): sf.read(path, dtype="float32")[0]
            for path in sorted(folder.rglob("*.wav"))}


@pytest.mark.parametrize("text_mode", ["zs", "pd", "gap"])
def test_the_page_writes_what_clipsep_separate_writes(folders, tmp_path, text_mode):
    checkpoint, mix = folders / "clipsep", folders / "in" / "take 1.wav"
    separator = SeparatorSpec(str(checkpoint), mask_power=1.5).load("cpu")
    audition = AuditionSeparator(separator, checkpoint, tmp_path / "work", prior=folders / "prior", prior_seed=3,
                                 gap=folders / "gap.json")
    assert audition.text_modes == ["gap", "pd", "zs"]  # the default first, as clipsonic audition
    fractions = []
    view = audition.separate([str(mix)], "playing violin\n\ndrums\nplaying violin\n", [], text_mode,
                             lambda fraction, name: fractions.append((fraction, name)))
    options = {"zs": [], "pd": ["--prior", str(folders / "prior"), "--prior-seed", "3"],
               "gap": ["--gap", str(folders / "gap.json")]}[text_mode]
    assert main(["separate", "--checkpoint", str(checkpoint), "-q", "playing violin", "-q", "drums", "--residual",
                 *options, "--mask-power", "1.5", "--device", "cpu", "-o", str(tmp_path / "cli"), str(mix)]) == 0
    page, cli = _samples(tmp_path / "work" / "run-1" / "stems"), _samples(tmp_path / "cli")
    assert sorted(page) == ["take 1/drums.wav", "take 1/playing-violin.wav", "take 1/residual.wav"] == sorted(cli)
    for name in page:
        np.testing.assert_array_equal(page[name], cli[name])
    record = json.loads((tmp_path / "work" / "run-1" / "stems" / "take 1" / "separation.json").read_text())
    expected = json.loads((tmp_path / "cli" / "take 1" / "separation.json").read_text())
    assert record["queries"] == expected["queries"] and record["checkpoint"] == expected["checkpoint"]
    assert record["settings"]["prior"] == expected["settings"]["prior"]
    assert record["settings"]["gap"] == expected["settings"]["gap"]
    assert record["settings"]["mask_power"] == expected["settings"]["mask_power"] == 1.5
    assert [(v.source, v.name) for v in view.stems] == [("take 1.wav", n) for n in ("playing-violin", "drums", "residual")]
    assert all(v.image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for v in view.stems)
    with zipfile.ZipFile(view.archive) as archive:
        assert sorted(archive.namelist()) == sorted([*page, "take 1/separation.json"])
    assert view.summary == "Separated 1 of 1 inputs."
    assert fractions[-1] == (pytest.approx(1.0), "take 1.wav") and [f for f, _ in fractions] == sorted(f for f, _ in fractions)


def test_a_bad_file_fails_alone_and_bad_queries_are_one_sentence(folders, tmp_path):
    checkpoint = folders / "clipsep"
    audition = AuditionSeparator(SeparatorSpec(str(checkpoint)).load("cpu"), checkpoint, tmp_path / "work")
    files = [str(folders / "in" / "broken.wav"), str(folders / "in" / "take 1.wav")]
    view = audition.separate(files, "cello", [])
    lines = view.summary.splitlines()
    assert lines[0] == "Separated 1 of 2 inputs." and lines[1].startswith("broken.wav: cannot be read as audio")
    assert len(view.stems) == 2  # cello and the residual of the good file
    nothing = audition.separate(files[:1], "cello", [])
    assert nothing.stems == [] and nothing.archive is None
    (tmp_path / "broken.png").write_bytes(b"not an image")
    cases = [(([], "cello", []), "drop one or more audio files to separate."),
             ((files, " \n ", []), "give at least one text query or image query."),
             ((files, "cello", [], "pd"), "this page was started without --prior, so text queries cannot go through "
                                          "the diffusion prior."),
             ((files, "cello", [], "gap"), "this page was started without --gap, so text queries cannot go across "
                                           "the modality gap."),
             ((files, "", [str(tmp_path / "broken.png")]), f"{tmp_path / 'broken.png'}")]
    for arguments, message in cases:
        with pytest.raises(ClipAudioError) as error:
            audition.separate(*arguments)
        assert str(error.value).startswith(message) and "\n" not in str(error.value)
        assert isinstance(error.value, UsageError) or "broken.png" in message
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["run-1"]  # failed and refused runs leave nothing


def test_a_restarted_page_on_the_same_work_dir_starts_a_new_run(folders, tmp_path):
    checkpoint = folders / "clipsep"
    separator = SeparatorSpec(str(checkpoint)).load("cpu")
    first, restarted = (AuditionSeparator(separator, checkpoint, tmp_path / "work") for _ in range(2))
    save_audio(tmp_path / "other.wav", torch.zeros(1, 8000) + 0.1, 16000)
    first.separate([str(folders / "in" / "take 1.wav")], "cello", [])
    view = restarted.separate([str(tmp_path / "other.wav")], "cello", [])  # was run-1 again: "already exists"
    assert view.summary == "Separated 1 of 1 inputs." and view.archive.parent == tmp_path / "work" / "run-2"
    with zipfile.ZipFile(view.archive) as archive:  # only this run's stems
        assert sorted(archive.namelist()) == ["other/cello.wav", "other/residual.wav", "other/separation.json"]


def test_the_page_is_bound_to_this_machine_on_port_7860_by_default():
    from clipcore.cli import build_parser
    from clipsep.cli import COMMANDS, DESCRIPTION

    args = build_parser("clipsep", DESCRIPTION, COMMANDS).parse_args(["audition", "--checkpoint", "ckpt"])
    assert (args.host, args.port, args.work_dir, args.device) == ("127.0.0.1", 7860, None, "auto")
    assert args.mask_power == 1.0


def test_a_bad_mask_power_is_refused_before_the_page_starts(folders, capsys):
    assert main(["audition", "--checkpoint", str(folders / "clipsep"), "--mask-power", "-1"]) == 2
    assert capsys.readouterr().err.strip() == ("clipsep audition: error: --mask-power must be a positive finite number, "
                                               "got -1.0.")
