"""The SLURM example: the recipe command it builds (checked with --print_config), its
global-batch arithmetic, and its requeue near the time limit (stub srun and scontrol)."""

import contextlib
import os
import signal
import subprocess
import sys
import time

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


def _stub_job(tmp_path, srun_body):
    """Run the script under stubs: ``srun`` (``srun_body``, its pid in ``srun.pid``) and an
    ``scontrol`` that records its arguments and, as SLURM's requeue does, terminates the step."""
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "srun").write_text(f'#!/bin/bash\necho $$ > "{tmp_path}/srun.pid"\n{srun_body}\n')
    (stub / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/scontrol.log"\n'
                                   f'kill -TERM "$(cat "{tmp_path}/srun.pid")"\n')
    for name in ("srun", "scontrol"):
        (stub / name).chmod(0o755)
    variables = {**os.environ, "PATH": f"{stub}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "RUN": str(tmp_path / "run")}
    return subprocess.Popen(["bash", str(SCRIPT)], cwd=ROOT, env=variables, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_sigusr1_near_the_time_limit_requeues_the_job(tmp_path):
    # The training step: runs until terminated, and says so.
    job = _stub_job(tmp_path, f'trap \'echo terminated > "{tmp_path}/srun.log"; exit 143\' TERM\n'
                              'while true; do sleep 0.1; done')
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "srun.pid").exists() and time.monotonic() < deadline:  # training has started
            time.sleep(0.05)
        job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 sends 5 minutes before the limit
        out, err = job.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):  # nothing may outlive a failed test
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 0, err
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    assert (tmp_path / "srun.log").read_text() == "terminated\n"  # the script waited for training to stop
    assert "requeueing job 4242" in out


def test_a_training_failure_is_the_job_status_and_not_requeued(tmp_path):
    job = _stub_job(tmp_path, "exit 3")
    job.communicate(timeout=30)
    assert job.returncode == 3 and not (tmp_path / "scontrol.log").exists()
