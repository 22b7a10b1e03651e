"""The watchdog pool: a hanging or dying item fails alone, and the run goes on."""

import os
import time

import pytest

from clipcore.supervised import supervised_map


def square_or_misbehave(item):
    """Module-level, so that workers can unpickle it."""
    if item == "hang":
        time.sleep(3600)
    if item == "die":
        os._exit(3)
    if item == "raise":
        raise KeyError("boom")
    return item * item


def pid_of_worker(_item):
    return os.getpid()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_hanging_dying_or_raising_item_fails_alone(workers):
    items = [1, "hang", 2, "die", 3, "raise", 4]
    started = time.monotonic()
    outcomes = dict(supervised_map(square_or_misbehave, items, workers=workers, timeout=3))
    assert time.monotonic() - started < 60  # the hanging item was abandoned, not waited for
    assert sorted(outcomes) == list(range(len(items)))
    assert {items[i]: o.value for i, o in outcomes.items() if o.ok} == {1: 1, 2: 4, 3: 9, 4: 16}
    assert outcomes[1].reason == "took longer than 3 s"
    assert outcomes[3].reason == "killed its worker (exit status 3)"
    assert outcomes[5].reason == "failed unexpectedly (KeyError: 'boom')"
    assert "square_or_misbehave" in outcomes[5].traceback and "KeyError" in outcomes[5].traceback


def test_workers_are_separate_processes_and_share_the_items():
    pids = [o.value for _, o in supervised_map(pid_of_worker, list(range(20)), workers=2, timeout=30)]
    assert len(pids) == 20 and os.getpid() not in pids
    assert len(set(pids)) == 2  # each worker is handed an item at the start


def test_no_items_start_no_workers():
    assert list(supervised_map(square_or_misbehave, [], workers=2)) == []
