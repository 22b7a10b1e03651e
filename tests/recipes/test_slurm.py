"""The SLURM example: the recipe command it builds (checked with --print_config), and its
global-batch arithmetic."""

import os
import subprocess
import sys

import yaml

from tests.recipes.scaleout_helpers import ROOT

SCRIPT = ROOT / "recipes" / "slurm" / "train_clipsep.sbatch"


def _sbatch(tmp_path, nodes, gpus, *args, **env):
    stub = tmp_path / "bin"
    stub.mkdir(exist_ok=True)
    (stub / "srun").write_text('#!/bin/sh\nwhile [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n')  # drop options
    (stub / "srun").chmod(0o755)
    variables = {**os.environ, "PATH": f"{stub}:{os.environ['PATH']}", "PYTHON": sys.executable,
                 "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_NTASKS_PER_NODE": str(gpus), "RUN": str(tmp_path / "run"),
                 "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=variables, capture_output=True, text=True,
                          timeout=120)


def test_sbatch_keeps_the_global_batch_and_resumes_from_last(tmp_path):
    done = _sbatch(tmp_path, 1, 2, "--print_config", ACCUMULATE="4")
    assert done.returncode == 0, done.stderr[-2000:]
    header, _, printed = done.stdout.partition("\n")
    assert "1 x 2 GPUs x 4 accumulation x batch 4 = 32" in header
    config = yaml.safe_load(printed)
    trainer = config["trainer"]
    assert (trainer["num_nodes"], int(trainer["devices"]), trainer["accumulate_grad_batches"]) == (1, 2, 4)
    assert (trainer["strategy"], trainer["precision"], config["data"]["batch_size"]) == ("ddp", "bf16-mixed", 4)
    assert trainer["default_root_dir"] == str(tmp_path / "run") and config["ckpt_path"] == "last"
    assert config["checkpoint"]["every_n_train_steps"] == 1000 and config["checkpoint"]["save_last"] is True


def test_sbatch_refuses_a_batch_that_does_not_split(tmp_path):
    done = _sbatch(tmp_path, 1, 3, "--print_config")
    assert done.returncode == 2 and "does not split into 1 nodes x 3 GPUs" in done.stderr
