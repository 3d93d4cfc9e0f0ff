"""The `vfiokit` command: a thin typer layer over the API.

Errors are VfiokitError: one line `error: ...` (plus `remedy: ...`) on stderr, or a JSON
object on stdout with --json; the exit code is the error's (docs/cli.md). --debug shows the
traceback. Usage errors are typer's own (exit code 2).
"""

from __future__ import annotations

import typer

from . import assign_cmds, bind_cmds, inspect_cmds
from . import errors as _errors

app = typer.Typer(
    name="vfiokit",
    help="PCI passthrough toolkit: list devices, check the host, bind and assign devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
inspect_cmds.register(app)
bind_cmds.register(app)
assign_cmds.register(app)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    """vfiokit: PCI passthrough for VMs and userspace drivers."""
    _errors.DEBUG = debug


def main() -> None:
    app(prog_name="vfiokit")
