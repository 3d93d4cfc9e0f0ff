"""Plain-text rendering for the CLI: tables and key/value blocks. No colours, no widths
guessed from a terminal: output is the same in a pipe and on a screen."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = [[text(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    for row in cells:
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip())
    return "\n".join(lines)


def text(value: object) -> str:
    """One value as the tables show it: None is `-`, a boolean is yes or no."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def keyvalues(pairs: Iterable[tuple[str, object]], indent: int = 0) -> str:
    items = [(k, text(v)) for k, v in pairs]
    width = max((len(k) for k, _ in items), default=0)
    pad = " " * indent
    return "\n".join(f"{pad}{k.ljust(width)}  {v}" for k, v in items)


SCHEMA = 1
"""The version of every JSON document the CLI prints (docs/json.md). Adding a field keeps
it; renaming, removing or retyping one bumps it."""


def document(fields: dict[str, object], indent: int | None = 2) -> str:
    """A JSON document for stdout: always an object, `schema` first."""
    return json.dumps({"schema": SCHEMA, **fields}, indent=indent, sort_keys=False)
