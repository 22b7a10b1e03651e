"""Scale-out: a training process killed with SIGKILL resumes with ``--ckpt_path last``."""

import math
import os
import signal
import subprocess
import sys
import time

import torch

from clipsep.system import lr_multiplier
from recipes.train_clipsep import main as train_main
from tests.recipes.scaleout_helpers import ROOT, clipsep_args, read_records, toy_shards


def test_sigkilled_run_resumes_from_its_last_checkpoint(tmp_path):
    encoder = toy_shards(tmp_path / "shards", clips=8, shard_size=8)
    run, records, marker = tmp_path / "run", tmp_path / "records", tmp_path / "paused"
    # epochs of 4 batches, a checkpoint every 3 steps: the one at step 3 is mid-epoch
    args = clipsep_args(str(tmp_path / "shards" / "*.tar"), encoder, run, records,
                        "--data.epoch_length", "4", "--trainer.max_steps", "8", "--checkpoint.every_n_train_steps", "3")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    pause = ["--trainer.callbacks+=tests.recipes.scaleout_helpers.PauseAt", "--trainer.callbacks.step", "5",
             "--trainer.callbacks.marker", str(marker)]
    process = subprocess.Popen([sys.executable, str(ROOT / "recipes" / "train_clipsep.py"), *args, *pause],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), process.stderr.read()[-3000:] if process.poll() is not None else "timed out"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (run / "checkpoints").glob("*.ckpt")) == ["epoch=0-step=3.ckpt", "last.ckpt"]
    first = read_records(records)
    assert max(r["step"] for r in first) == 5  # killed at step 5, two steps after the checkpoint

    cli = train_main([*args, "--ckpt_path", "last"])
    assert cli.trainer.state.finished and cli.trainer.global_step == 8
    resumed = read_records(records)[len(first):]
    start, batches = resumed[0], resumed[1:]
    # step, optimiser and schedule come back from step 3, not from zero
    assert start["event"] == "start" and start["step"] == 3
    assert start["scheduler_steps"] == 3 and start["optimizer_steps"] == 3
    assert math.isclose(start["lr"], 1e-3 * lr_multiplier(3, 2, 6, 0.1))
    # the data continue mid-epoch: the last batch of epoch 0, then a whole epoch 1
    assert [(r["batch_idx"], r["step"]) for r in batches] == [(3, 4), (0, 5), (1, 6), (2, 7), (3, 8)]
    assert all(math.isfinite(r["loss"]) for r in batches)
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 8 and all(torch.isfinite(v).all() for v in last["state_dict"].values())
