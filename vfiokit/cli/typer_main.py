"""The typer app: every verb, --help, completion, and click's usage errors.

Errors are VfiokitError: one line `error: ...` (plus `remedy: ...`) on stderr, or a JSON
object on stdout with --json; the exit code is the error's (docs/cli.md). --debug shows the
traceback. Usage errors that click finds (an unknown option, a missing argument) are exit
code 2 as well, and JSON too when --json is on the command line (main()).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable
from typing import Annotated

import typer

from .. import __version__
from ..errors import InvalidArgument
from . import VERBS
from . import errors as _errors


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"vfiokit {__version__}")
        raise typer.Exit()


def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True,
                     help="Print the version and exit."),
    ] = False,
) -> None:  # fmt: skip
    """vfiokit: PCI passthrough for VMs and userspace drivers."""
    _errors.DEBUG = debug


def make_app(verbs: Iterable[str] | None = None) -> typer.Typer:
    """The typer app with `verbs` (default: all of them)."""
    app = typer.Typer(
        name="vfiokit",
        help="PCI passthrough toolkit: list devices, check the host, bind and assign devices.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    from .errors import handled
    from .options import reflow

    for verb in VERBS if verbs is None else verbs:
        fn = importlib.import_module(f".{VERBS[verb]}", __package__).COMMANDS[verb]
        app.command(verb, help=reflow(fn.__doc__))(handled(fn))
    return app


def _verb(args: list[str]) -> str | None:
    """The verb on the command line: the first word that is not a (root) option."""
    for a in args:
        if a == "--":
            return None
        if not a.startswith("-"):
            return a
    return None


def _click_class(name: str) -> type[Exception]:
    """click's exception classes, from typer's own (typer >= 0.2x vendors click)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


_UsageError = _click_class("UsageError")
_ClickException = _click_class("ClickException")


def _wants_json(args: list[str]) -> bool:
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def main(args: list[str]) -> None:
    """Run the command line through typer, with click's usage errors as JSON under --json."""
    verb = _verb(args)
    only = [verb] if verb in VERBS and "_VFIOKIT_COMPLETE" not in os.environ else None
    try:
        command = typer.main.get_command(make_app(only))
        if only is None:
            from . import complete

            complete.register_bash()  # after get_command: typer registers its own bash first
        code = command.main(args=args, prog_name="vfiokit", standalone_mode=False)
    except _UsageError as exc:
        if not _wants_json(args):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "vfiokit"
        err = InvalidArgument(exc.format_message(), remedy=f"{where} --help")  # type: ignore[attr-defined]
        sys.exit(_errors.report(err, as_json=True))
    except _ClickException as exc:
        exc.show()  # type: ignore[attr-defined]
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    except typer.Abort:
        print("Aborted!", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
