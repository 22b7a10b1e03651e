import json
import math
import re

import numpy as np
import pytest
import torch
from scipy import linalg

from clipcore import synthetic
from clipcore.errors import ClipAudioError, UsageError
from clipcore.modality_gap import ModalityGap
from clipcore.prior import DiffusionPrior
from clipcore.query import QueryEncoder
from clipsonic.metrics import (
    MelStatistics,
    embed_audio,
    frechet_distance,
    gaussian_statistics,
    knn_accuracy,
    load_embedding,
    nearest_references,
    query_relevance,
)
from clipsonic.model import CLIPSonic
from recipes.evaluate_clipsonic import main as evaluate


class _Energy:
    """A pluggable embedding for the test: frame energies at 8 kHz."""

    sample_rate = 8000

    def __init__(self, frame: int = 400):
        self.frame = frame

    def __call__(self, wave):
        return wave.unfold(-1, self.frame, self.frame).pow(2).mean(-1, keepdim=True)


def make_energy(frame: int = 400):
    return _Energy(frame)


def test_frechet_distance_matches_the_closed_form_and_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3)) * [1.0, 2.0, 0.5]
    b = rng.normal(size=(4000, 3)) * [2.0, 1.0, 0.5] + [1.0, 0.0, 0.0]
    # Diagonal covariances: |mu_a - mu_b|^2 + sum (sigma_a - sigma_b)^2 = 1 + 1 + 1 + 0.
    assert frechet_distance(a, b) == pytest.approx(3.0, abs=0.15)
    x, y = rng.normal(size=(300, 6)), rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    mx, my, cx, cy = x.mean(0), y.mean(0), np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    expected = ((mx - my) ** 2).sum() + np.trace(cx + cy - 2 * linalg.sqrtm(cx @ cy).real)
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    # A reference's statistics measured once stand for its vectors, on either side.
    assert frechet_distance(x, gaussian_statistics(y)) == frechet_distance(gaussian_statistics(x), y) == frechet_distance(x, y)
    with pytest.raises(ValueError, match="of one size"):
        frechet_distance(x, y[:, :3])
    with pytest.raises(ValueError, match="at least 2 vectors"):
        frechet_distance(x[:1], y)


def test_mel_statistics_fad_separates_instruments():
    rng = np.random.default_rng(1)
    clips = {name: torch.from_numpy(np.stack([synthetic.synthesize(name, 1.0, 16000, rng) for _ in range(8)]))
             for name in ("flute", "drum")}
    model = load_embedding("mel-stats", window=0.1)
    assert isinstance(model, MelStatistics)
    emb = {name: embed_audio(model, wave, 16000) for name, wave in clips.items()}
    assert emb["flute"].shape == (8, 10, 128)
    half = {name: (e[:4].flatten(0, 1), e[4:].flatten(0, 1)) for name, e in emb.items()}
    same = max(frechet_distance(*half["flute"]), frechet_distance(*half["drum"]))
    different = frechet_distance(half["flute"][0], half["drum"][1])
    assert different > 4 * same


def test_pluggable_embedding_factory_and_resampling():
    model = load_embedding("tests.clipsonic.test_metrics:make_energy", frame=800)
    wave = torch.ones(2, 16000) * 0.5
    out = embed_audio(model, wave, 16000)
    assert out.shape == (2, 10, 1)  # resampled to 8 kHz, 800-sample frames
    torch.testing.assert_close(out[:, 2:-2], torch.full((2, 6, 1), 0.25, dtype=torch.float64), atol=1e-3, rtol=0)
    for spec, reason in (("nothing", "use 'mel-stats' or 'package.module:factory'"),
                         ("no_such_module:f", "cannot be imported \\(No module named 'no_such_module'\\)"),
                         ("math:no_such_function", "cannot be imported \\(module 'math' has no attribute")):
        with pytest.raises(ValueError, match=f"embedding '{spec}'.* {reason}"):
            load_embedding(spec)


def test_relevance_and_knn_accuracy_on_a_hand_made_case():
    references = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    reference_clip = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    generated = torch.tensor([[0.05, 0.0], [5.0, 5.1]])
    neighbours = nearest_references(generated, references, k=2)
    assert sorted(neighbours[0].tolist()) == [0, 1] and sorted(neighbours[1].tolist()) == [2, 3]
    queries = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    relevance = query_relevance(queries, neighbours, reference_clip)
    torch.testing.assert_close(relevance, torch.tensor([1.0, 1 / math.sqrt(2)], dtype=torch.float64))
    labels = ["a", "a", "b", "b"]
    assert knn_accuracy(["a", "b"], neighbours, labels) == 1.0
    assert knn_accuracy(["b", "b"], neighbours, labels) == 0.5


