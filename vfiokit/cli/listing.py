"""`vfiokit list`: the verb's work, and a way to run it without loading typer.

Under a slow interpreter (the test bed's TCG guest) importing typer costs more than
`dpdk-devbind.py --status` takes in all (docs/benchmarks.md). So `main()` first offers the
command line to `fast()`, which takes only the plainest spellings of `[--debug] list
[--class X] [--vendor X] [--driver X] [--group N] [--tree] [--json]` and declines
everything else: help, completion, a typo, a repeated or `--opt=value` option, a value that
looks like an option. Typer then parses what was declined and reports its errors as ever,
so the two parsers never have to agree on an error; on what `fast()` accepts they must
agree, which tests/unit/test_list_fast.py checks against typer's own parse.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING, TextIO

from .. import device as devmod
from .. import names
from ..binding.persist import Persisted
from ..errors import InvalidArgument, VfiokitError
from ..sysroot import SysRoot
from . import filters
from .output import document, table

if TYPE_CHECKING:
    from ..binding.inuse import Use

# list's options (the click names of inspect_cmds.list_cmd's parameters) and the root's.
VALUE_OPTIONS = {"--class": "klass", "--vendor": "vendor", "--driver": "driver",
                 "--group": "group"}  # fmt: skip
FLAG_OPTIONS = {"--tree": "tree", "--json": "as_json"}
ROOT_FLAGS = {"--debug": "debug"}
_ANSI = re.compile(r"\033\[[;?0-9]*[a-zA-Z]")


def echo(text: str, err: bool = False) -> None:
    """Print a line as typer.echo (click's echo) does: escape sequences dropped unless the
    stream is a terminal (a device name from pci.ids or the hwdb may hold one), UTF-8 where
    the stream's own encoding cannot say it, flushed at once (a closed pipe is found here,
    inside fast(), not at the interpreter's exit)."""
    stream: TextIO = sys.stderr if err else sys.stdout
    line = text + "\n"
    if not stream.isatty():
        line = _ANSI.sub("", line)
    try:
        stream.write(line)
    except UnicodeEncodeError:
        stream.flush()
        stream.buffer.write(line.encode("utf-8", "replace"))
    stream.flush()


def names_hint(sysroot: SysRoot) -> None:
    """Say once, on stderr (never in --json stdout), why the names are blank."""
    if not names.available(sysroot):
        echo(names.MISSING_HINT, err=True)


def run(klass: str | None = None, vendor: str | None = None, driver: str | None = None,
        group: str | None = None, tree: bool = False, as_json: bool = False) -> None:  # fmt: skip
    """What `vfiokit list` prints, the filters validated (InvalidArgument otherwise)."""
    sysroot = SysRoot()
    if tree and any(f is not None for f in (klass, vendor, driver, group)):
        raise InvalidArgument("--tree shows every device: it takes no filters",
                              remedy="vfiokit list --tree")  # fmt: skip
    devices = devmod.read_all(sysroot)
    persisted = Persisted(sysroot).all()
    chosen: list[filters.Filter] = []
    if klass is not None:
        chosen.append(filters.class_filter(klass))
    if vendor is not None:
        chosen.append(filters.vendor_filter(devices, vendor))
    if driver is not None:
        chosen.append(filters.driver_filter(sysroot, devices, driver))
    if group is not None:
        chosen.append(filters.group_filter(sysroot, group))
    devices = [d for d in devices if all(f(d) for f in chosen)]
    from ..binding.inuse import InUse

    in_use = InUse(sysroot).of_all(devices)
    names_hint(sysroot)
    if tree:
        _print_tree(sysroot, devices, in_use, as_json)
        return
    if as_json:
        echo(document({"devices": [
            {**d.to_dict(), "persisted": persisted.get(d.address),
             "in_use": [u.to_dict() for u in in_use[d.address]]}
            for d in devices]}))  # fmt: skip
        return
    rows = [
        (
            d.address,
            d.ids,
            d.class_name,
            d.driver or "none",
            d.driver_override,
            persisted.get(d.address),
            d.iommu_group,
            d.irq if d.intx_pin else None,
            ", ".join(u.short for u in in_use[d.address]) or None,
            " ".join(x for x in (d.vendor_name, d.device_name) if x) or None,
        )
        for d in devices
    ]
    headers = ("ADDRESS", "IDS", "CLASS", "DRIVER", "OVERRIDE", "PERSIST", "GROUP", "INTX",
               "USED BY", "NAME")  # fmt: skip
    echo(table(headers, rows))


def _print_tree(sysroot: SysRoot, devices: list[devmod.PciDevice],
                in_use: dict[str, list[Use]], as_json: bool) -> None:  # fmt: skip
    from .. import intx, topology
    from .tree import Tree

    roots = topology.build(sysroot, [d.address for d in devices])
    view = Tree(devices, in_use, intx.irq_devices(sysroot))
    if as_json:
        echo(document({"tree": [view.node_dict(r) for r in roots]}))
    else:
        echo(view.text(roots))


def parse(args: list[str]) -> dict[str, str | bool | None] | None:
    """run()'s keyword arguments (and "debug") for a plain `list` command line; None to
    leave the command line to typer."""
    if "_VFIOKIT_COMPLETE" in os.environ:
        return None
    out: dict[str, str | bool | None] = {"debug": False, "tree": False, "as_json": False}
    out.update(dict.fromkeys(VALUE_OPTIONS.values()))
    rest = iter(args)
    for a in rest:  # the root's flags, then the verb
        if a == "list":
            break
        if a not in ROOT_FLAGS or out[ROOT_FLAGS[a]]:
            return None
        out[ROOT_FLAGS[a]] = True
    else:
        return None
    seen: set[str] = set()
    for a in rest:
        if a in seen:
            return None
        seen.add(a)
        if a in FLAG_OPTIONS:
            out[FLAG_OPTIONS[a]] = True
        elif a in VALUE_OPTIONS:
            value = next(rest, None)
            if value is None or value.startswith("-"):
                return None
            out[VALUE_OPTIONS[a]] = value
        else:
            return None
    return out


def fast(args: list[str]) -> int | None:
    """Run `vfiokit list` if parse() takes the command line: its exit code, else None."""
    opts = parse(args)
    if opts is None:
        return None
    from . import errors

    errors.DEBUG = bool(opts.pop("debug"))
    try:
        run(**opts)  # type: ignore[arg-type]
    except VfiokitError as exc:
        return errors.report(exc, bool(opts["as_json"]))
    except BrokenPipeError:  # `vfiokit list | head`, as click handles it
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  # the interpreter's final flush
        return 1
    except KeyboardInterrupt:  # as typer: no traceback, 128 + SIGINT
        return 130
    return 0
