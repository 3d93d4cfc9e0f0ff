"""bind, unbind, restore: the thin CLI over vfiokit.binding."""

from __future__ import annotations

from typing import Annotated

import typer

from ..binding import Binder, Journal, plan_bind
from ..sysroot import SysRoot
from .errors import handled
from .inspect_cmds import JsonOpt
from .output import dumps


def _say(as_json: bool):
    return (lambda _m: None) if as_json else (lambda m: typer.echo(f"  {m}", err=True))


def bind_cmd(
    addresses: Annotated[list[str], typer.Argument(help="PCI addresses to take for VFIO.")],
    driver: Annotated[
        str | None, typer.Option(help="vfiokit-pci or vfio-pci (default: vfiokit-pci if present).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan, change nothing.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Take devices that are in use.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Bind devices (and what their IOMMU groups require) to a VFIO driver; all or nothing."""
    sysroot = SysRoot()
    plan = plan_bind(sysroot, addresses, driver)
    if dry_run:
        if as_json:
            typer.echo(dumps({"dry_run": True, **plan.to_dict()}))
            return
        typer.echo(f"would bind to {plan.target}:")
        for s in plan.steps:
            typer.echo(f"  {s.address}  {s.driver or 'no driver'} -> {plan.target}  ({s.reason})")
        for addr, why in plan.skipped:
            typer.echo(f"  {addr}  unchanged: {why}")
        for u in plan.uses:
            typer.echo(f"  {u.address}  IN USE: {u.what}{' (never taken)' if u.fatal else ''}")
        return
    binder = Binder(sysroot, progress=_say(as_json))
    done = binder.bind(plan, force=force)
    if as_json:
        typer.echo(dumps({"bound": done, "driver": plan.target, **plan.to_dict()}))
    else:
        typer.echo(f"bound {len(done)} device(s) to {plan.target}"
                   + (f": {', '.join(done)}" if done else " (nothing to do)"))  # fmt: skip


def unbind_cmd(
    addresses: Annotated[list[str], typer.Argument(help="PCI addresses to give back.")],
    as_json: JsonOpt = False,
) -> None:
    """Give devices back to the driver they had before `vfiokit bind` (else the kernel's)."""
    done = Binder(progress=_say(as_json)).unbind(addresses)
    typer.echo(dumps({"unbound": done}) if as_json else f"unbound {len(done)} device(s)")


def restore_cmd(
    addresses: Annotated[list[str] | None, typer.Argument(help="Devices (default: --all).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every journaled device.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Undo binds from the journal (also after a killed run); idempotent."""
    from ..errors import InvalidArgument

    if not addresses and not all_:
        raise InvalidArgument("name devices or pass --all", remedy="vfiokit restore --all")
    binder = Binder(progress=_say(as_json))
    if addresses:
        from .. import device as devmod

        addresses = [devmod.resolve(binder.sysroot, a) for a in addresses]
    done = binder.restore(addresses or None)
    if as_json:
        typer.echo(dumps({"restored": done, "journal": str(Journal().dir)}))
    else:
        typer.echo(f"restored {len(done)} device(s)" + (f": {', '.join(done)}" if done else ""))


def register(app: typer.Typer) -> None:
    app.command("bind")(handled(bind_cmd))
    app.command("unbind")(handled(unbind_cmd))
    app.command("restore")(handled(restore_cmd))
