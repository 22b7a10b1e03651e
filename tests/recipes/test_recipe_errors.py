"""Training recipes report expected failures in one line, not a traceback."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_missing_shards_give_one_line_and_a_failing_status(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "train_clipsep.py"), "fit",
         "--config", str(ROOT / "recipes" / "configs" / "clipsep" / "toy.yaml"),
         "--data.train_shards", str(tmp_path / "none-*.tar"), "--data.val_shards", str(tmp_path / "none-*.tar"),
         "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 2  # bad input: clipcore.errors.EXIT_BAD_INPUT
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"train_clipsep: error: no shards match {tmp_path}/none-*.tar."
