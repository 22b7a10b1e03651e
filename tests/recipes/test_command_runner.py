"""The quick start's runner: lanes of commands and calls, their values, logs and failures."""

import sys
import threading

import pytest

from recipes.command_runner import Runner, StepFailed


def test_lanes_run_commands_and_calls_and_return_what_the_calls_returned(tmp_path):
    runner = Runner(tmp_path)
    order = []
    values = runner.lanes(
        [("echo", [sys.executable, "-c", "print('hello from a lane')"]), ("first", lambda: order.append(1) or 41)],
        [("second", lambda: 42)],
    )
    assert values == {"first": 41, "second": 42} and order == [1]
    log = (tmp_path / "logs" / "echo.log").read_text()
    assert log.startswith("$ python -c") and "hello from a lane" in log
    assert set(runner.seconds) == {"echo", "first", "second"}


def test_a_failing_command_names_itself_and_its_log(tmp_path):
    runner = Runner(tmp_path)
    with pytest.raises(StepFailed, match=r"(?s)broken failed \(exit status 3\).*broken\.log.*went wrong"):
        runner.lanes([("broken", [sys.executable, "-c", "import sys; print('went wrong'); sys.exit(3)"])], [])


def test_work_that_needs_another_lanes_work_waits_for_it(tmp_path):
    runner = Runner(tmp_path)
    order = []
    release = threading.Event()

    def slow():
        release.wait(timeout=10)  # the other lane would be long done, were it not waiting
        order.append("slow")

    def fast():
        order.append("fast")
        release.set()

    runner.lanes([("needs slow", lambda: order.append("after slow"), ("slow",))],
                 [("fast", fast), ("slow", slow)])
    assert order == ["fast", "slow", "after slow"]


def test_a_failure_releases_the_lanes_that_wait_for_it(tmp_path):
    runner = Runner(tmp_path)
    ran = []
    with pytest.raises(StepFailed, match="broken failed"):
        runner.lanes([("waits", lambda: ran.append("waits"), ("broken",))],
                     [("broken", [sys.executable, "-c", "import sys; sys.exit(1)"])])
    assert ran == []
