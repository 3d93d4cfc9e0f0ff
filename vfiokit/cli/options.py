"""What several verbs share: options, and how their help is made."""

from __future__ import annotations

import inspect
from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


def reflow(doc: str | None) -> str:
    """A command's docstring as its --help text: paragraphs joined into single lines, so
    that typer (which keeps line breaks after the first paragraph) wraps them to the
    terminal, and the docs can quote them (tests/unit/test_cli_docs.py)."""
    paragraphs = inspect.cleandoc(doc or "").split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)
