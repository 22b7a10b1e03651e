"""Shared test settings: deterministic, CPU-only, no network; under pytest-xdist (``make
test`` runs two workers), the cores shared out and the longest files started first."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Each xdist worker (and each process a test starts) gets its share of the cores: two workers
# with two OpenMP threads each on two cores made in-process training tests 3 to 5x slower.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _CORES // _WORKERS)))

import pytest  # noqa: E402
import torch  # noqa: E402

LONGEST_FIRST = ("tests/recipes/test_quickstart.py", "tests/recipes/test_papers_in_miniature.py")
"""The two longest files (a whole recipe each, about 270 and 200 s alone on 2 cores): under
xdist (``--dist loadfile --no-loadscope-reorder``) one starts on each worker at once."""


def pytest_collection_modifyitems(config, items):
    """The longest files first, then the other files with a slow test, then the rest. Files
    move whole (a stable sort by file), so a module's fixtures are still set up once."""
    def file(item) -> str:
        return item.nodeid.split("::")[0]

    slow = {file(item) for item in items if item.get_closest_marker("slow")}

    def rank(item) -> tuple[int, int]:
        path = file(item)
        if path in LONGEST_FIRST:
            return 0, LONGEST_FIRST.index(path)
        return (1 if path in slow else 2), 0

    items.sort(key=rank)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
