import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from scipy import signal

from clipcore.prior import DiffusionPrior
from clipcore.query import QueryEncoder
from clipcore.synthetic import render_frame
from clipsonic.cli import main
from clipsonic.model import CLIPSonic
from clipsonic.vocoder import HiFiGAN


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model_only = root / "model_only"
    CLIPSonic.tiny(seed=0).save_pretrained(model_only)
    QueryEncoder.tiny(seed=0).save_pretrained(root / "query_encoder")
    full = root / "full"
    CLIPSonic.tiny(seed=0).save_pretrained(full)
    QueryEncoder.tiny(seed=0).save_pretrained(full / "query_encoder")
    DiffusionPrior.tiny(seed=0).save_pretrained(full / "prior")
    Image.fromarray(render_frame("harp", 0, 48)).save(root / "harp.png")
    (root / "broken.png").write_bytes(b"not an image")
    (root / "prompts.txt").write_text("the sound of a bell\n\n  a drum  \n")
    HiFiGAN(model_in_dim=80, upsample_initial_channel=32, resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1]]).save_pretrained(root / "vocoder80")
    return root


def test_generate_writes_16_bit_files_of_the_requested_duration(folders, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([
        "generate", "--checkpoint", str(folders / "full"), "a flute", "A flute!", "../../etc/passwd",
        "--prompts-file", str(folders / "prompts.txt"), "--image", str(folders / "harp.png"),
        "-n", "2", "--duration", "0.45", "--steps", "2", "--seed", "3", "-o", str(out),
    ])
    assert code == 0, capsys.readouterr().err
    files = sorted(out.iterdir())
    # 5 text prompts (the two flutes are distinct prompts) and 1 image, 2 samples each.
    assert len(files) == 12
    assert all(f.parent == out and f.suffix == ".wav" for f in files)
    assert len({f.name.lower() for f in files}) == 12
    assert {"image-harp-1.wav", "image-harp-2.wav", "a-drum-1.wav"} <= {f.name for f in files}
    for file in files:
        info = sf.info(str(file))
        assert (info.frames, info.samplerate, info.channels, info.subtype) == (7200, 16000, 1, "PCM_16")


def test_zero_shot_mode_without_prior_and_flac_output(folders, tmp_path):
    out = tmp_path / "zs"
    code = main(["generate", "--checkpoint", str(folders / "model_only"), "--query-encoder",
                 str(folders / "query_encoder"), "rain", "--mode", "zs", "--steps", "1", "--duration", "0.3",
                 "--format", "flac", "--bit-depth", "24", "-o", str(out)])
    assert code == 0
    info = sf.info(str(out / "rain.flac"))
    assert (info.frames, info.subtype) == (4800, "PCM_24")


def test_loud_output_is_rescaled_not_clipped(folders, tmp_path):
    loud = CLIPSonic.tiny(seed=0)
    loud.set_statistics(mel_mean=torch.full((64,), 2.0), mel_std=torch.full((64,), 0.1))  # mels near full scale
    loud.save_pretrained(tmp_path / "loud")
    written = {}
    for mode in ("none", "rescale"):
        out = tmp_path / mode
        code = main(["generate", "--checkpoint", str(tmp_path / "loud"), "--query-encoder",
                     str(folders / "query_encoder"), "rain", "--steps", "2", "--duration", "0.3",
                     "--bit-depth", "32f", "--clip-mode", mode, "-o", str(out)])
        assert code == 0
        written[mode], _ = sf.read(str(out / "rain.wav"), dtype="float32")
    peak = abs(written["none"]).max()
    assert peak > 1  # the untrained model is loud: the case being tested
    assert written["rescale"] == pytest.approx(written["none"] / (1.01 * peak), abs=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint", "{root}/missing", "x"], "no such checkpoint folder"),
        (["--checkpoint", "{root}/full", "  "], "prompt is empty"),
        (["--checkpoint", "{root}/full"], "at least one prompt"),
        (["--checkpoint", "{root}/full", "--image", "{root}/broken.png"], "cannot be read as an image"),
        (["--checkpoint", "{root}/full", "--image", "{root}/nothing.png"], "no such image file"),
        (["--checkpoint", "{root}/full", "x", "--duration", "-1"], "--duration"),
        (["--checkpoint", "{root}/full", "x", "--steps", "0"], "--steps"),
        (["--checkpoint", "{root}/full", "x", "--mode", "image"], "--image queries"),
        (["--checkpoint", "{root}/full", "x", "--prompts-file", "{root}/none.txt"], "cannot be read"),
        (["--checkpoint", "{root}/model_only", "--query-encoder", "{root}/query_encoder", "x", "--mode", "pd"], "prior"),
        (["--checkpoint", "{root}/query_encoder", "x"], "not a clipsonic.model.CLIPSonic"),
        (["--checkpoint", "{root}/full", "x", "--vocoder", "{root}"], "not a vocoder folder"),
        (["--checkpoint", "{root}/full", "x", "--template", "{{}}{{}}"], "can hold the query text only in {}"),
        (["--checkpoint", "{root}/full", "x", "--template", "{{0.x}}"], "can hold the query text only in {}"),
        (["--checkpoint", "{root}/full", "x", "--template", "{{0[0]}}"], "can hold the query text only in {}"),
        (["--checkpoint", "{root}/full", "x", "--vocoder", "{root}/vocoder80"], "vocoder takes 80 mel bins, but the "
                                                                                 "mels have 64."),
        (["--checkpoint", "{root}/full", "--overwrite", "--prompts-file", "{root}/out/x.wav"],
         "x.wav: is the input of --prompts-file; writing it there would destroy it."),
        (["--checkpoint", "{root}/full", "x", "--duration", "0.0001"], "(one window of the mel spectrogram)"),
        (["--checkpoint", "{root}/full", "x", "--seed", "99999999999999999999999"], "the seed must be between 0 and"),
        (["--checkpoint", "{root}/full", "x", "-o", "{root}/harp.png"], "harp.png: is a file, not a folder."),
        # 10^10 clips: refused before a file name is made for each (the names alone would fill memory).
        (["--checkpoint", "{root}/full", "x", "-n", "10000000000"], "1 queries x 10000000000 samples of 0.2 s would take"),
        # A guidance scale that would overflow the samples: refused before any sampling.
        (["--checkpoint", "{root}/full", "a", "b", "--guidance=-1e30", "--steps", "2"],
         "--guidance must be a number from -100 to 100, not -1e+30."),
    ],
)
def test_bad_input_is_one_line_and_nothing_written(folders, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    if "{root}/out/x.wav" in args:  # a prompts file where the clip would go
        args = [a.replace("{root}/out/x.wav", str(out / "x.wav")) for a in args]
        out.mkdir()
        (out / "x.wav").write_text("x\n")
    kept = {path: path.read_bytes() for path in out.rglob("*")} if out.exists() else {}
    # Defaults first: the case's own values come later and win.
    code = main(["generate", "--steps", "1", "--duration", "0.2", "-o", str(out), *[a.format(root=folders) for a in args]])
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if "generating" not in line]
    assert code == 2
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert ({path: path.read_bytes() for path in out.rglob("*")} if out.exists() else {}) == kept


