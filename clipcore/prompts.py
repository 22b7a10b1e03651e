"""Text prompt templates: the text queries' phrasing (``"a photo of {}"``), the CLIPSep
evaluation's ensemble, and their checks. Free of open_clip, so that command lines can check
a ``--template`` before loading any model."""

from __future__ import annotations

import string
from typing import Sequence

__all__ = ["DEFAULT_TEMPLATE", "CLIPSEP_EVAL_TEMPLATES", "check_template", "prompt_templates"]

DEFAULT_TEMPLATE = "a photo of {}"
"""The text prompt of CLIPSep training-free text queries (``"a photo of {query}"``)."""

CLIPSEP_EVAL_TEMPLATES = (
    "a photo of {}.",
    "a photo of the small {}.",
    "a low resolution photo of a {}.",
    "a photo of many {}.",
)
"""The four prompt templates of the CLIPSep evaluation's prompt ensemble (``--prompt_ens``
in the official ``evaluate.py``). The official list repeats the second template, so there
it weighs twice, and it averages unnormalized embeddings; here each template weighs once
and the average is taken after normalization."""


def check_template(template: str) -> None:
    """Check a prompt template: one ``{}`` (or several) for the query text, and no other
    replacement field (``{{`` and ``}}`` are literal braces).

    Raises:
        ValueError: the template, and what is wrong with it, in one sentence.
    """
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
        filled = template.format("\0") if all(field in ("", "0") for field in fields) else None
    except (IndexError, KeyError, ValueError):
        filled = None
    if filled is None:  # {name}, {1}, {0.x} or {0[0]} (attribute and index access on the text), a lone brace
        raise ValueError(f"prompt template {template!r} can hold the query text only in {{}} "
                         "(write {{ and }} for literal braces).")
    if "\0" not in filled:
        raise ValueError(f"prompt template {template!r} has no '{{}}' for the query text.")


def prompt_templates(templates: str | Sequence[str] | None, name: str | None = None,
                     error: type[ValueError] = ValueError) -> list[str]:
    """The prompt templates of an ensemble, each checked by :func:`check_template`.

    Args:
        templates: one template, a list of them, or ``None`` (or ``""``) for
            :data:`DEFAULT_TEMPLATE`.
        name: what the caller calls them (an option, say), put before the message.
        error: the class of the error raised (the caller's own).

    Returns:
        The templates as a list.

    Raises:
        ValueError: (``error``) an empty list, or a template that cannot hold the query text.
    """
    listed = [templates or DEFAULT_TEMPLATE] if templates is None or isinstance(templates, str) else list(templates)
    try:
        if not listed:
            raise ValueError("templates is an empty list.")
        for template in listed:
            check_template(template)
    except ValueError as problem:
        raise error(f"{name}: {problem}" if name else str(problem)) from None
    return listed
