"""Separator: chunking against a full pass, exact lengths, queries, masks, loading."""

import math

import pytest
import soundfile as sf
import torch
from PIL import Image

from clipcore.audio import AudioError, save_audio
from clipcore.checkpoint import CheckpointError
from clipcore.errors import ClipAudioError
from clipcore.files import ImageError
from clipcore.memory import device_memory
from clipcore.query import QueryEncoder
from clipsep.convert import convert_official, official_key_map
from clipsep.model import CLIPSep
from clipsep.separate import QueryError, Separator, crossfade_window, segment_starts

RATE = 16000


@pytest.fixture(scope="module")
def encoder():
    return QueryEncoder.tiny(embed_dim=16)


def _model(seed=0):
    """A tiny CLIPSep re-initialised with variance-preserving weights, so that its masks
    vary over time, frequency and query (the default initialisation of a deep tiny U-Net
    gives almost constant masks, which would make every comparison below easy)."""
    model = CLIPSep.tiny(query_dim=16, seed=seed).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
        model.query_proj.weight.mul_(4)
    return model


def _constant_mask_model(bias):
    """A real CLIPSep whose query mixes no U-Net channel: its mask is sigmoid(bias)."""
    model = _model()
    with torch.no_grad():
        model.mask_scale.zero_()
        model.mask_bias.fill_(bias)
    return model


def _signal(seconds, channels=1, rate=RATE, seed=0):
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * rate)) / rate
    tone = 0.3 * torch.sin(2 * math.pi * 440 * t) * (1 + torch.sin(2 * math.pi * 0.7 * t))
    return (tone + 0.1 * torch.randn(channels, t.numel(), generator=gen)).float()


def test_crossfade_windows_sum_to_one():
    segment, overlap, length = 1000, 300, 4321
    total = torch.zeros(length)
    starts = segment_starts(length, segment, overlap)
    for i, start in enumerate(starts):
        window = crossfade_window(segment, overlap, i > 0, i < len(starts) - 1)
        end = min(length, start + segment)
        total[start:end] += window[: end - start]
    torch.testing.assert_close(total, torch.ones(length), rtol=0, atol=1e-6)
    assert segment_starts(999, 1000, 300) == [0]


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_constant_mask_chunked_equals_full_pass_everywhere(encoder, overlap):
    # With a constant mask every segment returns c * its input, so any error in where a
    # segment lands or in the crossfade weights shows up as a difference.
    model = _constant_mask_model(0.7)
    wave = _signal(5.3)
    chunked = Separator(model, encoder, segment=1.0, overlap=overlap).separate(wave, RATE, ["violin"]).stems[0]
    full = Separator(model, encoder, segment=8.0).separate(wave, RATE, ["violin"]).stems[0]
    expected = torch.sigmoid(torch.tensor(0.7)) * wave
    torch.testing.assert_close(chunked, expected, rtol=0, atol=2e-5)
    torch.testing.assert_close(full, expected, rtol=0, atol=2e-5)


def test_chunked_matches_full_pass_away_from_segment_borders(encoder):
    # The U-Net sees a whole segment (7 levels, and bilinear upsampling that aligns
    # corners), so a chunk's mask cannot equal the full pass's bit for bit. Where one
    # segment counts alone they agree to 5% of the stem's norm (measured: 1.1%), and
    # over the whole signal, crossfades included, too (1.3%). A segment misplaced by one
    # sample would give about 17% (the 440 Hz tone dominates the stem).
    model = _model()
    wave = _signal(7.0)
    chunker = Separator(model, encoder, segment=2.0, overlap=0.25)
    chunked = chunker.separate(wave, RATE, ["violin"]).stems[0, 0]
    full = Separator(model, encoder, segment=8.0).separate(wave, RATE, ["violin"]).stems[0, 0]
    segment, overlap = chunker.segment_samples, chunker.overlap_samples
    starts = segment_starts(wave.shape[-1], segment, overlap)
    assert len(starts) >= 4
    inner = torch.zeros(wave.shape[-1], dtype=torch.bool)
    for start in starts[1:-1]:  # where one segment counts alone, not first or last
        inner[start + overlap:start + segment - overlap] = True

    def relative_error(where):
        return ((chunked - full)[where].norm() / full[where].norm()).item()

    assert relative_error(inner) < 0.05
    assert relative_error(slice(None)) < 0.05


