"""assign, unassign: the thin CLI over vfiokit.binding.assign (and the VMM snippets)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from .. import device as devmod
from ..binding.memlock import Limit, human, parse_size, user_limit
from ..binding.snippets import libvirt_hostdev, qemu_args
from ..errors import InvalidArgument
from ..sysroot import SysRoot
from . import complete
from .options import JsonOpt
from .output import document


def _memlock(sysroot: SysRoot, user: str, need: int | None) -> tuple[Limit, list[str]]:
    limit = user_limit(sysroot, user)
    notes = [f"memlock for {user}: {human(limit.soft)} (from {limit.source})"]
    if need is not None and not limit.enough(need):
        notes.append(
            f"WARNING: {user} can pin {human(limit.soft)}, less than the {human(need)} asked "
            "for; DMA mappings beyond it fail with ENOMEM"
        )
        notes.append(f"  remedy: {limit.remedy()}")
    return limit, notes


def assign_cmd(
    address: Annotated[
        str,
        typer.Argument(
            metavar="BDF",
            autocompletion=complete.pci_addresses,
            help="A device bound to vfio-pci or vfiokit-pci.",
        ),
    ],
    user: Annotated[
        str | None,
        typer.Option(
            metavar="USER",
            autocompletion=complete.users,
            help="The user who may open it: owns its VFIO nodes; writes a udev rule.",
        ),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option(
            metavar="GROUP",
            autocompletion=complete.groups,
            help="A group whose members may open it (mode 0660); writes a udev rule.",
        ),
    ] = None,
    memlock: Annotated[
        str | None,
        typer.Option(
            metavar="SIZE",
            help="With --user: memory the user will pin (a VM's RAM, e.g. 4G): "
            "warn if over the user's limit.",
        ),
    ] = None,
    qemu: Annotated[
        bool, typer.Option("--qemu", help="Print QEMU arguments for it (changes nothing).")
    ] = False,
    iommufd: Annotated[
        bool, typer.Option("--iommufd", help="With --qemu: use QEMU's iommufd backend.")
    ] = False,
    libvirt: Annotated[
        bool,
        typer.Option("--libvirt", help="Print a libvirt <hostdev> element (changes nothing)."),
    ] = False,
    no_persist: Annotated[
        bool, typer.Option("--no-persist", help="Do not write the udev rule (until re-bind).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Let a non-root user (or group) drive a VFIO device; or print how to give it to a VMM.

    --user/--group change the owner and mode of the device's VFIO nodes (recorded first;
    `vfiokit unassign` puts them back) and write the udev rule
    /etc/udev/rules.d/70-vfiokit-assign-BDF.rules that keeps them so (not with
    --no-persist). --qemu and --libvirt alone change nothing: they only print what to give
    QEMU or libvirt, and the VMM then needs root or a device assigned with --user.
    """
    if not (user or group or qemu or libvirt):
        raise InvalidArgument(
            "nothing to do", remedy="--user NAME, --group NAME, --qemu or --libvirt"
        )
    if memlock is not None and not user:
        raise InvalidArgument(
            "--memlock checks the memlock limit of the --user: it needs --user",
            remedy=f"vfiokit assign {address} --user NAME --memlock {memlock}",
        )
    need = None
    if memlock is not None:
        try:
            need = parse_size(memlock)
        except ValueError:
            raise InvalidArgument(f"--memlock: not a size: {memlock!r}",
                                  remedy="e.g. 512M, 4G or unlimited") from None  # fmt: skip
    from ..binding.assign import Assigner, device_nodes

    sysroot = SysRoot()
    address = devmod.resolve(sysroot, address)
    if (qemu or libvirt) and not (user or group):
        device_nodes(sysroot, address)  # the VMM needs it bound to VFIO: say so now
    out: dict[str, object] = {"address": address}
    lines: list[str] = []
    if user or group:
        a = Assigner(sysroot).assign(address, user, group, persist=not no_persist)
        out["assignment"] = a.to_dict()
        who = " and ".join(x for x in (user and f"user {user}", group and f"group {group}") if x)
        lines.append(f"assigned {address} to {who}: "
                     + ", ".join(n.path for n in a.nodes) + f" (mode {a.mode:04o})")  # fmt: skip
        if a.rule:
            lines.append(f"udev rule: {a.rule}")
        if user:
            limit, notes = _memlock(sysroot, user, need)
            out["memlock"] = {**limit.to_dict(), "enough": need is None or limit.enough(need)}
            lines += notes
    if qemu:
        args = qemu_args([address], iommufd=iommufd)
        out["qemu"] = args
        lines.append(" ".join(args))
    if libvirt:
        xml = libvirt_hostdev(address)
        out["libvirt"] = xml
        lines.append(xml.rstrip())
    typer.echo(document(out) if as_json else "\n".join(lines))


def unassign_cmd(
    address: Annotated[
        str,
        typer.Argument(
            metavar="BDF",
            autocompletion=complete.pci_addresses,
            help="A device given to a user by `vfiokit assign`.",
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Give the device's VFIO nodes back their prior owner and mode; remove the udev rule."""
    from ..binding.assign import Assigner

    a = Assigner().unassign(address)
    if as_json:
        typer.echo(document({"unassigned": a.to_dict() if a else None}))
    else:
        typer.echo(f"unassigned {a.address}" if a else "nothing to unassign")


COMMANDS: dict[str, Callable[..., Any]] = {
    "assign": assign_cmd,
    "unassign": unassign_cmd,
}
