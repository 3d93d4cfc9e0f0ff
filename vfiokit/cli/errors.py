"""How the CLI reports a VfiokitError: one line (or JSON) and the error's exit code."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from ..errors import VfiokitError
from .output import document

DEBUG = False

P = ParamSpec("P")
R = TypeVar("R")


def report(exc: VfiokitError, as_json: bool) -> int:
    if DEBUG:
        traceback.print_exc()
    if as_json:
        print(document(exc.to_dict(), indent=None))
    else:
        print(f"error: {exc}", file=sys.stderr)
        if exc.remedy:
            print(f"  remedy: {exc.remedy}", file=sys.stderr)
    return int(exc.exit_code)


def handled(fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap a command: a VfiokitError becomes its report and exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except VfiokitError as exc:
            import typer  # not at the top: `vfiokit list` reports errors without typer

            raise typer.Exit(report(exc, bool(kwargs.get("as_json")))) from exc

    return wrapper