@pytest.mark.parametrize("rate", [16000, 44100])
def test_exact_length_at_any_length(encoder, rate):
    separator = Separator(_model(), encoder, segment=2.0)
    segment = separator.segment_samples
    for length in (1, 37, 1000, segment - 1, segment, segment + 1, 2 * segment + 13):
        wave = torch.randn(2, length, generator=torch.Generator().manual_seed(length)) * 0.1
        seconds = []
        result = separator.separate(wave, rate, ["violin", "dog"], residual=True, noise=True, progress=seconds.append)
        assert sum(seconds) == pytest.approx(length / rate, abs=2 / RATE) and min(seconds) > 0
        assert result.stems.shape == (2, 2, length)
        assert result.noise.shape == (2, 2, length)
        assert result.sample_rate == rate
        torch.testing.assert_close(result.stems.sum(0) + result.residual, wave, rtol=0, atol=1e-5)


def test_many_queries_take_one_unet_pass_per_segment(encoder):
    model = _model()
    passes = []
    model.down[0].register_forward_hook(lambda *args: passes.append(1))
    separator = Separator(model, encoder, segment=2.0, batch_size=2)
    wave = _signal(9.0)
    joint = separator.separate(wave, RATE, ["violin", "dog barking", "engine"]).stems
    joint_passes = len(passes)
    assert joint_passes == math.ceil(len(segment_starts(wave.shape[-1], separator.segment_samples,
                                                        separator.overlap_samples)) / 2)
    singles = torch.cat([separator.separate(wave, RATE, [q]).stems for q in ["violin", "dog barking", "engine"]])
    assert len(passes) == 4 * joint_passes
    torch.testing.assert_close(joint, singles, rtol=1e-4, atol=1e-5)
    assert (joint[0] - joint[1]).norm() > 0.1 * joint[0].norm()


def test_mask_power_raises_the_soft_masks_to_it(encoder):
    wave = _signal(2.5)
    stems = {power: Separator(_constant_mask_model(0.7), encoder, mask_power=power).separate(wave, RATE, ["a"]).stems[0]
             for power in (1.0, 2.5)}
    for power, stem in stems.items():
        torch.testing.assert_close(stem, torch.sigmoid(torch.tensor(0.7)) ** power * wave, rtol=0, atol=2e-5)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="mask_power"):
            Separator(_model(), encoder, mask_power=bad)
    with pytest.raises(ValueError, match="binary"):
        Separator(_model(), encoder, mask_power=2.0, binary=True)


def test_binary_masks_and_channels(encoder):
    wave = _signal(2.5, channels=2)
    wave[1] = 0.5 * wave[0]
    keep = Separator(_constant_mask_model(3.0), encoder, binary=True).separate(wave, RATE, ["a"]).stems[0]
    drop = Separator(_constant_mask_model(-3.0), encoder, binary=True).separate(wave, RATE, ["a"]).stems[0]
    torch.testing.assert_close(keep, wave, rtol=0, atol=2e-5)
    assert drop.abs().max() == 0
    # Every channel gets the masks of the downmix: a scaled channel stays scaled.
    separator = Separator(_model(), encoder)
    stereo = separator.separate(wave, RATE, ["violin"]).stems[0]
    torch.testing.assert_close(stereo[1], 0.5 * stereo[0], rtol=0, atol=1e-5)
    mono = separator.separate(wave, RATE, ["violin"], mono=True).stems[0]
    assert mono.shape == (1, wave.shape[-1])
    torch.testing.assert_close(mono, separator.separate(wave.mean(0), RATE, ["violin"]).stems[0])


def test_image_and_embedding_queries(encoder, tmp_path):
    separator = Separator(_model(), encoder)
    image = Image.new("RGB", (40, 30), (200, 30, 30))
    image.save(tmp_path / "red.png")
    embeddings = separator.encode_queries([tmp_path / "red.png", image, "violin"])
    torch.testing.assert_close(embeddings[0], encoder.encode_image([image])[0])
    torch.testing.assert_close(embeddings[1], embeddings[0])
    torch.testing.assert_close(embeddings[2], encoder.encode_text(["violin"])[0])
    torch.testing.assert_close(separator.encode_queries([embeddings[2]]), embeddings[2:])
    # Video frames [K, F, 3, H, W]: unit-norm mean for project models, raw mean for official ones.
    frames = torch.randint(0, 256, (2, 3, 3, 24, 24), dtype=torch.uint8)
    torch.testing.assert_close(separator.embed_images(frames), encoder.encode_image(frames))
    raw = Separator(_model(), encoder, normalize_queries=False).embed_images(frames)
    flat = encoder.model.encode_image(encoder.preprocess(frames.flatten(0, 1))).float()
    torch.testing.assert_close(raw, flat.view(2, 3, -1).mean(1))


