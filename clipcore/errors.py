"""The project's errors and how a command line reports them.

Every expected failure (a bad file, value or checkpoint) raises a subclass of
:class:`ClipAudioError` whose message is one sentence naming the file or value. Command
lines and recipes run through :func:`report_errors`, which turns such an error into one
line on stderr and an exit status:

* 0: done;
* 1 (:data:`EXIT_PARTIAL`): done, but some inputs failed (the command says which);
* 2 (:data:`EXIT_BAD_INPUT`): nothing done: bad usage or bad input;
* 130 (:data:`EXIT_INTERRUPTED`): interrupted (Ctrl-C).
"""

from __future__ import annotations

import numbers
import sys
from typing import Any, Callable

__all__ = [
    "ClipAudioError",
    "UsageError",
    "EXIT_PARTIAL",
    "EXIT_BAD_INPUT",
    "EXIT_INTERRUPTED",
    "report_errors",
    "is_whole_number",
]

EXIT_PARTIAL = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class ClipAudioError(ValueError):
    """An expected failure of the project (bad input), described in one sentence."""


class UsageError(ClipAudioError):
    """A bad command-line value, described in one sentence."""


def is_whole_number(value: Any) -> bool:
    """Whether ``value`` is an integer (Python's or NumPy's) and not a bool, which Python
    counts as one: the test of the Python API's integer arguments ("must be a whole number")."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def report_errors(prog: str, main: Callable[[], Any], interrupted: str = "interrupted.") -> int:
    """Run ``main`` and return its exit status: its result when that is an ``int``, else 0.

    A :class:`ClipAudioError` is printed as ``<prog>: error: <message>`` on stderr and
    gives :data:`EXIT_BAD_INPUT`; Ctrl-C prints ``<prog>: <interrupted>`` and gives
    :data:`EXIT_INTERRUPTED`. Anything else is a bug and propagates with its traceback.
    """
    try:
        result = main()
    except ClipAudioError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return result if isinstance(result, int) else 0
