"""``clipsep separate``: inputs, output layout, safe names, overwrite rules, bad input."""

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

import clipsep.batch
from clipcore.audio import save_audio
from clipcore.audio_blocks import StemSpool
from clipcore.naming import safe_filename, slugify, unique_names
from clipcore.query import QueryEncoder
from clipsep.batch import OutputOptions, SeparatorSpec, plan, process_file
from clipsep.cli import main
from clipsep.model import CLIPSep
from clipsep.separate import Separator
from clipsep.separation_record import run_record


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "clipsep"
    Separator(CLIPSep.tiny(query_dim=16), QueryEncoder.tiny(embed_dim=16)).save_pretrained(folder)
    return folder


def _noise(channels, samples, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).normal(0, 0.1, (channels, samples)).astype("float32"))


def _digest(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(checkpoint, *args):
    return main(["separate", "--checkpoint", str(checkpoint), *map(str, args)])


def test_folder_with_good_and_bad_files(checkpoint, tmp_path, capsys):
    stems = tmp_path / "stems"
    save_audio(stems / "Take 1.wav", _noise(2, 50000), 44100)  # stereo, 44.1 kHz
    save_audio(stems / "sub" / "bass.flac", _noise(1, 20000, seed=1), 16000)
    save_audio(stems / "sub" / "take 1.wav", _noise(1, 9000, seed=2), 22050)  # name clash, any case
    (stems / "notes.txt").write_text("not audio, and not searched for")
    (stems / "broken.wav").write_bytes(b"RIFF but not really a wave file")
    sf.write(stems / "empty.wav", np.zeros((0, 1), "float32"), 16000)
    sf.write(stems / "nan.wav", np.array([[0.0], [np.nan], [0.5]] * 100, "float32"), 16000, subtype="FLOAT")
    before = _digest(stems)
    out = tmp_path / "out"

    status = _run(checkpoint, "-q", "playing violin", "--residual", "--format", "flac", "--bit-depth", "24",
                  "-o", out, stems, tmp_path / "missing.wav")
    captured = capsys.readouterr()

    assert status == 1
    assert _digest(stems) == before  # inputs never modified
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    # The failed inputs' claims record why, so that no other process of a run retries them.
    assert [w for w in written if w.startswith(".claims/")] == [".claims/broken.claim", ".claims/empty.claim",
                                                                ".claims/nan.claim"]
    written = [w for w in written if not w.startswith(".claims/")]
    take_dirs = sorted({w.split("/")[0] for w in written if w.lower().startswith("take 1")})
    assert len(take_dirs) == 2 and take_dirs[0].lower() != take_dirs[1].lower()  # no clash, in any case
    assert "bass/playing-violin.flac" in written and "bass/residual.flac" in written
    assert len(written) == 9  # 3 inputs x (2 stems + separation.json)
    info = sf.info(out / "bass" / "playing-violin.flac")
    assert (info.samplerate, info.frames, info.channels, info.subtype) == (16000, 20000, 1, "PCM_24")
    stereo = next(out / d / "playing-violin.flac" for d in take_dirs if sf.info(out / d / "playing-violin.flac").channels == 2)
    assert (sf.info(stereo).samplerate, sf.info(stereo).frames) == (44100, 50000)
    # The summary names every failure with its reason, one line each, and no traceback.
    errors = captured.err
    assert "Traceback" not in errors
    assert "missing.wav: no such file or folder." in errors
    assert "broken.wav: cannot be read as audio" in errors
    assert "empty.wav: contains zero samples." in errors
    assert "nan.wav: contains non-finite samples" in errors
    assert "4 input(s) failed" in errors
    assert "Separated 3 of 7 inputs: 6 files written" in captured.out
    assert not list(out.rglob("*.part"))


def test_overwrite_rules_and_glob(checkpoint, tmp_path, capsys):
    save_audio(tmp_path / "in" / "mix.wav", _noise(1, 30000), 16000)
    out = tmp_path / "out"
    assert _run(checkpoint, "-q", "violin", "-o", out, tmp_path / "in" / "*.wav") == 0
    target = out / "mix" / "violin.wav"
    # A rerun skips an input whose stems and separation.json are all there.
    before = _digest(out)
    assert _run(checkpoint, "-q", "violin", "-o", out, tmp_path / "in" / "mix.wav") == 0
    assert "1 input(s) already separated" in capsys.readouterr().out and _digest(out) == before
    # A file that is not this command's (no separation.json beside it) is never replaced.
    (out / "mix" / "separation.json").unlink()
    target.write_bytes(b"keep me")
    assert _run(checkpoint, "-q", "violin", "-o", out, tmp_path / "in" / "mix.wav") == 2  # its only input failed: nothing done
    assert "already exists (pass --overwrite to replace it)" in capsys.readouterr().err
    assert target.read_bytes() == b"keep me"
    assert _run(checkpoint, "-q", "violin", "-o", out, "--overwrite", tmp_path / "in" / "mix.wav") == 0
    assert sf.info(target).frames == 30000
    # A folder search leaves out the output folder inside it, and so does a glob.
    assert _run(checkpoint, "-q", "violin", "-o", out, "--overwrite", tmp_path) == 0
    assert "Separated 1 of 1 inputs" in capsys.readouterr().out
    assert _run(checkpoint, "-q", "violin", "-o", out, "--overwrite", tmp_path / "**" / "*.wav") == 0
    assert "Separated 1 of 1 inputs" in capsys.readouterr().out
    # Nor is the output folder searched when it is the input folder.
    assert _run(checkpoint, "-q", "violin", "-o", tmp_path / "in", tmp_path / "in") == 2
    assert f"the folder is, or lies inside, the output folder {(tmp_path / 'in').resolve()}, which is not searched " \
        "for inputs; choose another -o." in capsys.readouterr().err
    # An input is never an output, even with --overwrite.
    inside = out / "violin" / "violin.wav"
    save_audio(inside, _noise(1, 5000), 16000)
    before = inside.read_bytes()
    assert _run(checkpoint, "-q", "violin", "-o", out, "--overwrite", inside) == 2  # its only input failed: nothing done
    assert "is the input of the separation; writing it there would destroy it" in capsys.readouterr().err
    assert inside.read_bytes() == before
    # Nor is a folder where a stem would go.
    target.unlink()
    target.mkdir()
    assert _run(checkpoint, "-q", "violin", "-o", out, "--overwrite", tmp_path / "in" / "mix.wav") == 2
    assert f"output {target} is a folder; the stem cannot be written there." in capsys.readouterr().err
    assert target.is_dir() and not any(target.iterdir())


def test_an_input_keeps_its_folder_whatever_else_a_run_takes_in(checkpoint, tmp_path, capsys):
    """An input of a name another input of the run shares (but for case) got a hashed
    folder even where its plain one held its stems from an earlier run, and one alone got
    the plain name though its hashed folder held them: separated again, the earlier folder
    left behind."""
    save_audio(tmp_path / "a" / "Kick.wav", _noise(1, 8000, seed=1), 16000)
    save_audio(tmp_path / "b" / "kick.wav", _noise(1, 8000, seed=2), 16000)
    out = tmp_path / "out"
    assert _run(checkpoint, "-q", "violin", "-o", out, tmp_path / "a") == 0
    capsys.readouterr()
    assert _run(checkpoint, "-q", "violin", "-o", out, tmp_path / "a", tmp_path / "b") == 0
    assert "1 input(s) already separated" in capsys.readouterr().out
    folders = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert len(folders) == 2 and folders[0] == "Kick" and folders[1].startswith("kick-")
    assert _run(checkpoint, "-q", "violin", "-o", out, tmp_path / "b") == 0  # alone: in its hashed folder still
    assert "1 input(s) already separated" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == folders


def test_a_file_this_command_did_not_write_is_refused_at_every_rerun(checkpoint, tmp_path, capsys):
    save_audio(tmp_path / "take.wav", _noise(1, 20000), 16000)
    mine = tmp_path / "out" / "take" / "violin.wav"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's own take")
    for _ in range(3):  # the second run took the first's failure as leave to replace the file
        assert _run(checkpoint, "-q", "violin", "-o", tmp_path / "out", tmp_path / "take.wav") == 2
        assert "already exists (pass --overwrite to replace it)" in capsys.readouterr().err
    assert mine.read_bytes() == b"the user's own take"


def test_a_folder_of_stems_belongs_to_the_input_that_made_it(checkpoint, tmp_path, capsys):
    first, second = tmp_path / "a" / "take.wav", tmp_path / "b" / "take.wav"
    save_audio(first, _noise(1, 20000, seed=1), 16000)
    save_audio(second, _noise(1, 20000, seed=2), 16000)
    out = tmp_path / "out"
    assert _run(checkpoint, "-q", "violin", "-o", out, first) == 0
    capsys.readouterr()
    made = _digest(out / "take")
    # Another input of the same name, later: neither skipped as done nor mixed into a's stems.
    for queries in (["-q", "violin"], ["-q", "tuba"]):
        assert _run(checkpoint, *queries, "-o", out, second) == 2
        assert f"{out / 'take'}/ holds the stems of {first.resolve()}" in capsys.readouterr().err
        assert _digest(out / "take") == made
    # The same input, changed since: not skipped.
    save_audio(first, _noise(1, 20000, seed=3), 16000)
    assert _run(checkpoint, "-q", "violin", "-o", out, first) == 2
    assert "holds the stems of an earlier version of this input" in capsys.readouterr().err
    assert _run(checkpoint, "-q", "violin", "-o", out, "--overwrite", first) == 0
    assert _run(checkpoint, "-q", "violin", "-o", out, first) == 0
    assert "1 input(s) already separated" in capsys.readouterr().out


def test_every_stem_in_a_folder_is_one_the_record_lists(checkpoint, tmp_path, capsys):
    """Other queries into a folder of stems: refused (the new record would not list the earlier
    stems); with --overwrite the earlier separation is replaced, its stems too."""
    save_audio(tmp_path / "take.wav", _noise(1, 20000), 16000)
    out = tmp_path / "out"
    assert _run(checkpoint, "-q", "violin", "-q", "cello", "-o", out, tmp_path / "take.wav") == 0
    made = _digest(out / "take")
    assert _run(checkpoint, "-q", "tuba", "-o", out, tmp_path / "take.wav") == 2
    assert f"{out / 'take'}/ holds stems of an earlier separation that this one would not write (violin.wav, " \
        "cello.wav: other queries or another format)" in capsys.readouterr().err
    assert _digest(out / "take") == made
    assert _run(checkpoint, "-q", "violin", "-o", out, tmp_path / "take.wav") == 0  # a subset: done already
    assert "already separated" in capsys.readouterr().out
    assert _run(checkpoint, "-q", "violin", "-q", "tuba", "-o", out, "--overwrite", tmp_path / "take.wav") == 0
    assert sorted(p.name for p in (out / "take").iterdir()) == ["separation.json", "tuba.wav", "violin.wav"]


def test_a_rerun_asking_for_other_stems_is_refused_not_skipped(checkpoint, tmp_path, capsys):
    """A folder whose stems were made with other queries (the residual is the mixture less
    all of them) or settings is not this run's separation, though its files are all there."""
    save_audio(tmp_path / "take.wav", _noise(2, 20000), 16000)
    out = tmp_path / "out"
    both = ["-q", "violin", "-q", "drums", "--residual", "-o", out]
    assert _run(checkpoint, *both, tmp_path / "take.wav") == 0
    made = _digest(out / "take")
    assert _run(checkpoint, *both, "--batch-size", "2", tmp_path / "take.wav") == 0  # the same samples: done
    assert "already separated" in capsys.readouterr().out
    assert _run(checkpoint, "-q", "drums", "-q", "violin", *both[4:], tmp_path / "take.wav") == 0  # in another order
    assert "already separated" in capsys.readouterr().out
    assert _run(checkpoint, *both, "--mono", tmp_path / "take.wav") == 2
    assert f"{out / 'take'}/ holds stems made with other setting mono (False, now True)" in capsys.readouterr().err
    assert _run(checkpoint, *both, "--overlap", "0.5", tmp_path / "take.wav") == 2
    assert "other setting overlap (0.25, now 0.5)" in capsys.readouterr().err
    assert _run(checkpoint, "-q", "violin", "--residual", "-o", out, tmp_path / "take.wav") == 2
    assert "holds stems of an earlier separation that this one would not write (drums.wav" in capsys.readouterr().err
    assert _digest(out / "take") == made
    (out / "take" / "drums.wav").unlink()  # the residual is still the mixture less violin and drums
    assert _run(checkpoint, "-q", "violin", "--residual", "-o", out, tmp_path / "take.wav") == 2
    assert "holds stems made with other queries ('violin', 'drums', now 'violin')" in capsys.readouterr().err
    assert _run(checkpoint, "-q", "violin", "--residual", "--mono", "--overwrite", "-o", out, tmp_path / "take.wav") == 0
    assert sf.info(out / "take" / "residual.wav").channels == 1
    assert sorted(p.name for p in (out / "take").iterdir()) == ["residual.wav", "separation.json", "violin.wav"]


def test_stems_appear_with_their_record_or_not_at_all(checkpoint, tmp_path, monkeypatch):
    save_audio(tmp_path / "take.wav", _noise(1, 20000), 16000)
    spec = SeparatorSpec(str(checkpoint))
    separator = spec.load("cpu")
    options = OutputOptions(provenance=run_record([("text", "violin")], separator, checkpoint, {}))
    [job] = plan([tmp_path / "take.wav"], tmp_path / "out", ["violin"], options, noise_heads=0)

    def interrupted(*args, **kwargs):  # Ctrl-C while the input's sha256 is read for the record
        raise KeyboardInterrupt

    monkeypatch.setattr("clipsep.batch.write_record", interrupted)
    with pytest.raises(KeyboardInterrupt):
        process_file(job, separator, separator.encode_queries(["violin"]), options)
    assert not [path for path in (tmp_path / "out").rglob("*") if path.is_file()]


def test_an_interrupted_overwrite_leaves_the_earlier_separation_as_it_was(checkpoint, tmp_path, monkeypatch):
    """With --overwrite, the new stems replace the old ones together with their record, or
    not at all: Ctrl-C while the second stem is converted, or while the record is written,
    leaves the folder as the earlier run made it."""
    save_audio(tmp_path / "take.wav", _noise(1, 20000), 16000)
    out = tmp_path / "out"
    assert _run(checkpoint, "-q", "violin", "-q", "drums", "-o", out, tmp_path / "take.wav") == 0
    made = _digest(out)
    separator = SeparatorSpec(str(checkpoint)).load("cpu")
    queries = [("text", "violin"), ("text", "cello")]
    options = OutputOptions(overwrite=True, provenance=run_record(queries, separator, checkpoint, {}))
    [job] = plan([tmp_path / "take.wav"], out, ["violin", "cello"], options, noise_heads=0)
    embeddings = separator.encode_queries(["violin", "cello"])
    stage = StemSpool.stage

    def interrupted_at_cello(spool, *args):
        if spool.path.name == "cello.wav":
            raise KeyboardInterrupt
        return stage(spool, *args)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    for name, stand_in in (("clipcore.audio_blocks.StemSpool.stage", interrupted_at_cello),
                           ("clipsep.batch.write_record", interrupted)):
        with monkeypatch.context() as patch:
            patch.setattr(name, stand_in)
            with pytest.raises(KeyboardInterrupt):
                process_file(job, separator, embeddings, options)
        assert _digest(out) == made
    write_record = clipsep.batch.write_record

    def ctrl_c_once_written(*args):  # a real signal, held until the stems are in place with their record
        write_record(*args)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr("clipsep.batch.write_record", ctrl_c_once_written)
    with pytest.raises(KeyboardInterrupt):
        process_file(job, separator, embeddings, options)
    assert sorted(p.name for p in (out / "take").iterdir()) == ["cello.wav", "separation.json", "violin.wav"]
    assert [stem["file"] for stem in json.loads((out / "take" / "separation.json").read_text())["stems"].values()] \
        == ["violin.wav", "cello.wav"]


def test_a_failed_write_is_one_sentence_and_leaves_no_file(checkpoint, tmp_path):
    """A stem that cannot be written (here: larger than the process may write, as a full disk
    refuses it; libsndfile says "System error." of both) fails its input in one sentence,
    not as an internal error, and leaves nothing behind."""
    import resource
    import signal

    save_audio(tmp_path / "take.wav", _noise(2, 80000), 16000)  # its float spools: 640 kB each

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write beyond the limit fails instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    run = subprocess.run([sys.executable, "-m", "clipsep.cli", "separate", "--checkpoint", str(checkpoint), "-q",
                          "violin", "-o", str(tmp_path / "out"), str(tmp_path / "take.wav")],
                         capture_output=True, text=True, preexec_fn=limited, timeout=300)
    assert run.returncode == 2, run.stderr
    assert f"{tmp_path / 'out' / 'take' / 'violin.wav'}: cannot be written (System error)" in run.stderr
    assert "internal error" not in run.stderr and "Traceback" not in run.stderr
    assert not [path for path in (tmp_path / "out").rglob("*") if path.is_file() and ".claims" not in path.parts]


def test_query_names_stay_inside_and_distinct(checkpoint, tmp_path, capsys):
    save_audio(tmp_path / "mix.wav", _noise(1, 20000), 16000)
    red = tmp_path / "red car.png"
    Image.new("RGB", (20, 20), (255, 0, 0)).save(red)
    queries = ["../../escape", "/etc/passwd", "..", "Violin", "violin", "residual", "a\\b:c*?", "x" * 300]
    args = [a for q in queries for a in ("-q", q)]
    out = tmp_path / "out"
    assert _run(checkpoint, *args, "--query-image", red, "--residual", "-o", out, tmp_path / "mix.wav") == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) == len(queries) + 3  # + image query + residual + separation.json
    assert {p.parent for p in files} == {out / "mix"}
    assert all(len(p.name) < 100 for p in files)
    assert (out / "mix" / "residual.wav").is_file() and (out / "mix" / "image-red-car.wav").is_file()
    assert not list(tmp_path.parent.glob("escape*"))


