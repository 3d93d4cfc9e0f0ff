"""The `vfiokit` command: a thin typer layer over the API (typer_main), and `vfiokit
list` run without it when its command line is plain (listing.fast)."""

from __future__ import annotations

import sys

# Each verb and the module that defines it, in the order --help lists them. main() imports
# and builds only the verb it runs (`vfiokit list` never loads the binder, doctor or
# assign code, nor has typer inspect their signatures); --help, completion and an unknown
# verb get them all.
VERBS = {
    "list": "inspect_cmds", "show": "inspect_cmds", "doctor": "inspect_cmds",
    "bind": "bind_cmds", "unbind": "bind_cmds", "restore": "bind_cmds",
    "apply-persisted": "bind_cmds", "assign": "assign_cmds", "unassign": "assign_cmds",
}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """The `vfiokit` entry point."""
    args = sys.argv[1:] if argv is None else list(argv)
    if "list" in args:
        from . import listing

        code = listing.fast(args)
        if code is not None:
            sys.exit(code)
    from . import typer_main

    typer_main.main(args)


def __getattr__(name: str) -> object:
    """`app`: the whole CLI (for typer.testing and the docs), built on first use."""
    if name == "app":
        from .typer_main import make_app

        globals()["app"] = make_app()
        return globals()["app"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
