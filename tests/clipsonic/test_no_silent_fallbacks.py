"""Fallbacks that used to hide a problem now say what was missing (CLIPSonic side, and the
loaders it relies on: vocoder, prior, query encoder)."""

import json
import warnings

import lightning as L
import pytest
from safetensors.torch import save_file
from torch.utils.data import DataLoader

import clipcore.query as query
from clipcore.checkpoint import CheckpointError
from clipcore.prior import DiffusionPrior, PriorError
from clipcore.query import QueryEncoder, QueryEncoderError
from clipsonic.system import CLIPSonicSystem
from clipsonic.vocoder import HiFiGAN, load_vocoder
from tests.clipsonic.helpers import instrument_clips, one_source_batch, unit_vectors
from tests.clipsonic.test_vocoder import SMALL


def _fit_one_step(system):
    batch = one_source_batch(instrument_clips("cello", 2, 5120), unit_vectors(2), ["cello", "cello"])
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(system, DataLoader([batch], batch_size=None, collate_fn=lambda b: b))


def test_training_on_placeholder_mel_statistics_warns_naming_why():
    system = CLIPSonicSystem(model_args={"block_out_channels": [16, 32, 32]}, mel_stats_batches=0, val_examples=0)
    assert system.model.has_placeholder_statistics
    with pytest.warns(UserWarning, match="placeholder mel statistics.*mel_stats_batches is 0"):
        _fit_one_step(system)
    measured = CLIPSonicSystem(model_args={"block_out_channels": [16, 32, 32]}, mel_stats_batches=0, val_examples=0)
    measured.model.set_mel_statistics(measured.model.log_mel(instrument_clips("cello", 2, 5120)))
    assert not measured.model.has_placeholder_statistics
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit_one_step(measured)  # statistics set by hand: nothing to warn about
    assert not [w for w in caught if "placeholder" in str(w.message)]


def test_normalising_vocoder_without_mean_and_scale_is_refused(tmp_path):
    folder = tmp_path / "vocoder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**SMALL, "normalize_before": True}))
    state = {k: v for k, v in HiFiGAN(**SMALL).state_dict().items() if k != "scale"}
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="normalize_before.*lack the mel scale"):
        load_vocoder(folder)
    save_file({k: v for k, v in state.items() if k != "mean"}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="lack the mel mean and scale"):
        load_vocoder(folder)
    (folder / "config.json").write_text(json.dumps({**SMALL, "normalize_before": False}))
    assert isinstance(load_vocoder(folder), HiFiGAN)  # not read without normalize_before: not needed


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\xff\xfe"])
def test_a_corrupt_prior_config_is_named_as_such(tmp_path, content):
    DiffusionPrior.tiny().save_pretrained(tmp_path / "prior")
    (tmp_path / "prior" / "config.json").write_text(content, encoding="latin-1")
    with pytest.raises(PriorError, match=r"prior/config.json: (cannot be read as JSON|holds JSON but not an object)"):
        DiffusionPrior.load(tmp_path / "prior")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PriorError, match="neither"):  # a folder without any config is still the wrong kind
        DiffusionPrior.load(tmp_path / "empty")


@pytest.mark.parametrize(
    "error, network",
    [
        (ConnectionError("Max retries exceeded with url"), True),
        (TimeoutError("read timed out"), True),
        (PermissionError(13, "Permission denied", "/cache/models--timm"), False),
        (OSError(28, "No space left on device"), False),
    ],
)
def test_a_failed_download_names_its_cause(tmp_path, monkeypatch, error, network):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(query, "download_pretrained", fail)
    with pytest.raises(QueryEncoderError) as raised:
        QueryEncoder.load("ViT-B-32/openai", cache_dir=str(tmp_path))
    message = str(raised.value)
    assert type(error).__name__ in message and str(error.args[-1]) in message
    assert ("without internet" in message) == network
    assert "ViT-B-32/openai=/path/to/open_clip_pytorch_model.bin" in message


def test_no_cached_weights_no_network_says_how_to_pass_a_file(tmp_path):
    """Independent of what this machine has cached: an empty cache folder (tests run offline)."""
    with pytest.raises(QueryEncoderError, match="pass 'ViT-B-32/openai=/path/to/"):
        QueryEncoder.load("ViT-B-32/openai", cache_dir=str(tmp_path / "empty-cache"))