def test_naming_helpers_on_hostile_text():
    hostile = ["..", ".", "../..", "a/../b", "C:\\x", "\x00\x1f", "", " ", "小提琴", "con", "é" * 400, "-.-"]
    for text in hostile:
        for name in (slugify(text), safe_filename(text)):
            assert name and name not in (".", "..") and ".." not in name
            assert "/" not in name and "\\" not in name and "\x00" not in name
            assert len(name.encode()) < 255 and Path(name).name == name
    names = unique_names(["violin", "violin", "Violin", "residual"], ["a", "b", "c", "d"], reserved=["residual"])
    assert len({n.lower() for n in names}) == 4 and "residual" not in names
    assert slugify("y" * 200) != slugify("y" * 199) and len(slugify("y" * 200)) <= 80


@pytest.mark.parametrize(
    "args, message",
    [
        (["-q", "  "], "the query text is empty"),
        ([], "give at least one --query"),
        (["--query-image", "{tmp}/nope.png"], "nope.png: no such image file"),
        (["--query-image", "{tmp}/bad.png"], "bad.png: cannot be read as an image"),
        (["-q", "x", "--format", "flac", "--bit-depth", "32f"], "32f needs --format wav"),
        (["-q", "x", "--overlap", "0.7"], "--overlap must be between 0 and 0.5"),
        (["-q", "x", "--segment", "1e9"], "--segment must be above 0 and at most 600 seconds, got 1000000000.0."),
        (["--query-image", ""], "--query-image: the path is empty."),
        (["-q", "x", "--mask-power", "0"], "--mask-power must be a positive finite number, got 0.0."),
        (["-q", "x", "--mask-power", "nan"], "--mask-power must be a positive finite number, got nan."),
        (["-q", "x", "--mask-power", "2", "--binary"], "--mask-power shapes soft masks; binary masks have no power."),
        (["-q", "x", "--template", "a photo"], "--template: prompt template 'a photo' has no '{}' for the query text"),
        (["-q", "x", "--template", "{}{}"], "--template: prompt template '{}{}' can hold the query text only in {}"),
        (["-q", "x", "--template", "{} {x}"], "can hold the query text only in {}"),
    ],
)
def test_bad_queries_and_values(checkpoint, tmp_path, capsys, args, message):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    save_audio(tmp_path / "mix.wav", _noise(1, 1000), 16000)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert _run(checkpoint, *args, "-o", tmp_path / "out", tmp_path / "mix.wav") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists()


