"""``clipsep separate`` options of the README, through the command line: each option
reaches the separation (the written stems equal the Python API's with that setting and
differ from the default), and hidden files are skipped."""

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from clipcore.audio import save_audio
from clipcore.query import QueryEncoder
from clipsep.cli import main
from clipsep.model import CLIPSep
from clipsep.separate import Separator

RATE = 16000


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("options")
    torch.manual_seed(0)
    model = CLIPSep.tiny(query_dim=16)
    for module in model.modules():  # weights far from the official (near-zero) start, so that
        if isinstance(module, (nn.Conv2d, nn.Linear)):  # queries and context change the masks
            nn.init.kaiming_normal_(module.weight, nonlinearity="linear")
    Separator(model, QueryEncoder.tiny(seed=0, embed_dim=16)).save_pretrained(root / "ckpt")
    QueryEncoder.tiny(seed=7, embed_dim=16).save_pretrained(root / "other_encoder")
    rng = np.random.default_rng(0)
    left = rng.normal(0, 0.1, 3 * RATE).astype("float32")
    wave = torch.from_numpy(np.stack([left, 0.5 * left + rng.normal(0, 0.05, 3 * RATE).astype("float32")]))
    save_audio(root / "mix.wav", wave, RATE, bit_depth="32f")
    return root, wave


def _cli(root, tmp_path, *options, query="violin"):
    out = tmp_path / "out"
    assert main(["separate", "--checkpoint", str(root / "ckpt"), "-q", query, "--bit-depth", "32f", "--device", "cpu",
                 "-o", str(out), *options, str(root / "mix.wav")]) == 0
    data, rate = sf.read(out / "mix" / f"{query}.wav", dtype="float32", always_2d=True)
    assert rate == RATE
    return torch.from_numpy(data.T)


def _api(root, wave, query="violin", **settings):
    return Separator.load(root / "ckpt", **settings).separate(wave, RATE, [query]).stems[0]


@pytest.fixture(scope="module")
def default(setup, tmp_path_factory):
    root, wave = setup
    stem = _cli(root, tmp_path_factory.mktemp("default"))
    torch.testing.assert_close(stem, _api(root, wave), atol=1e-6, rtol=0)
    return stem


@pytest.mark.parametrize(
    "options, settings",
    [
        (["--binary"], {"binary": True}),
        (["--mask-power", "2"], {"mask_power": 2.0}),
        (["--template", "the sound of {}"], {"templates": ["the sound of {}"]}),
        (["--template", "the sound of {}", "--template", "{} playing"], {"templates": ["the sound of {}", "{} playing"]}),
        (["--segment", "0.5"], {"segment": 0.5}),
        (["--segment", "0.5", "--overlap", "0.5"], {"segment": 0.5, "overlap": 0.5}),  # 2 segments: overlap counts
        (["--query-encoder", "{root}/other_encoder"], {"query_encoder": "{root}/other_encoder"}),
    ],
)
def test_option_reaches_the_separation(setup, default, tmp_path, options, settings):
    root, wave = setup
    options = [o.replace("{root}", str(root)) for o in options]
    settings = {k: v.replace("{root}", str(root)) if isinstance(v, str) else v for k, v in settings.items()}
    stem = _cli(root, tmp_path, *options)
    torch.testing.assert_close(stem, _api(root, wave, **settings), atol=1e-6, rtol=0)
    assert (stem - default).abs().max() > 1e-3


def test_batch_size_changes_nothing_but_the_batching(setup, default, tmp_path):
    root, _ = setup
    passes = []  # the separation network's calls, each one batch of segments
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, inputs, output: passes.append(len(inputs[0])) if isinstance(module, CLIPSep) else None)
    try:
        one = _cli(root, tmp_path, "--batch-size", "1", "--segment", "0.5")
        calls = len(passes)
        three = _cli(root, tmp_path / "b3", "--batch-size", "3", "--segment", "0.5")
    finally:
        hook.remove()
    torch.testing.assert_close(one, three, atol=1e-5, rtol=0)
    # The option reaches the separation: one segment per network pass, then up to three
    # (--segment 0.5 rounds up to the tiny U-Net's block of frames: 2 segments over 3 s).
    assert calls >= 2 and passes[:calls] == [1] * calls
    assert passes[calls:] == [3] * (calls // 3) + ([calls % 3] if calls % 3 else [])


def test_channels_share_the_masks_of_the_downmix_and_mono_separates_the_downmix(setup, default, tmp_path):
    root, wave = setup
    assert default.shape == wave.shape
    # One mask for both channels: the stems are the masked channels, so a channel that is a
    # scaled copy of the other gives a scaled copy of its stem (per-channel masks would not).
    same = tmp_path / "same"
    save_audio(same / "mix.wav", torch.stack([wave[0], 0.5 * wave[0]]), RATE, bit_depth="32f")
    assert main(["separate", "--checkpoint", str(root / "ckpt"), "-q", "violin", "--bit-depth", "32f",
                 "-o", str(tmp_path / "same-out"), str(same / "mix.wav")]) == 0
    stems, _ = sf.read(tmp_path / "same-out" / "mix" / "violin.wav", dtype="float32", always_2d=True)
    np.testing.assert_allclose(stems[:, 1], 0.5 * stems[:, 0], atol=1e-6)
    mono = _cli(root, tmp_path, "--mono")
    assert mono.shape == (1, wave.shape[1])
    torch.testing.assert_close(mono, _api(root, wave.mean(0, keepdim=True)), atol=1e-6, rtol=0)


def test_hidden_files_and_folders_are_skipped(setup, tmp_path, capsys):
    root, wave = setup
    stems = tmp_path / "stems"
    for name in ("take.wav", ".take.wav", ".git/take2.wav", "sub/.cache/take3.wav", "sub/take4.wav"):
        save_audio(stems / name, wave[:, :4000], RATE)
    assert main(["separate", "--checkpoint", str(root / "ckpt"), "-q", "violin", "-o", str(tmp_path / "out"),
                 str(stems)]) == 0
    assert "Separated 2 of 2 inputs" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["take", "take4"]


def test_folders_are_searched_for_every_audio_extension(tmp_path):
    from clipcore.audio import AUDIO_EXTENSIONS
    from clipsep.batch import discover

    names = ["a.wav", "b.flac", "c.ogg", "d.mp3", "e.aif", "f.aiff", "sub/G.WAV", "notes.txt", "cover.jpg", "mp3"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")  # the search goes by name; reading comes later, per file
    found, failures = discover([str(tmp_path)])
    assert sorted(p.relative_to(tmp_path).as_posix() for p in found) == names[:7] and not failures
    assert set(AUDIO_EXTENSIONS) == {".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff"}
