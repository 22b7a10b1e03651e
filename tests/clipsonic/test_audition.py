"""The generation page's work (:class:`clipsonic.audition.AuditionGenerator`), without a
browser: its clips are the API's, and bad values are one sentence."""

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from clipcore.audio import save_audio
from clipcore.errors import ClipAudioError
from clipcore.prior import DiffusionPrior
from clipcore.query import QueryEncoder
from clipcore.synthetic import render_frame
from clipsonic.audition import AuditionGenerator
from clipsonic.generate import Generator
from clipsonic.model import CLIPSonic


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clipsonic") / "ckpt"
    CLIPSonic.tiny(seed=0).save_pretrained(folder)
    QueryEncoder.tiny(seed=0).save_pretrained(folder / "query_encoder")
    return folder


@pytest.mark.parametrize("mode", ["zs", "pd", "image"])
def test_the_page_clips_are_the_generators(checkpoint, tmp_path, mode):
    DiffusionPrior.tiny(seed=0).save_pretrained(tmp_path / "prior")
    generator = Generator.from_pretrained(checkpoint, prior=tmp_path / "prior")
    Image.fromarray(render_frame("harp", 0, 48)).save(tmp_path / "harp.png")
    image = str(tmp_path / "harp.png") if mode == "image" else None
    clips = AuditionGenerator(generator, tmp_path / "work").generate("a harp", image, mode, 3, 2.0, 5, 2, 0.5)
    query = {"image": Image.open(tmp_path / "harp.png").convert("RGB")} if mode == "image" else {"text": "a harp"}
    expected = generator.generate(**query, mode=mode, steps=3, guidance=2.0, seed=5, num_samples=2, duration=0.5)
    name = "harp" if mode == "image" else "a harp"
    assert [clip.title for clip in clips] == [f"{name} ({label}, seed {s})" for s in (5, 6) for label in
                                              [{"zs": "text, zero-shot", "pd": "text through the prior",
                                                "image": "image"}[mode]]]
    for k, clip in enumerate(clips):
        written, rate = sf.read(clip.audio, dtype="float32")
        reference = save_audio(tmp_path / f"reference-{k}.wav", expected.waveforms[0, k], expected.sample_rate,
                               clip="rescale")
        assert rate == expected.sample_rate and len(written) == round(0.5 * rate)
        np.testing.assert_array_equal(written, sf.read(reference, dtype="float32")[0])
        assert clip.image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_values_are_one_sentence(checkpoint, tmp_path):
    audition = AuditionGenerator(Generator.from_pretrained(checkpoint), tmp_path / "work")
    assert audition.modes == ["image", "zs"]  # no prior, no "pd"
    cases = [(("violin", None, "pd", 3, 2.0, 0, 1, 1.0), "mode 'pd' is not available here; choose one of image, zs."),
             (("violin", None, "image", 3, 2.0, 0, 1, 1.0), "image mode needs an image query."),
             ((" ", None, "zs", 3, 2.0, 0, 1, 1.0), "text, zero-shot needs a text prompt."),
             (("violin", None, "zs", 2.5, 2.0, 0, 1, 1.0), "steps must be a whole number, got 2.5."),
             (("violin", None, "zs", 3, float("nan"), 0, 1, 1.0), "guidance must be a finite number, got nan."),
             (("violin", None, "zs", 3, 2.0, 0, None, 1.0), "clips must be a whole number, got None."),
             (("violin", None, "zs", 3, 2.0, 0, 1, 0.0), "duration must be above 0 and at most 600 seconds, not 0.")]
    for arguments, message in cases:
        with pytest.raises(ClipAudioError) as error:
            audition.generate(*arguments)
        assert str(error.value) == message
    assert not (tmp_path / "work").exists()


def test_a_restarted_page_on_the_same_work_dir_keeps_the_earlier_clips(checkpoint, tmp_path):
    generator = Generator.from_pretrained(checkpoint)
    first = AuditionGenerator(generator, tmp_path / "work").generate("a harp", None, "zs", 2, 2.0, 0, 2, 0.25)
    kept = {clip.audio: clip.audio.read_bytes() for clip in first}
    again = AuditionGenerator(generator, tmp_path / "work").generate("a drum", None, "zs", 2, 2.0, 7, 1, 0.25)
    assert again[0].audio == tmp_path / "work" / "run-2" / "clip-1.wav"  # run-1's clip-1 was replaced
    assert {path: path.read_bytes() for path in kept} == kept


def test_the_page_is_bound_to_this_machine_on_port_7860_by_default():
    from clipcore.cli import build_parser
    from clipsonic.cli import COMMANDS, DESCRIPTION

    args = build_parser("clipsonic", DESCRIPTION, COMMANDS).parse_args(["audition", "--checkpoint", "ckpt"])
    assert (args.host, args.port, args.work_dir, args.device) == ("127.0.0.1", 7860, None, "auto")


@pytest.mark.parametrize("options, message", [  # each served the page (or was blamed on the port) before
    (["--work-dir", "{tmp}/afile"], "--work-dir {tmp}/afile: is a file, not a folder."),
    (["--prior", "{tmp}/nope"], "{tmp}/nope: is neither a prior checkpoint"),
    (["--query-encoder", "{tmp}/nope"], "{tmp}/nope: no such query encoder folder."),
    (["--host", ""], "--host: the address is empty."),
    (["--port", "0"], "--port must be between 1 and 65535, got 0."),
    (["--host", "bogus.invalid"], "--host bogus.invalid --port 7860: cannot serve there"),  # "blamed on the port"
])
def test_options_that_cannot_serve_are_refused_before_the_page_starts(checkpoint, tmp_path, capsys, options, message):
    from clipsonic.cli import main

    (tmp_path / "afile").write_text("keep me")
    code = main(["audition", "--checkpoint", str(checkpoint), *[o.format(tmp=tmp_path) for o in options]])
    captured = capsys.readouterr()
    assert code == 2 and message.format(tmp=tmp_path) in captured.err and "Serving on" not in captured.out
    assert (tmp_path / "afile").read_text() == "keep me"


def test_a_port_in_use_is_refused_before_the_page_starts(checkpoint, capsys):
    import socket

    from clipsonic.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["audition", "--checkpoint", str(checkpoint), "--port", str(port)]) == 2
    captured = capsys.readouterr()
    assert f"--host 127.0.0.1 --port {port}: cannot serve there (Address already in use)." in captured.err
    assert "Serving on" not in captured.out