def test_an_output_folder_that_cannot_be_one_is_refused_before_any_work(checkpoint, tmp_path, capsys):
    save_audio(tmp_path / "mix.wav", _noise(1, 1000), 16000)
    (tmp_path / "file").write_text("keep me")
    for out, message in ((tmp_path / "file", f"-o {tmp_path / 'file'}: is a file, not a folder."),
                         (tmp_path / "file" / "out", f"-o {tmp_path / 'file' / 'out'}: lies below the file "
                                                     f"{tmp_path / 'file'}, not a folder.")):
        assert _run(checkpoint, "-q", "x", "-o", out, tmp_path / "mix.wav") == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"clipsep separate: error: {message}"]
    assert (tmp_path / "file").read_text() == "keep me"


def test_wrong_checkpoint_is_one_line_in_a_fresh_process(checkpoint, tmp_path):
    save_audio(tmp_path / "mix.wav", _noise(1, 1000), 16000)
    result = subprocess.run(
        [sys.executable, "-m", "clipsep.cli", "separate", "--checkpoint", str(checkpoint / "query_encoder"),
         "-q", "violin", str(tmp_path / "mix.wav")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"clipsep separate: error: {checkpoint / 'query_encoder'} holds a clipcore.query.QueryEncoder "
        "checkpoint, not a clipsep.model.CLIPSep."
    ]


def test_stems_beyond_full_scale_are_rescaled_by_default(checkpoint, tmp_path):
    loud = tmp_path / "loud.wav"
    save_audio(loud, 30 * _noise(1, 16000), 16000, bit_depth="32f")  # peaks near 12, kept by 32-bit float
    written = {}
    for mode in ("none", "rescale"):
        args = ["--clip-mode", mode] if mode != "rescale" else []  # rescale is the default
        assert _run(checkpoint, "-q", "violin", "--residual", "--bit-depth", "32f", *args, "-o", tmp_path / mode,
                    loud) == 0
        written[mode], _ = sf.read(str(tmp_path / mode / "loud" / "residual.wav"), dtype="float32")
    peak = abs(written["none"]).max()
    assert peak > 1
    assert written["rescale"] == pytest.approx(written["none"] / (1.01 * peak), abs=1e-6)
