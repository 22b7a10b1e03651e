"""CLIPSep: text-queried sound separation learned from unlabeled video (ICLR 2023).

::

    from clipsep import Separator
    separator = Separator.from_pretrained("runs/x/pretrained/best")

The names below are imported on first use, so that ``clipsep --help`` stays fast.
"""

from clipcore.lazy import lazy_exports

_EXPORTS = {
    "Separator": "clipsep.separate",
    "Separation": "clipsep.separate",
    "QueryError": "clipsep.queries",
    "CLIPSep": "clipsep.model",
    "SeparatorSpec": "clipsep.batch",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
