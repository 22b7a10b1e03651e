"""The training recipe on toy shards, and an overfitting test of the whole system."""

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from clipcore import synthetic
from clipcore.query import QueryEncoder
from clipsonic.generate import Generator, sample_mels
from clipsonic.system import CLIPSonicSystem
from recipes.train_clipsonic import main
from tests.clipcore.test_plots import readable_image_problems
from tests.clipsonic.helpers import instrument_clips, one_source_batch, unit_vectors

TOY_CONFIG = Path(__file__).resolve().parents[2] / "recipes" / "configs" / "clipsonic" / "toy.yaml"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    encoder = QueryEncoder.tiny(seed=0)
    encoder.save_pretrained(root / "query_encoder")
    synthetic.write_toy_shards(root / "shards", 8, seed=0, shard_size=8, encoder=encoder, duration=1.0, frame_size=32)
    return root, encoder.name


def _args(root: Path, *extra: str) -> list[str]:
    shards = str(root / "shards" / "toy-000000.tar")
    return [
        "fit", "--config", str(TOY_CONFIG), "--model.query_encoder", str(root / "query_encoder"),
        "--data.train_shards", shards, "--data.val_shards", shards, "--data.segment_samples", "8000",
        "--data.batch_size", "4", "--model.mel_stats_batches", "1", "--model.val_steps", "2",
        "--model.val_examples", "2", *extra,
    ]


def test_recipe_fast_dev_run_on_toy_shards_with_precomputed_embeddings(toy):
    root, encoder_name = toy
    cli = main(_args(root, "--data.encoder", encoder_name, "--trainer.fast_dev_run", "true"))
    assert bool(cli.model.stats_ready)
    model = cli.model.model
    assert model.mel_std.min() > 0 and not torch.equal(model.mel_mean, torch.full((64,), -5.0))
    # The condition statistics come from the shards' embeddings: their mean is far from 0.
    assert model.cond_mean.norm() > 0.5 and 0 < model.cond_std.item() < 1 / 32**0.5
    torch.testing.assert_close(cli.model.ema.cond_mean, model.cond_mean)


def test_a_diverging_run_stops_at_its_first_nan_in_one_sentence(toy, tmp_path, capsys):
    """A learning rate far too high: the run stops at the first non-finite loss (it went on
    to the end, writing checkpoints of NaN weights), with one line and status 2."""
    from clipcore.errors import report_errors

    root, encoder_name = toy
    args = _args(root, "--data.encoder", encoder_name, "--model.learning_rate", "1e12", "--model.warmup_steps", "0",
                 "--trainer.max_steps", "12", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar",
                 "false", "--trainer.default_root_dir", str(tmp_path))
    assert report_errors("train_clipsonic", lambda: main(args)) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("train_clipsonic: error: step ") and "the training loss is not finite" in error
    assert "lower model.learning_rate (1e+12)" in error and len(error.splitlines()) == 1
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("*.safetensors"))


def test_recipe_trains_in_bf16_mixed_precision_and_logs_its_validation_examples(toy, tmp_path):
    # The validation examples are sampled under autocast: their bf16 mels went to Griffin-Lim,
    # which has no bf16 complex type (ValueError before 2026-12-06).
    root, encoder_name = toy
    cli = main(_args(root, "--data.encoder", encoder_name, "--trainer.precision", "bf16-mixed",
                     "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
                     "--trainer.limit_val_batches", "1", "--trainer.default_root_dir", str(tmp_path)))
    assert cli.trainer.precision == "bf16-mixed" and cli.trainer.global_step == 2
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])
    media = sorted(p.suffix for p in (tmp_path / "lightning_logs" / "version_0" / "media").iterdir())
    assert media.count(".png") >= 2 and media.count(".wav") >= 2


def test_recipe_run_from_frames_logs_media_saves_config_and_exports(toy, tmp_path):
    root, _ = toy
    main(_args(root, "--data.encoder", "null", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
               "--trainer.limit_val_batches", "1", "--trainer.default_root_dir", str(tmp_path)))
    run = tmp_path / "lightning_logs" / "version_0"
    assert "seed_everything: 0" in (run / "config.yaml").read_text()
    media = sorted(p.suffix for p in (run / "media").iterdir())
    assert media.count(".png") >= 2 and media.count(".wav") >= 2
    for png in (run / "media").glob("*.png"):
        assert not readable_image_problems(np.asarray(Image.open(png).convert("RGB"))), png.name
    generator = Generator.from_pretrained(run / "model")
    provenance = generator.model.provenance
    assert provenance["global_step"] == 2 and "seed_everything" in provenance["run_config"]
    assert "git_commit" in provenance
    result = generator.generate(text="a photo of a cello", mode="zs", steps=2, duration=0.25)
    assert result.waveforms.shape == (1, 1, 4000)


