import subprocess
import sys

import pytest


@pytest.mark.parametrize("prog", ["clipsep", "clipsonic"])
def test_help(prog):
    result = subprocess.run([sys.executable, "-m", f"{prog}.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert prog in result.stdout
    assert "Traceback" not in result.stderr
