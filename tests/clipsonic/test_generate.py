import numpy as np
import pytest
import torch
from PIL import Image

from clipcore.errors import ClipAudioError
from clipcore.memory import device_memory
from clipcore.prior import DiffusionPrior
from clipcore.query import QueryEncoder
from clipcore.synthetic import render_frame
from clipsonic.generate import GenerationError, Generator, check_output_memory, sample_mels
from clipsonic.model import CLIPSonic
from tests.clipsonic.helpers import unit_vectors


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint folder in the documented layout: model + query_encoder/ + prior/."""
    folder = tmp_path_factory.mktemp("clipsonic")
    model = CLIPSonic.tiny(seed=0)
    with torch.no_grad():
        model.null_embedding.add_(0.5)  # a condition far from the null one, as after training
    model.save_pretrained(folder)
    QueryEncoder.tiny(seed=0).save_pretrained(folder / "query_encoder")
    DiffusionPrior.tiny(seed=0).save_pretrained(folder / "prior")
    return folder


@pytest.fixture(scope="module")
def generator(checkpoint):
    return Generator.from_pretrained(checkpoint, batch_size=4)


def test_same_seed_same_output_whatever_the_batch_size(checkpoint, generator):
    e = unit_vectors(2, seed=5)
    settings = {"embeddings": e, "steps": 2, "num_samples": 2, "duration": 0.2}
    first = generator.generate(seed=7, **settings)
    again = generator.generate(seed=7, **settings)
    one_by_one = Generator.from_pretrained(checkpoint, batch_size=1).generate(seed=7, **settings)
    other = generator.generate(seed=8, **settings)
    assert torch.equal(first.waveforms, again.waveforms)
    # Batched convolutions differ in the last bits; 2e-3 in log-mel is 0.2 % in magnitude.
    torch.testing.assert_close(one_by_one.mels, first.mels, atol=2e-3, rtol=0)
    assert not torch.allclose(other.mels, first.mels, atol=1e-2)
    # Sample k of each query uses seed + k: sample 1 of seed 7 is sample 0 of seed 8.
    torch.testing.assert_close(other.mels[:, 0], first.mels[:, 1], atol=2e-3, rtol=0)


def test_channels_last_sampling_matches_the_model_as_trained(checkpoint, generator):
    """The generator runs its U-Net on channels-last weights (faster on CPUs); the mels
    must be those the model samples in the memory layout it was trained in."""
    kernels = [w for w in generator.model.parameters() if w.dim() == 4]
    assert any(w.shape[-2:] == (1, 1) for w in kernels)  # 1 x 1 shortcuts: channels-last or not by their strides alone
    for w in kernels:  # [out, in, h, w] with the input channels innermost, whatever the kernel's size
        assert w.stride() == (w.shape[1] * w.shape[2] * w.shape[3], 1, w.shape[3] * w.shape[1], w.shape[1])
    model = CLIPSonic.from_pretrained(checkpoint).eval()
    assert not model.unet.conv_out.weight.is_contiguous(memory_format=torch.channels_last)
    e = unit_vectors(2, seed=3)
    result = generator.generate(embeddings=e, steps=3, guidance=3.0, seed=11, duration=0.3)
    frames = result.mels.shape[-1]
    expected = sample_mels(model, e, frames, seeds=[11, 11], steps=3, guidance=3.0)
    torch.testing.assert_close(result.mels[:, 0], expected, atol=2e-3, rtol=0)


@pytest.mark.parametrize("sampler, duration", [("ddim", 0.37), ("dpm++", 1.0), ("euler", 0.2)])
def test_every_sampler_gives_finite_audio_of_the_exact_duration(generator, sampler, duration):
    result = generator.generate(embeddings=unit_vectors(1), steps=2, sampler=sampler, duration=duration)
    samples = round(duration * 16000)
    assert result.waveforms.shape == (1, 1, samples)
    assert result.mels.shape == (1, 1, 64, samples // 160 + 1)
    assert torch.isfinite(result.waveforms).all() and result.sample_rate == 16000


def test_text_modes_and_image_mode_use_the_folder_parts(checkpoint, generator):
    encoder = QueryEncoder.from_pretrained(checkpoint / "query_encoder")
    zs = generator.embed(text=["a flute", "a drum"], mode="zs")
    torch.testing.assert_close(zs, encoder.encode_text(["a flute", "a drum"]))
    templates = ["the sound of {}", "{} playing"]
    torch.testing.assert_close(generator.embed(text=["a flute"], mode="zs", templates=templates),
                               encoder.encode_text(["a flute"], templates=templates))
    pd = generator.embed(text=["a flute", "a drum"], mode="pd", seed=1)
    assert pd.shape == zs.shape and not torch.allclose(pd, zs, atol=1e-3)
    torch.testing.assert_close(pd.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(generator.embed(text="a flute", mode="pd", seed=1), pd[:1])
    assert generator.has_prior
    frame = render_frame("flute", 0, 64)
    image = generator.embed(image=torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1))
    torch.testing.assert_close(image, encoder.encode_image(torch.from_numpy(frame).permute(2, 0, 1)[None]))
    result = generator.generate(text=["a flute", "a drum"], mode="pd", steps=2, num_samples=3, duration=0.2)
    assert result.waveforms.shape == (2, 3, 3200)


@pytest.mark.parametrize("request_, message", [  # each gave NaN audio, a traceback from torch, or was taken
    (dict(guidance=float("nan")), "guidance must be a number from -100 to 100, not nan"),
    (dict(guidance=1e30), "guidance must be a number from -100 to 100"),
    (dict(steps=2.5), "steps must be a whole number between 1 and 1000"),
    (dict(steps=10**6), "steps must be a whole number between 1 and 1000"),
    (dict(num_samples=0), "the number of samples must be a whole number at least 1, not 0"),
    (dict(num_samples=10**9, embeddings=torch.zeros(1, 32)),
     r"1 queries x 1000000000 samples of 0.3 s would take \d+\.\d GB of audio, mels and the sampling's working memory "
     r"at their peak, more than half"),
    (dict(seed=1.5), "the seed must be a whole number, not 1.5"),
    (dict(embeddings=torch.full((1, 32), float("nan"))), "embeddings hold NaN or infinity"),
    (dict(embeddings=torch.zeros(1, 16)), r"embeddings must be a real \[K, 32\] tensor with K >= 1, not \[1, 16\]"),
    (dict(embeddings=torch.zeros(0, 32)), r"not \[0, 32\]"),
    (dict(embeddings=torch.zeros(1, 32), text="a flute"), "give text, an image query or embeddings, not several"),
    (dict(image=torch.full((3, 8, 8), float("nan"))), "images hold NaN or infinity"),
    (dict(image=torch.zeros(3, 0, 8, dtype=torch.uint8)), "images must be at least 1 x 1 pixel, got 0 x 8"),
    (dict(text=[5]), "text must be a prompt or a list of prompts"),
])
def test_requests_that_would_give_nan_or_a_traceback_are_refused(generator, request_, message):
    with pytest.raises(ClipAudioError, match=message):
        generator.generate(**{"steps": 2, "duration": 0.3, **request_})


def test_the_samplings_working_memory_counts_toward_the_bound(generator):
    # 16 clips of 600 s in one batch: 1.7 GB of clips, which the bound approved, but the
    # U-Net's activations took about 230 GB (16 of 60 s peaked at 11 GB on a 24-GB machine).
    model = generator.model
    frames = model.mel_config.frames(600 * model.mel_config.sample_rate)
    if model.sampling_bytes(16, frames) < device_memory("cpu") / 2:
        pytest.skip("this machine has the memory for it")
    check_output_memory(1, 16, 600.0, model.mel_config)  # the clips alone pass
    with pytest.raises(GenerationError, match=r"1 queries x 16 samples of 600 s would take \d+\.\d GB of audio, mels "
                                              r"and the sampling's working memory at their peak, more than half of"):
        Generator(model, batch_size=16).generate(embeddings=torch.zeros(1, 32), steps=1, num_samples=16, duration=600.0)


def test_an_image_query_may_be_a_file(generator, tmp_path):
    picture = render_frame("cello", size=32, seed=0)
    Image.fromarray(picture).save(tmp_path / "cello.png")
    from_file = generator.embed(image=tmp_path / "cello.png")
    torch.testing.assert_close(from_file, generator.embed(image=Image.open(tmp_path / "cello.png")))


def test_requests_that_cannot_be_served_are_clear_errors(checkpoint, tmp_path):
    model_only = tmp_path / "model_only"
    CLIPSonic.from_pretrained(checkpoint).save_pretrained(model_only)
    bare = Generator.from_pretrained(model_only, query_encoder=checkpoint / "query_encoder")
    assert not bare.has_prior
    with pytest.raises(GenerationError, match="prior"):
        bare.embed(text="a flute", mode="pd")
    with pytest.raises(GenerationError, match="text"):
        bare.embed(image=torch.zeros(3, 8, 8, dtype=torch.uint8), mode="zs")
    with pytest.raises(GenerationError, match="empty"):
        bare.embed(text=["a flute", "  "])
    with pytest.raises(GenerationError, match="template"):
        bare.embed(text="a flute", mode="zs", templates="no placeholder")
    with pytest.raises(GenerationError, match="sampler"):
        bare.generate(embeddings=unit_vectors(1), sampler="nope")
    with pytest.raises(GenerationError, match="duration"):
        bare.generate(embeddings=unit_vectors(1), duration=0)
    with pytest.raises(GenerationError, match=r"duration must be at least 0.064 seconds \(one window"):
        bare.generate(embeddings=unit_vectors(1), duration=0.0001)
    with pytest.raises(GenerationError, match="the seed must be between 0 and 9223372036854775806, not -1"):
        bare.generate(embeddings=unit_vectors(1), num_samples=2, seed=-1)
    with pytest.raises(GenerationError, match="the seed must be between 0 and 9223372036854775807, not 10"):
        bare.embed(text="a flute", mode="zs", seed=10**30)
    with pytest.raises(GenerationError, match="can hold the query text only in"):
        bare.embed(text="a flute", mode="zs", templates="{}{}")
    QueryEncoder.tiny(embed_dim=16).save_pretrained(tmp_path / "qe16")
    with pytest.raises(GenerationError, match="16-d"):
        Generator.from_pretrained(model_only, query_encoder=tmp_path / "qe16").embed(text="a flute")
    with pytest.raises(GenerationError, match="no query encoder"):
        Generator.from_pretrained(model_only).embed(text="a flute")
