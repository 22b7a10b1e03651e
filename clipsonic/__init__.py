"""CLIPSonic: text-to-audio synthesis learned from unlabeled video (WASPAA 2023).

::

    from clipsonic import Generator
    generator = Generator.from_pretrained("runs/x/model")

The names below are imported on first use, so that ``clipsonic --help`` stays fast.
"""

from clipcore.lazy import lazy_exports

_EXPORTS = {
    "Generator": "clipsonic.generate",
    "Generation": "clipsonic.generate",
    "GenerationError": "clipsonic.generate",
    "CLIPSonic": "clipsonic.model",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