def test_existing_outputs_are_kept_without_overwrite(folders, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "rain.wav").write_bytes(b"keep me")
    args = ["generate", "--checkpoint", str(folders / "full"), "rain", "--steps", "1", "--duration", "0.2", "-o", str(out)]
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "rain.wav").read_bytes() == b"keep me"
    assert main(args + ["--overwrite"]) == 0
    assert sf.info(str(out / "rain.wav")).frames == 3200


def test_an_output_that_is_a_folder_is_refused_before_any_file_is_written(folders, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "b.wav").mkdir(parents=True)
    args = ["generate", "--checkpoint", str(folders / "full"), "a", "b", "--steps", "1", "--duration", "0.2",
            "-o", str(out), "--overwrite"]
    assert main(args) == 2
    assert f"{out / 'b.wav'}: is a folder" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["b.wav"]


@pytest.mark.slow  # seven generations: about a minute on 2 busy cores
def test_sampling_options_change_what_is_written_and_a_seed_repeats_it(folders, tmp_path):
    runs = iter(range(100))

    def generate(*options):
        out = tmp_path / str(next(runs))
        code = main(["generate", "--checkpoint", str(folders / "full"), "rain", "--duration", "0.3", "--bit-depth", "32f",
                     "--clip-mode", "none", "-o", str(out), "--mode", "zs", "--steps", "1", "--guidance", "3",
                     "--seed", "0", *options])  # later options win
        assert code == 0
        return {path.name: sf.read(str(path), dtype="float32")[0] for path in sorted(out.iterdir())}

    def same(wave, reference):
        """The same sound but for rounding. On some CPUs the batch size changes the last bits
        (seen on an AVX2-only AMD EPYC; bit-identical on an Intel CPU with AVX-512), and the
        written waveforms then differed by up to 18% of their peak, so the magnitude
        spectrograms are compared: another seed changes them by far more."""
        magnitude = [np.abs(signal.stft(x, nperseg=256)[2]) for x in (wave, reference)]
        error = np.linalg.norm(magnitude[0] - magnitude[1]) / np.linalg.norm(magnitude[1])
        return wave.shape == reference.shape and error < 0.2  # seen: 0.006 and 0.037; another seed: 1.03

    # -n: sample k uses seed + k, whatever the batch size; the same options give the same samples
    two = generate("-n", "2")
    assert sorted(two) == ["rain-1.wav", "rain-2.wav"]
    base = two["rain-1.wav"]
    assert all(same(wave, two[name]) for name, wave in generate("-n", "2", "--batch-size", "1").items())
    assert same(generate("--seed", "1")["rain.wav"], two["rain-2.wav"])
    assert not same(two["rain-2.wav"], base)
    for options in (["--seed", "1"], ["--steps", "2"], ["--guidance", "1"], ["--mode", "pd"], ["--sampler", "euler"],
                    ["--template", "the sound of {}"], ["--template", "a photo of {}", "--template", "{} music"]):
        wave = two["rain-2.wav"] if options[0] == "--seed" else generate(*options)["rain.wav"]
        assert wave.shape == base.shape and np.abs(wave - base).max() > 1e-3 * np.abs(base).max(), options


