"""Scale-out: a training process killed with SIGKILL resumes with ``--ckpt_path last``; one
stopped with SIGTERM (a preemption) saves a checkpoint first and resumes from there."""

import math
import signal

import pytest
import torch

from clipsep.system import lr_multiplier
from recipes.train_clipsep import main as train_main
from tests.recipes.scaleout_helpers import clipsep_args, read_records, start_paused, toy_shards


def _checkpoints(run):
    return sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))


@pytest.mark.slow
def test_killed_and_preempted_runs_resume_from_their_last_checkpoint(tmp_path):
    encoder = toy_shards(tmp_path / "shards", clips=8, shard_size=8)
    run, records = tmp_path / "run", tmp_path / "records"
    # epochs of 4 batches, a checkpoint every 3 steps: the one at step 3 is mid-epoch
    args = clipsep_args(str(tmp_path / "shards" / "*.tar"), encoder, run, records, "--data.epoch_length", "4",
                        "--trainer.max_steps", "8", "--checkpoint.every_n_train_steps", "3",
                        "--checkpoint.save_on_exception", "true", "--ckpt_path", "last")

    # 1. SIGKILL at step 5: nothing is saved after the checkpoint of step 3
    process = start_paused(args, 5, tmp_path / "paused-1")
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert _checkpoints(run) == ["epoch=0-step=3.ckpt", "last.ckpt"]
    killed = read_records(records)
    assert max(r["step"] for r in killed) == 5

    # 2. the same command resumes at step 3, not 0; SIGTERM at step 5 saves step 5 and stops
    process = start_paused(args, 5, tmp_path / "paused-2")
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    preempted = read_records(records)[len(killed):]
    start, batches = preempted[0], preempted[1:]
    assert start["event"] == "start" and start["step"] == 3  # step, optimizer and schedule from step 3
    assert start["scheduler_steps"] == 3 and start["optimizer_steps"] == 3
    assert math.isclose(start["lr"], 1e-3 * lr_multiplier(3, 2, 6, 0.1))
    # the data continue mid-epoch: the last batch of epoch 0, then epoch 1
    assert [(r["batch_idx"], r["step"]) for r in batches] == [(3, 4), (0, 5)]
    assert all(math.isfinite(r["loss"]) for r in batches)
    assert _checkpoints(run) == ["epoch=0-step=3.ckpt", "epoch=1-step=5.ckpt", "last.ckpt"]

    # 3. and again: from step 5 to the end
    cli = train_main(args)
    assert cli.trainer.state.finished and cli.trainer.global_step == 8
    final = read_records(records)[len(killed) + len(preempted):]
    assert final[0]["event"] == "start" and final[0]["step"] == 5 and final[0]["optimizer_steps"] == 5
    assert [(r["batch_idx"], r["step"]) for r in final[1:]] == [(1, 6), (2, 7), (3, 8)]
    assert all(math.isfinite(r["loss"]) for r in final[1:])
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 8 and all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_checkpointing_can_be_switched_off(tmp_path):
    encoder = toy_shards(tmp_path / "shards", clips=4, shard_size=4)
    run = tmp_path / "run"
    cli = train_main(clipsep_args(str(tmp_path / "shards" / "*.tar"), encoder, run, tmp_path / "records",
                                  "--data.epoch_length", "2", "--trainer.max_steps", "2",
                                  "--trainer.enable_checkpointing", "false"))
    assert cli.trainer.global_step == 2 and not cli.trainer.checkpoint_callbacks
    assert not list(run.rglob("*.ckpt"))