def test_bad_waves_and_queries(encoder, tmp_path):
    separator = Separator(_model(), encoder)
    with pytest.raises(AudioError, match="at least one sample"):
        separator.separate(torch.zeros(1, 0), RATE, ["violin"])
    with pytest.raises(AudioError, match="non-finite"):
        separator.separate(torch.tensor([[0.0, float("nan"), 0.0]]), RATE, ["violin"])
    with pytest.raises(QueryError, match="empty"):
        separator.separate(torch.zeros(1, 100), RATE, ["  "])
    (tmp_path / "broken.png").write_bytes(b"not a picture")
    with pytest.raises(ImageError, match="broken.png: cannot be read as an image"):
        separator.encode_queries([tmp_path / "broken.png"])
    with pytest.raises(CheckpointError, match="16-d queries"):
        Separator(_model(), QueryEncoder.tiny(embed_dim=32))


@pytest.mark.parametrize("call, message", [  # each returned NaN or silent stems, a traceback, or was taken
    (lambda s, w: s.separate(w, 10**12, ["violin"]), "the sample rate must be a whole number of Hz from 1000 to 768000"),
    (lambda s, w: s.separate(w, 0, ["violin"]), "not 0"),
    (lambda s, w: s.separate(w, RATE, torch.full((1, 16), float("nan"))), "query embeddings hold NaN or infinity"),
    (lambda s, w: s.separate(w, RATE, [torch.full((16,), float("inf"))]), "query embeddings hold NaN or infinity"),
    (lambda s, w: s.separate(w, RATE, torch.zeros(1, 8)), r"query embeddings must be a real \[K, 16\] tensor with K >= 1, "
                                                          r"not \[1, 8\] \(torch.float32\)"),
    (lambda s, w: s.separate(w, RATE, torch.zeros(1, 16, dtype=torch.complex64)), r"not \[1, 16\] \(torch.complex64\)"),
    (lambda s, w: s.embed_images(torch.full((1, 3, 8, 8), float("nan"))), "images hold NaN or infinity"),
    (lambda s, w: s.separate(w, RATE, [5]), "images must be uint8 tensors or PIL images, got int"),
    (lambda s, w: s.embed_text([]), "text queries must be one or more non-empty strings"),
    (lambda s, w: Separator(s.model, s.query_encoder, segment=math.inf), "segment must be above 0 and at most 600"),
    (lambda s, w: Separator(s.model, s.query_encoder, batch_size=2.5), "batch_size must be a whole number"),
    (lambda s, w: s.separate(torch.zeros(0, 100), RATE, ["violin"]), r"1 to 8 channels .* got \[0, 100\]"),
    (lambda s, w: s.separate(w.T.repeat(1, 2), RATE, ["violin"]), r"1 to 8 channels .* got \[8000, 2\]"),  # [S, C]
    (lambda s, w: s.separate(w * 1e38, RATE, ["violin"]), "the mixture's level is beyond what can be separated"),
    (lambda s, w: s.separate(w, RATE, None), "give a list of one or more queries"),
    (lambda s, w: s.embed_images([]), "no images to encode"),
])
def test_bad_rates_queries_and_settings_are_one_sentence(encoder, call, message):
    with pytest.raises(ClipAudioError, match=message):
        call(Separator(_model(), encoder), _signal(0.5))


def test_a_numpy_mixture_is_taken_as_a_tensor_is(encoder):
    separator, wave = Separator(_model(), encoder), _signal(0.5)
    from_numpy = separator.separate(wave.numpy(), RATE, ["violin"]).stems  # an AttributeError before
    torch.testing.assert_close(from_numpy, separator.separate(wave, RATE, ["violin"]).stems)


def test_stems_beyond_half_the_memory_are_refused_before_any_is_made(encoder):
    # A minute of mono input and enough queries that their stems would fill the machine's
    # memory: one sentence that points to separate_file, not an allocation failure.
    wave, queries = torch.zeros(1, 60 * RATE), math.ceil(device_memory("cpu") / (60 * RATE * 4)) + 1
    with pytest.raises(ClipAudioError, match=rf"{queries} stems of 60 s of 1-channel audio would take .* GB, more than "
                                             r"half of the .* GB here; separate long inputs with separate_file"):
        Separator(_model(), encoder).separate(wave, RATE, torch.randn(queries, 16))


def test_a_text_given_alone_is_one_query(encoder):
    separator = Separator(_model(), encoder)  # a str was read as a sequence of one-letter queries
    torch.testing.assert_close(separator.embed_text("violin"), separator.embed_text(["violin"]))


