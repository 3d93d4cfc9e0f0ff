"""bind, unbind, restore: the thin CLI over vfiokit.binding."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from ..sysroot import SysRoot
from . import complete
from .options import JsonOpt
from .output import document


def _say(as_json: bool) -> Callable[[str], None]:
    return (lambda _m: None) if as_json else (lambda m: typer.echo(f"  {m}", err=True))


def bind_cmd(
    addresses: Annotated[
        list[str],
        typer.Argument(
            metavar="BDF...",
            autocompletion=complete.pci_addresses,
            help="PCI addresses to take for VFIO.",
        ),
    ],
    driver: Annotated[
        str | None,
        typer.Option(
            metavar="DRIVER",
            help="vfiokit-pci, vfio-pci or uio_pci_generic (no IOMMU isolation; default: "
            "vfiokit-pci if present).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan, change nothing.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Take devices that are in use.")] = False,
    persist: Annotated[
        bool, typer.Option("--persist", help="Bind again at every boot (udev rule + systemd unit).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Bind devices (and what their IOMMU groups require) to a VFIO driver; all or nothing."""
    from ..binding import Binder, plan_bind
    from ..binding.persist import Persisted, launcher

    sysroot = SysRoot()
    plan = plan_bind(sysroot, addresses, driver)
    persisted = Persisted(sysroot)
    # Before anything changes: a launcher the boot unit could not run is refused here.
    launch = launcher() if persist else None
    warnings = list(launch.warnings) if launch else []
    if not as_json:
        for w in warnings:
            typer.echo(f"warning: {w}", err=True)
    if dry_run:
        if as_json:
            files = persisted.files() if persist else []
            typer.echo(document({"dry_run": True, **plan.to_dict(), "would_write": files,
                                 "warnings": warnings}))  # fmt: skip
            return
        typer.echo(f"would bind to {plan.target}:")
        for s in plan.steps:
            typer.echo(f"  {s.address}  {s.driver or 'no driver'} -> {plan.target}  ({s.reason})")
        for addr, why in plan.skipped:
            typer.echo(f"  {addr}  unchanged: {why}")
        for u in plan.uses:
            typer.echo(f"  {u.address}  IN USE: {u.what}{' (never taken)' if u.fatal else ''}")
        if launch is not None:
            typer.echo(f"would write: {', '.join(persisted.files())}")
            typer.echo(f"the boot unit would run: {' '.join(launch.command)} apply-persisted BDF")
        return
    binder = Binder(sysroot, progress=_say(as_json))
    done = binder.bind(plan, force=force, keep_override=persist)
    written: list[str] = []
    if launch is not None:
        for addr in plan.requested:
            written += persisted.add(addr, plan.target, launch)
        written = sorted(set(written))
    if as_json:
        typer.echo(document({"bound": done, "driver": plan.target, "persisted": written,
                             "warnings": warnings, **plan.to_dict()}))  # fmt: skip
    else:
        typer.echo(f"bound {len(done)} device(s) to {plan.target}"
                   + (f": {', '.join(done)}" if done else " (nothing to do)"))  # fmt: skip
        if written:
            typer.echo(f"persisted: {', '.join(written)}")


def apply_persisted_cmd(
    addresses: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="BDF...",
            autocompletion=complete.pci_addresses,
            help="Devices (default: every persisted one).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Bind persisted devices to their driver (what vfiokit-persist@.service runs at boot)."""
    from ..binding import Binder, plan_bind
    from ..binding.persist import Persisted
    from ..errors import NotFound

    sysroot = SysRoot()
    wanted = Persisted(sysroot).all()
    if addresses:
        from .. import device as devmod

        names = [devmod.resolve(sysroot, a) for a in addresses]
        missing = [a for a in names if a not in wanted]
        if missing:
            raise NotFound(f"{missing[0]} has no persisted binding",
                           remedy=f"vfiokit bind --persist {missing[0]}")  # fmt: skip
        wanted = {a: wanted[a] for a in names}
    binder = Binder(sysroot, progress=_say(as_json))
    binder.require_root("binding")
    done: list[str] = []
    for addr, target in sorted(wanted.items()):
        done += binder.bind(plan_bind(sysroot, [addr], target), keep_override=True)
    if as_json:
        typer.echo(document({"bound": done, "persisted": wanted}))
    else:
        typer.echo(f"applied {len(wanted)} persisted binding(s); bound {len(done)} device(s)")


def unbind_cmd(
    addresses: Annotated[
        list[str],
        typer.Argument(
            metavar="BDF...",
            autocompletion=complete.pci_addresses,
            help="PCI addresses to give back.",
        ),
    ],
    persist: Annotated[
        bool, typer.Option("--persist", help="Also forget the persisted binding.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Give devices back to the driver they had before `vfiokit bind` (else the kernel's)."""
    from ..binding import Binder
    from ..binding.persist import Persisted

    binder = Binder(progress=_say(as_json))
    forgotten = []
    if persist:
        from .. import device as devmod

        persisted = Persisted(binder.sysroot)
        for a in addresses:
            addr = devmod.resolve(binder.sysroot, a)
            if persisted.remove(addr):
                forgotten.append(addr)
    done = binder.unbind(addresses, forget=forgotten)
    if as_json:
        typer.echo(document({"unbound": done, "unpersisted": forgotten}))
    else:
        extra = f"; no longer persisted: {', '.join(forgotten)}" if forgotten else ""
        typer.echo(f"unbound {len(done)} device(s){extra}")


def restore_cmd(
    addresses: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="BDF...",
            autocompletion=complete.pci_addresses,
            help="Devices to restore; or none, with --all.",
        ),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every journaled device.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Undo binds from the journal (also after a killed run); idempotent.

    Name the devices, or pass --all for every journaled one: without either it does nothing
    and exits 2.
    """
    from ..binding import Binder, Journal
    from ..errors import InvalidArgument

    if not addresses and not all_:
        raise InvalidArgument("name devices or pass --all", remedy="vfiokit restore --all")
    binder = Binder(progress=_say(as_json))
    if addresses:
        from .. import device as devmod

        addresses = [devmod.resolve(binder.sysroot, a) for a in addresses]
    done = binder.restore(addresses or None)
    if as_json:
        typer.echo(document({"restored": done, "journal": str(Journal().dir)}))
    else:
        typer.echo(f"restored {len(done)} device(s)" + (f": {', '.join(done)}" if done else ""))


COMMANDS: dict[str, Callable[..., Any]] = {
    "bind": bind_cmd,
    "unbind": unbind_cmd,
    "restore": restore_cmd,
    "apply-persisted": apply_persisted_cmd,
}
