"""One error base and one exit-status convention for every command line and recipe."""

import numpy as np
import pytest

from clipcore.audio import AudioError
from clipcore.checkpoint import CheckpointError
from clipcore.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, ClipAudioError, UsageError, is_whole_number, report_errors
from clipcore.files import ImageError
from clipcore.prior import PriorError
from clipcore.query import QueryEncoderError
from clipcore.shards import ShardError
from clipsep.separate import QueryError
from clipsonic.generate import GenerationError


@pytest.mark.parametrize("error", [UsageError, AudioError, CheckpointError, ImageError, PriorError,
                                   QueryEncoderError, ShardError, QueryError, GenerationError])
def test_domain_errors_share_one_base(error):
    assert issubclass(error, ClipAudioError) and issubclass(error, ValueError)


def test_a_domain_error_is_one_line_on_stderr_and_status_2(capsys):
    def main():
        raise ShardError("shards/x.tar: no such shard.")

    assert report_errors("train_clipsep", main) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert captured.err == "train_clipsep: error: shards/x.tar: no such shard.\n" and captured.out == ""


def test_the_status_is_mains_int_result_else_0(capsys):
    assert report_errors("clipsep separate", lambda: 1) == 1
    assert report_errors("train_prior", lambda: object()) == 0
    assert capsys.readouterr().err == ""


def test_interruption_is_status_130_and_bugs_keep_their_traceback(capsys):
    def interrupted():
        raise KeyboardInterrupt

    assert report_errors("prepare", interrupted, "interrupted; rerun to resume.") == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "prepare: interrupted; rerun to resume.\n"
    with pytest.raises(ZeroDivisionError):
        report_errors("prepare", lambda: 1 / 0)


def test_a_whole_number_is_any_integer_but_a_bool():
    assert all(is_whole_number(value) for value in (0, -3, 10**30, np.int64(7), np.uint8(1)))
    assert not any(is_whole_number(value) for value in (True, False, 1.0, 1.5, "1", None, np.float32(2)))
