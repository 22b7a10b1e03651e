"""Fine-tuning on a labelled sound library teaches a trained model a new instrument (the
toy world): the sound designer's path, prepare_shards --audio then the fine-tuning recipe."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from clipcore.prompts import CLIPSEP_EVAL_TEMPLATES
from clipcore.query import QueryEncoder
from clipcore.shard_stream import ShardStream
from clipcore.synthetic import make_clip
from clipsep.metrics import separation_scores
from clipsep.system import CLIPSepSystem
from recipes.prepare_shards import main as prepare_main
from recipes.train_clipsep import main as train_main

ROOT = Path(__file__).resolve().parents[2]
SEGMENT = 16383  # 64 STFT frames: two 32-frame blocks of a 5-level U-Net
OLD = ["cello", "flute", "shaker"]
NEW = "trumpet"


def spread_encoder() -> QueryEncoder:
    """A tiny random CLIP whose text embeddings of the toy labels are told apart.

    A random text tower maps every prompt to nearly the same direction (cosine 0.9 and
    more between instruments); removing that common direction from the text projection
    leaves embeddings with mean cosine -0.2 (at most 0.45), as a trained CLIP's would be.
    """
    encoder = QueryEncoder.tiny(seed=2)
    raw = encoder.encode_text_raw([*OLD, NEW], list(CLIPSEP_EVAL_TEMPLATES))
    common = torch.nn.functional.normalize(raw.mean(0), dim=0)
    projection = encoder.model.text_projection
    projection.data = projection.data @ (torch.eye(len(common)) - torch.outer(common, common))
    return encoder


def write_library(folder: Path, names: list[str], files: int, seconds: float, seed: int) -> Path:
    """``<folder>/<instrument>/<instrument>_<k>.wav``: the layout of a sound library."""
    for number, name in enumerate(names):
        for k in range(files):
            clip = make_clip(k * 8 + number, seed=seed, duration=seconds, instrument=name)
            (folder / name).mkdir(parents=True, exist_ok=True)
            sf.write(folder / name / f"{name}_{k:02d}.wav", clip.audio, clip.sample_rate)
    return folder


def sdri_per_label(system: CLIPSepSystem, shards: str, encoder_name: str) -> dict[str, float]:
    """Mean SDRi of each label's sources over held-out mixtures (soft masks, eval mode)."""
    system.eval()
    scores: dict[str, list[float]] = {}
    stream = ShardStream(shards, batch_size=8, segment_samples=SEGMENT, encoder=encoder_name, train=False)
    with torch.no_grad():
        for batch in stream:
            estimates = system.separate(system.outputs(batch), SEGMENT)
            mixture = batch.mixture[:, None].expand_as(batch.sources)
            sdri = separation_scores(batch.sources.flatten(0, 1), (mixture - batch.sources).flatten(0, 1),
                                     estimates.flatten(0, 1), mixture.flatten(0, 1))["sdri"]
            for label, value in zip([label for row in batch.labels for label in row], sdri):
                scores.setdefault(label, []).append(float(value))
    return {label: float(np.nanmean(values)) for label, values in scores.items()}


@pytest.mark.slow
def test_fine_tuning_on_a_labelled_library_learns_a_new_instrument(tmp_path):
    # About 4 minutes of CPU time; 14 minutes of wall time on the shared 2-core machine.
    # Measured (this seed, soft masks as `clipsep separate` applies them): pretrained 300
    # steps without the trumpet, SDRi on held-out mixtures: trumpet 6.9 dB, cello 0.8,
    # flute 11.9, shaker 8.6. After 100 fine-tuning steps (lr 1e-3) on a library of all
    # four: trumpet 19.4 dB (+12.5), cello 2.7, flute 14.5, shaker 8.8.
    # What the never-heard trumpet scores before depends on the rounding of the training
    # run, not on the code: with the U-Net's activations in PyTorch's default layout
    # instead of channels-last it was -7.4 dB (then 17.7 after; the shaker fell 9.6 dB,
    # the forgetting the README describes); with one thread (as under `make test`'s two
    # workers) it was 16.2 dB by chance, then 22.9 (+6.8). So the test asks for the new
    # instrument at 15 dB or more after (the best old one's level: 13.9 to 14.5 dB after)
    # and up by more than 5 dB; the old instruments' mean SDRi down by less than 6 dB.
    encoder = spread_encoder()
    encoder.save_pretrained(tmp_path / "encoder")
    shards = {}
    for name, names, files, seconds, seed in [("pre", OLD, 16, 1.1, 0), ("ft", [*OLD, NEW], 4, 2.2, 1),
                                               ("test", [*OLD, NEW], 8, 1.1, 2)]:
        library = write_library(tmp_path / f"library-{name}", names, files, seconds, seed)
        assert prepare_main([str(library), str(tmp_path / name), "--audio", "--clip-model", str(tmp_path / "encoder"),
                             "--clip-seconds", "1.1", "--shard-size", "16"]) == 0
        shards[name] = str(tmp_path / name / "*.tar")

    torch.manual_seed(0)
    system = CLIPSepSystem(preset="tiny", model_args={"layers": 5, "noise_heads": 0, "segment_samples": SEGMENT},
                           query_encoder=str(tmp_path / "encoder"))
    optimizer = torch.optim.Adam(system.model.parameters(), lr=3e-3)
    for batch in ShardStream(shards["pre"], batch_size=8, segment_samples=SEGMENT, encoder=encoder.name,
                             epoch_length=300, shuffle_buffer=64):
        loss = system.loss_terms(system.outputs(batch))["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(system.model.parameters(), 1.0)
        optimizer.step()
    system.export(tmp_path / "pretrained")
    before = sdri_per_label(system, shards["test"], encoder.name)

    train_main([
        "fit", "--config", str(ROOT / "recipes" / "configs" / "clipsep" / "finetune.yaml"),
        "--model.init_from", str(tmp_path / "pretrained"), "--model.export_dir", str(tmp_path / "finetuned"),
        "--model.learning_rate", "0.001", "--model.warmup_steps", "10", "--model.decay_steps", "100",
        "--data.train_shards", shards["ft"], "--data.val_shards", shards["ft"], "--data.encoder", encoder.name,
        "--data.segment_samples", str(SEGMENT), "--data.num_workers", "0", "--data.epoch_length", "100",
        "--trainer.accelerator", "cpu", "--trainer.max_steps", "100", "--trainer.val_check_interval", "null",
        "--trainer.check_val_every_n_epoch", "1", "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
    ])
    after = sdri_per_label(CLIPSepSystem(init_from=str(tmp_path / "finetuned" / "last")), shards["test"], encoder.name)
    facts = {"before": before, "after": after}
    print(json.dumps(facts))
    old_drop = np.mean([before[name] for name in OLD]) - np.mean([after[name] for name in OLD])
    assert after[NEW] >= 15.0 and after[NEW] - before[NEW] > 5.0, facts
    assert old_drop < 6.0, facts
