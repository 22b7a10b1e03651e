"""The paper's baselines as query modes of CLIPSepSystem: LabelSep (learned label queries)
and PIT (no query, permutation-invariant training)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clipcore.shard_stream import MixBatch
from clipcore.synthetic import INSTRUMENTS, make_clip
from clipsep.losses import best_permutation, mask_loss
from clipsep.system import CLIPSepSystem
from recipes.train_clipsep import main as train_main
from tests.clipsep.test_train import SEGMENT, toy_shards  # noqa: F401  (the module's shards fixture)

ROOT = Path(__file__).resolve().parents[2]
TINY = {"layers": 5, "noise_heads": 0}


def _batch(labels: list[list[str]]) -> MixBatch:
    """Mixtures of toy clips, one clip per label, no query embeddings."""
    count = sum(len(row) for row in labels)
    clips = [make_clip(i, seed=0, duration=1.1).audio[:SEGMENT] for i in range(count)]
    sources = 0.5 * torch.from_numpy(np.stack(clips)).view(len(labels), -1, SEGMENT)
    return MixBatch(mixture=sources.sum(1), sources=sources, embeddings=None, frames=None, labels=labels,
                    keys=[["k"] * len(row) for row in labels])


def _swap(batch: MixBatch) -> MixBatch:
    return MixBatch(mixture=batch.mixture, sources=batch.sources.flip(1), embeddings=None, frames=None,
                    labels=[row[::-1] for row in batch.labels], keys=batch.keys)


def test_label_mode_shapes_and_queries_follow_the_label():
    torch.manual_seed(0)
    system = CLIPSepSystem(preset="tiny", model_args=TINY, query_mode="label", labels=list(INSTRUMENTS[:4]))
    batch = _batch([[INSTRUMENTS[0], INSTRUMENTS[1]], [INSTRUMENTS[2], INSTRUMENTS[0]]])
    queries = system.queries(batch)
    assert queries.shape == (2, 2, 32)
    assert torch.equal(queries[0, 0], queries[1, 1])  # the same label, the same learned query
    assert not torch.allclose(queries[0, 0], queries[0, 1])
    out = system.outputs(batch)
    assert out["mask"].shape == (2, 2, 256, 64) and out["targets"].shape == (2, 2, 256, 64)
    # The mask of a source changes when only its label changes.
    relabelled = _batch([[INSTRUMENTS[3], INSTRUMENTS[1]], [INSTRUMENTS[2], INSTRUMENTS[0]]])
    system.eval()
    with torch.no_grad():
        a, b = system.outputs(batch)["mask"], system.outputs(relabelled)["mask"]
    assert not torch.allclose(a[0, 0], b[0, 0]) and torch.allclose(a[1], b[1])


def test_label_mode_rejects_unknown_labels_and_missing_label_lists():
    system = CLIPSepSystem(preset="tiny", model_args=TINY, query_mode="label", labels=["cello", "flute"])
    with pytest.raises(ValueError, match="no query for the labels \\['tuba'\\]"):
        system.queries(_batch([["cello", "tuba"]]))
    with pytest.raises(ValueError, match="labels must be distinct"):
        CLIPSepSystem(preset="tiny", model_args=TINY, query_mode="label")
    with pytest.raises(ValueError, match="labels must be distinct"):
        CLIPSepSystem(preset="tiny", model_args=TINY, query_mode="label", labels=["cello", "cello"])


def test_best_permutation_finds_the_matching_outputs():
    targets = (torch.rand(3, 3, 8, 4, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    order = torch.tensor([[2, 0, 1], [0, 1, 2], [1, 2, 0]])
    logits = torch.empty_like(targets)
    for b in range(3):  # output order[b, i] is a confident copy of target i
        logits[b, order[b]] = 8 * (2 * targets[b] - 1)
    assert torch.equal(best_permutation(logits, targets, torch.ones(3, 1, 8, 4)), order)


def test_pit_loss_is_permutation_invariant_and_needs_no_query():
    torch.manual_seed(0)
    system = CLIPSepSystem(preset="tiny", model_args=TINY, query_mode="pit", pit_outputs=2).eval()
    batch = _batch([["a", "b"], ["c", "d"]])
    with torch.no_grad():
        out, swapped = system.outputs(batch), system.outputs(_swap(batch))
        loss, loss_swapped = system.loss_terms(out)["loss"], system.loss_terms(swapped)["loss"]
        raw = system.model(out["spec_mix"].abs()[:, None], system.queries(batch))[0]  # outputs in network order
    assert out["mask"].shape == (2, 2, 256, 64)
    assert torch.isclose(loss, loss_swapped, rtol=1e-6)
    # The reported masks follow the sources: swapping the targets swaps them.
    assert torch.allclose(out["mask"], swapped["mask"].flip(1))
    # ... and the loss is the best of the two fixed assignments of the raw outputs.
    fixed = [mask_loss(raw, out["targets"], out["weight"]), mask_loss(raw.flip(1), out["targets"], out["weight"])]
    assert torch.isclose(loss, torch.minimum(*fixed).mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="PIT has 2 outputs but the mixtures have 3 sources"):
        system.queries(_batch([["a", "b", "c"]]))


@pytest.mark.parametrize("mode", ["label", "pit"])
def test_recipe_fast_dev_run_of_the_baselines(toy_shards, tmp_path, mode):  # noqa: F811
    export = tmp_path / "export"
    extra = ["--model.labels", json.dumps(list(INSTRUMENTS))] if mode == "label" else []
    args = [
        "fit", "--config", str(ROOT / "recipes" / "configs" / "clipsep" / "toy.yaml"),
        "--model.query_encoder", str(toy_shards / "encoder"), "--model.export_dir", str(export),
        "--model.query_mode", mode, *extra,
        "--data.train_shards", str(toy_shards / "train" / "*.tar"),
        "--data.val_shards", str(toy_shards / "val" / "*.tar"),
        "--data.encoder", "null", "--data.batch_size", "2", "--data.frame_size", "64",
        "--trainer.fast_dev_run", "true", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path / "run"),
    ]
    cli = train_main(args)
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])
    config = json.loads((export / "last" / "config.json").read_text())
    assert config["provenance"]["query_mode"] == mode
    assert config["provenance"]["labels"] == (list(INSTRUMENTS) if mode == "label" else [])
    rows = {"label": len(INSTRUMENTS), "pit": 2}[mode]
    assert cli.model.model.learned_query.weight.shape[0] == rows