def test_evaluation_recipe_runs_all_modes_on_toy_shards(tmp_path, capsys):
    encoder = QueryEncoder.tiny(seed=0)
    synthetic.write_toy_shards(tmp_path / "shards", 4, seed=0, encoder=encoder, duration=1.0, frame_size=32)
    checkpoint = tmp_path / "ckpt"
    CLIPSonic.tiny(seed=0).save_pretrained(checkpoint)
    encoder.save_pretrained(checkpoint / "query_encoder")
    DiffusionPrior.tiny(seed=0).save_pretrained(checkpoint / "prior")
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    gap = ModalityGap.measure(encoder.encode_image(images), encoder.encode_text(["cello", "flute", "drum"]))
    gap.save(tmp_path / "gap.json")
    out = tmp_path / "report.json"
    args = ["--checkpoint", str(checkpoint), "--reference-shards", str(tmp_path / "shards" / "toy-000000.tar"),
            "--encoder", encoder.name, "--modes", "image", "zs", "pd", "gap", "-n", "1", "--steps", "1",
            "--duration", "0.3", "--k", "1", "--out", str(out)]
    with pytest.raises(UsageError, match="mode gap needs --gap FILE"):
        evaluate(args)
    for bad, message in ((["--duration", "nan"], "--duration must be a positive number of seconds, got nan."),
                         (["--guidance", "inf"], "--guidance must be a number from -100 to 100, not inf."),
                         (["--k", "0"], "--k must be at least 1, got 0."),
                         (["-n", "0"], "-n must be at least 1, got 0."),  # a message about embeddings before
                         (["-n", "-1"], "-n must be at least 1, got -1."),  # a reference per label dropped before
                         (["--duration", "1.5", "--gap", str(tmp_path / "gap.json")],  # padded with silence before
                          f"--duration 1.5 s is longer than the reference clips of {tmp_path / 'shards' / 'toy-000000.tar'} "
                          "(the shortest lasts 1.00 s), whose end would be compared as silence; give --duration 1 or less."),
                         (["--duration", "0.001"], "--duration must be at least"),  # a traceback in the references' mels
                         (["--encoder", "other", "--gap", str(tmp_path / "gap.json")],
                          "could be used; the last problem: .* no other.npy member"),  # "no reference clips" before
                         (["--gap", str(tmp_path / "gap.json"), "--out", str(tmp_path / "gap.json")],
                          "gap.json: is the input of --gap")):
        with pytest.raises(ClipAudioError, match=message.replace("(", r"\(").replace(")", r"\)")):
            evaluate([*args, *bad])
    assert ModalityGap.load(tmp_path / "gap.json").embed_dim == gap.embed_dim  # the input is intact
    report = evaluate([*args, "--gap", str(tmp_path / "gap.json")])
    assert json.loads(out.read_text()) == report
    assert report["reference_clips"] == 4 and report["queries"] == 4
    for mode in ("image", "zs", "pd", "gap"):
        entry = report["modes"][mode]
        assert entry["clips"] == 4 and math.isfinite(entry["fad"]) and -1 <= entry["relevance"] <= 1
        assert 0 <= entry["knn_accuracy"] <= 1
    assert "relevance" in capsys.readouterr().out


def test_evaluation_recipe_refuses_an_unwritable_out_before_loading_a_model(tmp_path):
    (tmp_path / "notes").write_text("a file")
    # No checkpoint, no shards: the --out problem is found first, not after the evaluation.
    args = ["--checkpoint", str(tmp_path / "missing"), "--reference-shards", str(tmp_path / "none.tar")]
    for out, message in ((tmp_path, f"--out {tmp_path}: is a folder; a file cannot be written there."),
                         (tmp_path / "notes" / "r.json", f"--out {tmp_path / 'notes'}: is a file, not a folder."),
                         (tmp_path / "notes" / "a" / "r.json",
                          f"--out {tmp_path / 'notes' / 'a'}: lies below the file {tmp_path / 'notes'}, not a folder.")):
        with pytest.raises(UsageError) as refused:
            evaluate([*args, "--out", str(out)])
        assert str(refused.value) == message


def test_evaluation_recipe_refuses_an_out_that_is_an_input(tmp_path):
    """A reference shard (a brace or glob expanded), or a file of the checkpoint folder: the report
    replaced them."""
    for name in ("ref-000000.tar", "ref-000001.tar"):
        (tmp_path / name).write_bytes(b"a shard")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    args = ["--checkpoint", str(tmp_path / "model"), "--reference-shards", str(tmp_path / "ref-00000{0..1}.tar")]
    for out, option in ((tmp_path / "ref-000001.tar", f"--reference-shards ({tmp_path / 'ref-000001.tar'})"),
                        (tmp_path / "model" / "config.json", "--checkpoint")):
        with pytest.raises(UsageError, match=re.escape(option)):
            evaluate([*args, "--out", str(out)])
    assert (tmp_path / "ref-000001.tar").read_bytes() == b"a shard"
    assert (tmp_path / "model" / "config.json").read_text() == "{}"
