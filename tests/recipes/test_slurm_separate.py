"""recipes/slurm/separate.sbatch: its tasks, started as srun starts them, separate a folder."""

import os
import subprocess
import sys

import numpy as np
import soundfile as sf

from clipcore.query import QueryEncoder
from clipsep.model import CLIPSep
from clipsep.separate import Separator
from tests.recipes.scaleout_helpers import ROOT

SCRIPT = ROOT / "recipes" / "slurm" / "separate.sbatch"

# srun stand-in: starts SLURM_NTASKS copies of the command with each task's variables.
SRUN = """#!/bin/bash
while [ "${1#-}" != "$1" ]; do shift; done
for ((task = 0; task < SLURM_NTASKS; task++)); do
    SLURM_PROCID=$task SLURM_LOCALID=$task "$@" > "$LOGS/task$task.out" 2>&1 &
done
status=0
for job in $(jobs -p); do wait $job || status=$?; done
exit $status
"""


def test_the_tasks_share_a_folder(tmp_path):
    checkpoint = tmp_path / "ckpt"
    Separator(CLIPSep.tiny(query_dim=16), QueryEncoder.tiny(embed_dim=16)).save_pretrained(checkpoint)
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for index in range(5):
        sf.write(inputs / f"take{index}.wav", rng.normal(0, 0.1, 16000 * (1 + index)).astype(np.float32), 16000)
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "srun").write_text(SRUN)
    (stub / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{stub}:{os.environ['PATH']}", "PYTHON": sys.executable, "LOGS": str(tmp_path),
           "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1", "SLURM_NTASKS": "2",
           "SLURM_NTASKS_PER_NODE": "2", "CHECKPOINT": str(checkpoint), "OUT": str(tmp_path / "out"), "DEVICE": "cpu"}
    done = subprocess.run(["bash", str(SCRIPT), "-q", "violin", str(inputs)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    logs = [(tmp_path / f"task{task}.out").read_text() for task in range(2)]
    assert done.returncode == 0, (done.stderr, logs)
    assert "2 processes on cpu" in done.stdout
    assert all(f"[rank {task} of 2] Separated" in log for task, log in enumerate(logs)), logs
    for index in range(5):
        assert (tmp_path / "out" / f"take{index}" / "separation.json").is_file()
    assert subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True).returncode == 2  # no inputs