class _TwoInstruments(IterableDataset):
    """Endless batches of two instruments, each clip conditioned on its instrument's vector."""

    def __init__(self, clips: dict[str, torch.Tensor], conditions: torch.Tensor, batch_size: int):
        self.names, self.clips, self.conditions, self.batch_size = list(clips), clips, conditions, batch_size

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        while True:
            pick = torch.randint(0, 2, (self.batch_size,), generator=g).tolist()
            index = torch.randint(0, 32, (self.batch_size,), generator=g).tolist()
            audio = torch.stack([self.clips[self.names[p]][i] for p, i in zip(pick, index)])
            yield one_source_batch(audio, self.conditions[pick], [self.names[p] for p in pick])


@pytest.mark.slow
def test_overfits_two_instruments_each_with_its_own_condition():
    """After a short training on cello and shaker clips, generated mels are closer to their
    own instrument than to the other. Distance: Euclidean distance between the mean log-mel
    spectrum (64 rows, averaged over time) of a generated clip and that of an instrument's
    training clips."""
    clips = {"cello": instrument_clips("cello", 32, 5120, seed=1), "shaker": instrument_clips("shaker", 32, 5120, seed=2)}
    conditions = unit_vectors(2, seed=0)
    system = CLIPSonicSystem(model_args={"block_out_channels": [16, 32, 32]}, prediction_type="v_prediction",
                             learning_rate=3e-3, warmup_steps=10, ema_decay=0.9, mel_stats_batches=0, val_examples=0)
    system.model.set_mel_statistics(system.model.log_mel(torch.cat(list(clips.values()))))
    system.ema.load_state_dict(system.model.state_dict())
    trainer = L.Trainer(max_steps=80, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(system, DataLoader(_TwoInstruments(clips, conditions, batch_size=12), batch_size=None))

    model = system.ema.eval()
    profiles = {name: model.log_mel(audio).mean((0, 2)) for name, audio in clips.items()}
    mels = sample_mels(model, conditions.repeat_interleave(2, 0), 32, seeds=[0, 1, 0, 1], steps=10, guidance=2.0)
    for mel, name in zip(mels, ["cello", "cello", "shaker", "shaker"]):
        distance = {other: (mel.mean(-1) - profile).norm().item() for other, profile in profiles.items()}
        own, other = distance[name], distance[next(n for n in profiles if n != name)]
        assert own < 0.5 * other, (name, distance)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_min_snr_weights(prediction_type):
    """Min-SNR-gamma: with v prediction the weight is min(SNR, gamma) / (SNR + 1), with
    epsilon min(SNR, gamma) / SNR; noisy steps (SNR below gamma) keep their natural weight
    and nearly clean ones are damped. Without gamma every step weighs 1."""
    t = torch.tensor([0, 100, 500, 999])
    plain = CLIPSonicSystem(model_args={"block_out_channels": [16, 32, 32]}, prediction_type=prediction_type)
    assert torch.equal(plain.loss_weights(t), torch.ones(4))
    system = CLIPSonicSystem(model_args={"block_out_channels": [16, 32, 32]}, prediction_type=prediction_type,
                             snr_gamma=5.0)
    alphas = system.noise_scheduler.alphas_cumprod[t]
    snr = alphas / (1 - alphas)
    assert snr[0] > 5 > snr[-1]  # both regimes are covered
    natural = snr / (snr + 1) if prediction_type == "v_prediction" else torch.ones(4)
    expected = torch.where(snr < 5, natural, 5 / (snr + 1) if prediction_type == "v_prediction" else 5 / snr)
    assert torch.allclose(system.loss_weights(t), expected)
    assert system.loss_weights(t)[0] < 0.5 * natural[0]  # the cleanest step is damped


@pytest.mark.parametrize("setting, message", [
    ({"ema_decay": 2.0}, "ema_decay must be at least 0 and below 1, not 2.0."),
    ({"condition_dropout": 1.5}, "condition_dropout must be between 0 and 1, not 1.5."),
    ({"snr_gamma": -1.0}, "snr_gamma must be positive (or null), not -1.0."),
    ({"val_steps": 0}, "val_steps must be at least 1, not 0."),
])
def test_settings_out_of_range_are_refused_by_name(setting, message):
    with pytest.raises(ValueError) as raised:
        CLIPSonicSystem(**setting)
    assert str(raised.value) == message
