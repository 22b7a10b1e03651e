import json
import math
import re

import librosa
import numpy as np
import pytest
import torch

from clipcore.checkpoint import CheckpointError
from clipsonic.model import CLIPSonic
from tests.clipsonic.helpers import unit_vectors


@pytest.fixture(scope="module", params=["default", "scale_shift"])
def model(request):
    """The tiny model, with the condition added to the features or FiLM (``scale_shift``)."""
    torch.manual_seed(0)
    model = CLIPSonic.tiny(seed=1, time_scale_shift=request.param).eval()
    # A trained model's null condition and projections differ from the fresh ones; perturb
    # every parameter so no branch of the network is exactly zero.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    return model


def _inputs(batch=3, frames=16):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 1, 64, frames, generator=g)
    t = torch.tensor([10, 400, 900])[:batch]
    return x, t, unit_vectors(batch, 32, seed=4)


def test_guidance_one_equals_conditional_and_zero_equals_unconditional(model):
    x, t, e = _inputs()
    with torch.no_grad():
        conditional = model(x, t, e)
        unconditional = model(x, t, None)
        guided_one = model.guided(x, t, e, 1.0)
        guided_zero = model.guided(x, t, e, 0.0)
        guided_three = model.guided(x, t, e, 3.0)
    assert not torch.allclose(conditional, unconditional, atol=1e-3)  # the condition matters
    torch.testing.assert_close(guided_one, conditional, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(guided_zero, unconditional, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(guided_three, unconditional + 3 * (conditional - unconditional), atol=1e-4, rtol=1e-4)


def test_dropped_condition_is_the_null_condition(model):
    x, t, e = _inputs()
    drop = torch.tensor([True, False, True])
    with torch.no_grad():
        mixed = model(x, t, e, drop=drop)
        torch.testing.assert_close(mixed[drop], model(x, t, None)[drop])
        torch.testing.assert_close(mixed[~drop], model(x, t, e)[~drop])


def test_save_load_round_trip_keeps_weights_and_mel_statistics(model, tmp_path):
    model.set_mel_statistics(torch.randn(4, 64, 20) * 2 - 6)
    model.save_pretrained(tmp_path / "m", provenance={"note": "test"})
    loaded = CLIPSonic.from_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(loaded.mel_mean, model.mel_mean)
    torch.testing.assert_close(loaded.mel_std, model.mel_std)
    x, t, e = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, e), model(x, t, e))
    assert loaded.provenance["note"] == "test"
    assert loaded.embed_dim == 32 and loaded.downsample_factor == 4


@pytest.mark.parametrize("edit, reason", [
    ({"beta_schedule": "nope"}, "beta_schedule 'nope' is not a diffusers beta schedule"),
    ({"num_train_timesteps": 0}, "num_train_timesteps must be a whole number of at least 1, not 0"),
    ({"mel": {"hop_length": 0}}, "mel hop_length must be a whole number of at least 1, not 0"),
    ({"mel": {"f_max": 20000.0}}, "mel f_min 0.0 and f_max 20000.0 must satisfy"),
])
def test_an_edited_config_that_would_fail_only_when_sampling_fails_at_load(model, tmp_path, edit, reason):
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["arguments"].update(edit)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"cannot build a CLIPSonic from its arguments \\({re.escape(reason)}"):
        CLIPSonic.from_pretrained(tmp_path)


def test_loading_another_class_is_a_clear_error(tmp_path):
    from clipcore.query import QueryEncoder

    QueryEncoder.tiny().save_pretrained(tmp_path / "qe")
    with pytest.raises(CheckpointError, match="not a clipsonic.model.CLIPSonic"):
        CLIPSonic.from_pretrained(tmp_path / "qe")


def test_normalization_round_trips_and_mel_is_the_project_convention(model):
    wave = torch.randn(2, 3200, generator=torch.Generator().manual_seed(0)) * 0.1
    wave[:, 1600:] = 0  # silence: its frames meet the log floor
    mel = model.log_mel(wave)
    assert mel.shape == (2, 64, 21) and (mel == math.log(model.mel_config.log_floor)).any()
    # The convention (AudioLDM's and HiFi-GAN's at 16 kHz): magnitudes of centred, reflect-padded
    # frames through Slaney mel filters, natural log floored at 1e-5; librosa computes it apart.
    c = model.mel_config
    reference = librosa.feature.melspectrogram(
        y=wave.numpy(), sr=c.sample_rate, n_fft=c.n_fft, hop_length=c.hop_length, win_length=c.win_length,
        n_mels=c.n_mels, fmin=c.f_min, fmax=c.f_max, power=1.0, htk=False, norm="slaney", pad_mode="reflect")
    torch.testing.assert_close(mel, torch.from_numpy(np.log(np.maximum(reference, c.log_floor))), atol=1e-4, rtol=0)
    torch.testing.assert_close(model.denormalize(model.normalize(mel)), mel, atol=1e-5, rtol=1e-5)


def test_tiny_attends_only_at_the_lowest_level():
    tiny = CLIPSonic.tiny()
    attention_blocks = [type(b).__name__ for b in tiny.unet.down_blocks if hasattr(b, "attentions")]
    assert attention_blocks == ["CrossAttnDownBlock2D"]
    assert not hasattr(tiny.unet.down_blocks[0], "attentions")
    assert tiny.padded_frames(101) == 104
    with pytest.raises(ValueError, match="prediction_type"):
        CLIPSonic.tiny(prediction_type="sample")


def test_presets_are_seeded_without_touching_the_global_random_state():
    state = torch.random.get_rng_state()
    first, second = CLIPSonic.tiny(seed=3), CLIPSonic.tiny(seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert not torch.equal(first.null_embedding, CLIPSonic.tiny(seed=4).null_embedding)
    assert CLIPSonic.from_preset("paper", cond_tokens=2).init_args["block_out_channels"] == [128, 256, 384, 512]