def test_an_interruption_while_writing_leaves_none_of_the_clips(folders, tmp_path, monkeypatch, capsys):
    """Ctrl-C (or SIGTERM, which the command turns into it) after the first of three files: the
    clips appear together or not at all, so a rerun is not refused by a file of an unfinished run."""
    import clipsonic.generate_command as command

    saved = []

    def save_then_interrupt(path, *args, **kwargs):
        if saved:
            raise KeyboardInterrupt
        saved.append(save_audio(path, *args, **kwargs))

    save_audio = command.save_audio
    monkeypatch.setattr(command, "save_audio", save_then_interrupt)
    out = tmp_path / "out"
    args = ["generate", "--checkpoint", str(folders / "full"), "rain", "wind", "fire", "--steps", "1",
            "--duration", "0.2", "-o", str(out)]
    assert main(args) == 130
    assert saved and "interrupted" in capsys.readouterr().err
    assert not out.exists() or not list(out.iterdir())


def test_sigterm_while_sampling_writes_nothing_and_exits_with_one_line(folders, tmp_path):
    # What srun sends on preemption or scancel.
    import sys

    from tests.subprocesses import sigterm_when

    out = tmp_path / "out"
    seen: list[str] = []

    def sampling(process) -> bool:  # the progress bar is on stderr: sampling has begun
        seen.append(process.stderr.read(1))
        return "generating" in "".join(seen)

    process, err = sigterm_when([sys.executable, "-m", "clipsonic.cli", "generate", "--checkpoint",
                                 str(folders / "full"), "rain", "--steps", "1000", "--duration", "0.2", "-o", str(out)],
                                sampling)
    assert process.returncode == 130 and "Traceback" not in err and "interrupted" in "".join(seen) + err
    assert not out.exists() or not list(out.iterdir())
