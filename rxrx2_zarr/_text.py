"""How reports and error messages print counts and lists of problems, the same way everywhere."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["MAX_LISTED", "count", "problem_lines"]

#: How many problems a report or an error message lists one by one; the rest are only counted, so that a million
#: bad rows make a message of a few kilobytes.
MAX_LISTED = 20


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, the noun plural unless ``n`` is 1: ``1 plate``, ``2 plates``, ``1,380 wells``;
    ``plural`` for irregular nouns (``count(2, "index", "indices")``)."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def problem_lines(
    problems: Sequence[str], *, total: int | None = None, limit: int = MAX_LISTED, prefix: str = "  "
) -> list[str]:
    """The first ``limit`` problems, one line each behind ``prefix``, then ``... and N more`` for the rest.

    ``total``: how many problems there are when only the first ones were kept (default: ``len(problems)``)."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    shown = list(problems[:limit])
    hidden = (len(problems) if total is None else total) - len(shown)
    lines = [f"{prefix}{problem}" for problem in shown]
    if hidden > 0:
        lines.append(f"{prefix}... and {hidden:,} more")
    return lines
