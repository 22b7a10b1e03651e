"""The quick start's runner: lanes of commands and calls, their values, logs and failures."""

import sys
import threading

import pytest

from clipcore.errors import UsageError
from recipes.command_runner import Runner, StepFailed, fresh_run_folder


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


def test_a_pool_gives_work_to_whichever_thread_is_free(tmp_path):
    # "long" is taken first and waits for "c"; dealt out in fixed lanes (long, b | a, c), b
    # would wait behind it. The pool's other thread runs a, b and c in turn.
    runner = Runner(tmp_path)
    order = []
    released = threading.Event()

    def long():
        order.append("long waits" if released.wait(timeout=10) else "long timed out")

    values = runner.pool([("long", long), ("a", lambda: order.append("a")), ("b", lambda: order.append("b")),
                          ("c", lambda: order.append("c") or released.set() or 3, ("a",))])
    assert order == ["a", "b", "c", "long waits"] and values["c"] == 3


def test_a_pool_refuses_needs_it_cannot_meet(tmp_path):
    runner = Runner(tmp_path)
    with pytest.raises(ValueError, match="no item is called missing"):
        runner.pool([("a", lambda: None, ("missing",))])
    with pytest.raises(ValueError, match="a, b need each other"):
        runner.pool([("a", lambda: None, ("b",)), ("b", lambda: None, ("a",))])


def test_a_run_folder_is_refused_where_a_file_is_and_kept_when_it_is_not_the_recipes(tmp_path, capsys):
    (tmp_path / "afile").write_text("keep me")  # the quick start's and papers' --out: a traceback before
    for given, message in ((tmp_path / "afile", "is a file, not a folder"),
                           (tmp_path / "afile" / "run", "lies below the file")):
        with pytest.raises(UsageError, match=f"--out {given}: {message}"):
            fresh_run_folder(given, ".recipe", "recipe", "note")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.txt").write_text("keep me too")
    with pytest.raises(UsageError, match="is not empty and not a recipe folder"):
        fresh_run_folder(tmp_path / "other", ".recipe", "recipe", "note")
    earlier = fresh_run_folder(tmp_path / "run", ".recipe", "recipe", "note")
    (earlier / "old.txt").write_text("from the earlier run")
    again = fresh_run_folder(tmp_path / "run", ".recipe", "recipe", "note")
    assert again == earlier and sorted(p.name for p in again.iterdir()) == [".recipe"]
    assert "replacing the previous run" in capsys.readouterr().out
    assert (tmp_path / "afile").read_text() == "keep me" and (tmp_path / "other" / "data.txt").is_file()