def test_separate_file_checks_its_output_folder_and_block_length(encoder, tmp_path):
    separator = Separator(_model(), encoder)
    save_audio(tmp_path / "mix.wav", _signal(0.5), RATE)
    (tmp_path / "afile").write_text("keep me")
    with pytest.raises(ClipAudioError, match="afile: is a file, not a folder"):  # FileExistsError before
        separator.separate_file(tmp_path / "mix.wav", ["violin"], tmp_path / "afile")
    with pytest.raises(ClipAudioError, match="block_seconds must be a positive number of seconds, got 0"):
        separator.separate_file(tmp_path / "mix.wav", ["violin"], tmp_path / "out", block_seconds=0)
    with pytest.raises(QueryError, match="the query 'violin' is given twice"):  # a zip() ValueError before
        separator.separate_file(tmp_path / "mix.wav", ["violin", "violin"], tmp_path / "out")
    with pytest.raises(QueryError, match="give a list of one or more queries"):  # "the query 't' is given twice"
        separator.separate_file(tmp_path / "mix.wav", "violin", tmp_path / "out")
    assert (tmp_path / "afile").read_text() == "keep me" and not (tmp_path / "out").exists()


def test_separate_file_never_writes_over_its_input_nor_leaves_a_failures_folder(encoder, tmp_path):
    separator = Separator(_model(), encoder)
    save_audio(tmp_path / "violin.wav", _signal(0.5), RATE)
    before = (tmp_path / "violin.wav").read_bytes()
    with pytest.raises(ClipAudioError, match="violin.wav: is the input of the separation"):
        separator.separate_file(tmp_path / "violin.wav", ["violin"], tmp_path)
    assert (tmp_path / "violin.wav").read_bytes() == before
    # A finite input too loud to separate: named as the input's level, and no folder left.
    sf.write(tmp_path / "loud.wav", (_signal(0.5) * 1e37).numpy().T, RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match="the mixture's level is beyond what can be separated"):
        separator.separate_file(tmp_path / "loud.wav", ["violin"], tmp_path / "out" / "loud")
    assert not (tmp_path / "out").exists()


def test_checkpoint_folder_official_file_and_wrong_kinds(encoder, tmp_path):
    model = _model(seed=4)
    wave = _signal(2.0)
    expected = Separator(model, encoder).separate(wave, RATE, ["violin"]).stems
    Separator(model, encoder).save_pretrained(tmp_path / "ckpt")
    loaded = Separator.load(tmp_path / "ckpt")
    torch.testing.assert_close(loaded.separate(wave, RATE, ["violin"]).stems, expected)

    # The official format: the same weights under the official names, in a .pt file.
    own = model.state_dict()
    official = {f"module.{key}": own[ours] for key, ours in official_key_map(7, 2).items()}
    torch.save(official, tmp_path / "best_model.pt")
    from_file = Separator.load(tmp_path / "best_model.pt", query_encoder=tmp_path / "ckpt" / "query_encoder")
    # The official network reads raw CLIP outputs, not unit-norm embeddings.
    raw = encoder.model.encode_text(encoder.tokenize(["a photo of violin"])).float()
    assert not from_file.queries.normalize_queries and loaded.queries.normalize_queries
    torch.testing.assert_close(from_file.encode_queries(["violin"]), raw)
    assert abs(raw.norm().item() - 1) > 0.05
    raw_expected = Separator(model, encoder, normalize_queries=False).separate(wave, RATE, ["violin"]).stems
    torch.testing.assert_close(from_file.separate(wave, RATE, ["violin"]).stems, raw_expected)
    assert not torch.allclose(raw_expected, expected, atol=1e-4)
    converted = convert_official(tmp_path / "best_model.pt", tmp_path / "converted")
    assert not Separator.load(converted, query_encoder=encoder).queries.normalize_queries

    with pytest.raises(CheckpointError, match="needs a query encoder"):
        Separator.load(tmp_path / "best_model.pt")
    (tmp_path / "notes.pt").write_text("not weights")  # a file that is no checkpoint is named as such first
    with pytest.raises(CheckpointError, match="notes.pt: is not a PyTorch weights file"):
        Separator.load(tmp_path / "notes.pt")
    with pytest.raises(CheckpointError, match="not a clipsep.model.CLIPSep"):
        Separator.load(tmp_path / "ckpt" / "query_encoder")
    model.save_pretrained(tmp_path / "bare")
    with pytest.raises(CheckpointError, match="no query_encoder/ folder"):
        Separator.load(tmp_path / "bare")
    with pytest.raises(CheckpointError, match="no such"):
        Separator.load(tmp_path / "missing")
