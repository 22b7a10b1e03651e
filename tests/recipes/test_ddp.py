"""Scale-out: the CLIPSep recipe under 2-process DDP (gloo, CPU), and disjoint rank streams."""

import math

import pytest
import torch

from clipcore.shard_stream import ShardStream
from tests.recipes.scaleout_helpers import SEGMENT, clipsep_args, read_records, run_recipe, toy_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Eight toy clips as one shard (``one/``) and as four (``four/``); six validation
    clips in three shards (``val/``: two ranks would split them unequally)."""
    root = tmp_path_factory.mktemp("shards")
    toy_shards(root / "four", clips=8, shard_size=2)
    toy_shards(root / "val", clips=6, shard_size=2)
    return root, toy_shards(root / "one", clips=8, shard_size=8)


@pytest.mark.parametrize("layout", ["one", "four"])  # fewer shards than consumers (split by sample), as many
def test_resampled_consumers_read_disjoint_samples(shards, layout):
    root, encoder = shards
    paths = sorted(str(p) for p in (root / layout).glob("*.tar"))
    seen = []
    for rank in range(4):  # 4 ranks of one worker = 4 consumers
        stream = ShardStream(paths, batch_size=2, segment_samples=SEGMENT, encoder=encoder, epoch_length=4,
                             shuffle_buffer=4, frame_size=32)
        stream.rank, stream.world_size = rank, 4
        seen.append({key for batch in stream for keys in batch.keys for key in keys})
    for rank, keys in enumerate(seen):
        assert keys, f"rank {rank} got nothing"
        for other in seen[rank + 1:]:
            assert not keys & other


@pytest.mark.slow
def test_two_process_ddp_fit_ranks_see_disjoint_samples(shards, tmp_path):
    root, encoder = shards
    run, records = tmp_path / "run", tmp_path / "records"
    args = clipsep_args(
        str(root / "one" / "*.tar"), encoder, run, records,
        "--data.epoch_length", "4", "--trainer.max_steps", "4", "--checkpoint.every_n_train_steps", "2",
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.precision", "bf16-mixed", "--trainer.accumulate_grad_batches", "2",
        # one validation at the end, with media and the best/last export on rank 0
        "--data.val_shards", str(root / "val" / "*.tar"), "--trainer.limit_val_batches", "null",
        "--trainer.val_check_interval", "null", "--trainer.check_val_every_n_epoch", "2",
        "--trainer.num_sanity_val_steps", "0", "--model.val_examples", "1",
    )
    done = run_recipe(args)
    assert done.returncode == 0, done.stderr[-3000:]
    batches = [r for r in read_records(records) if r["event"] == "batch"]
    by_rank = {rank: [r for r in batches if r["rank"] == rank] for rank in (0, 1)}
    # 4 optimizer steps x 2 accumulated batches on each of 2 ranks, in bf16 autocast
    assert [len(by_rank[0]), len(by_rank[1])] == [8, 8]
    assert {r["world"] for r in batches} == {2} and {r["precision"] for r in batches} == {"bf16-mixed"}
    assert [r["step"] for r in by_rank[0]] == [0, 1, 1, 2, 2, 3, 3, 4]
    assert all(math.isfinite(r["loss"]) for r in batches)
    keys = [{key for r in by_rank[rank] for key in r["keys"]} for rank in (0, 1)]
    assert keys[0] and keys[1] and not keys[0] & keys[1], keys
    assert by_rank[0][0]["random"] != by_rank[1][0]["random"]  # each rank its own random stream
    saved = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert saved == ["epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt", "last.ckpt"]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 4
    assert last["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 4}]
    exported = list(run.glob("lightning_logs/version_*/pretrained/last/model.safetensors"))
    assert len(exported) == 1 and list(run.glob("lightning_logs/version_*/media/*.png"))
