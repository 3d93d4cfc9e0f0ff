"""Read-only commands: list, show, doctor. Safe on any machine, no privileges needed."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .. import device as devmod
from .. import names
from ..binding.persist import Persisted
from ..errors import InvalidArgument
from ..sysroot import SysRoot
from . import complete, filters
from .options import JsonOpt
from .output import document, keyvalues, table, text

if TYPE_CHECKING:
    # imported where used: each verb loads only what it needs (the in-use scan, the doctor)
    from ..binding.inuse import Use

_YES_NO = {True: "yes", False: "no", None: "unknown"}


def _names_hint(sysroot: SysRoot) -> None:
    """Say once, on stderr (never in --json stdout), why the names are blank."""
    if not names.available(sysroot):
        typer.echo(names.MISSING_HINT, err=True)


def list_cmd(
    klass: Annotated[
        str | None,
        typer.Option(
            "--class",
            metavar="NAME|HEX",
            help="Class name (network, storage, ...) or hex code prefix.",
        ),
    ] = None,
    vendor: Annotated[
        str | None, typer.Option(metavar="HEX|NAME", help="Vendor ID (hex) or part of its name.")
    ] = None,
    driver: Annotated[
        str | None,
        typer.Option(
            metavar="NAME", help="Bound driver ('vfio_pci' = 'vfio-pci'); 'none' for unbound."
        ),
    ] = None,
    group: Annotated[str | None, typer.Option(metavar="N", help="IOMMU group number.")] = None,
    tree: Annotated[
        bool,
        typer.Option("--tree", help="The PCI hierarchy: bridges, groups, INTx lines, in use."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List PCI devices with their driver, IOMMU group, INTx line and what on the host uses
    them (USED BY: what `vfiokit bind` would refuse to take without --force, or ever)."""
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
    _names_hint(sysroot)
    if tree:
        _print_tree(sysroot, devices, in_use, as_json)
        return
    if as_json:
        typer.echo(document({"devices": [
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
    typer.echo(table(headers, rows))


def _print_tree(sysroot: SysRoot, devices: list[devmod.PciDevice],
                in_use: dict[str, list[Use]], as_json: bool) -> None:  # fmt: skip
    from .. import intx, topology
    from .tree import Tree

    roots = topology.build(sysroot, [d.address for d in devices])
    view = Tree(devices, in_use, intx.irq_devices(sysroot))
    if as_json:
        typer.echo(document({"tree": [view.node_dict(r) for r in roots]}))
    else:
        typer.echo(view.text(roots))


def _show_data(sysroot: SysRoot, dev: devmod.PciDevice) -> dict[str, object]:
    from .. import intx, iommu

    data = dev.to_dict()
    data["iommu_group_detail"] = (
        iommu.read_group(sysroot, dev.iommu_group).to_dict() if dev.iommu_group else None
    )
    data["intx_line"] = (
        intx.read_line(sysroot, dev.irq).to_dict() if dev.intx_pin and dev.irq else None
    )
    from ..binding.assign import Assigner

    data["persisted"] = Persisted(sysroot).all().get(dev.address)
    assignment = Assigner(sysroot).get(dev.address)
    data["assignment"] = assignment.to_dict() if assignment else None
    return data


def show_cmd(
    address: Annotated[
        str,
        typer.Argument(
            metavar="BDF",
            autocompletion=complete.pci_addresses,
            help="PCI address, dddd:bb:dd.f or bb:dd.f.",
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Everything vfiokit knows about one device."""
    sysroot = SysRoot()
    dev = devmod.read_device(sysroot, devmod.resolve(sysroot, address))
    data = _show_data(sysroot, dev)
    _names_hint(sysroot)
    if as_json:
        typer.echo(document(data))
        return

    def caps(value: dict[str, object] | None) -> str:
        """`[50] vectors=4, is_64bit=yes`: offsets in hex, as lspci prints them."""
        if value is None:
            return "unknown (config space beyond 64 bytes needs root)"
        if not value:
            return "none"
        rest = ", ".join(
            f"{k}={v:#x}" if k.endswith("offset") and isinstance(v, int) else f"{k}={text(v)}"
            for k, v in value.items()
            if k != "offset"
        )
        return f"[{value['offset']:02x}] {rest}"

    assigned = data["assignment"]
    pairs: list[tuple[str, object]] = [
        ("address", dev.address),
        (
            "ids",
            f"{dev.ids} (subsystem {data['subsystem_vendor_id']}:{data['subsystem_device_id']})",
        ),
        ("name", " ".join(x for x in (dev.vendor_name, dev.device_name) if x) or None),
        ("class", f"{data['class_code']} {dev.class_name}"),
        ("revision", None if dev.revision is None else f"{dev.revision:02x}"),
        ("driver", dev.driver or "none"),
        ("driver_override", dev.driver_override),
        ("persisted", data["persisted"]),
        (
            "assigned to",
            " and ".join(
                f"{k} {v}"
                for k, v in (assigned if isinstance(assigned, dict) else {}).items()
                if k in ("user", "group") and v
            )
            or None,
        ),
        ("iommu group", dev.iommu_group),
        ("group members", ", ".join(dev.iommu_group_members) or None),
        ("numa node", dev.numa_node),
        (
            "intx pin",
            "none"
            if dev.intx_pin == 0
            else ("INT" + "ABCD"[dev.intx_pin - 1])
            if dev.intx_pin
            else None,
        ),
        ("irq", dev.irq),
        (
            "intx masking",
            f"{_YES_NO[dev.intx_masking]} ({dev.intx_masking_reason})",
        ),
        ("msi", caps(dev.msi)),
        ("msi-x", caps(dev.msix)),
        ("reset methods", " ".join(dev.reset_methods) or None),
        ("power state", dev.power_state),
        ("enabled", dev.enabled),
        (
            "sr-iov",
            None if dev.sriov_totalvfs is None else f"{dev.sriov_numvfs}/{dev.sriov_totalvfs} VFs",
        ),
        ("physfn", dev.physfn),
        ("net", ", ".join(dev.net_interfaces) or None),
        ("block", ", ".join(dev.block_devices) or None),
    ]
    if dev.vfiokit_intx:
        pairs += [(f"vfiokit {k}", v) for k, v in sorted(dev.vfiokit_intx.items())]
    typer.echo(keyvalues(pairs))
    line = data["intx_line"]
    if isinstance(line, dict):
        md = line["mask_device"]
        typer.echo("intx line:")
        typer.echo(
            keyvalues(
                [
                    ("irq", f"{line['irq']} ({line['chip']}, {line['trigger']})"),
                    ("devices", ", ".join(line["devices"]) or None),
                    ("handlers", ", ".join(line["actions"]) or None),
                    ("shared", line["shared"]),
                    ("interrupts", line["count"]),
                    ("mask_device", "n/a (no genirq patch)" if md is None else bool(md)),
                ],
                indent=2,
            )
        )
    grp = data["iommu_group_detail"]
    if isinstance(grp, dict):
        typer.echo(f"iommu group {grp['group']}: {'viable' if grp['viable'] else 'not viable'}")
        for m in grp["members"]:
            blocks = f"  <- blocks: {m['blocks']}" if m["blocks"] else ""
            typer.echo(f"  {m['address']}  {m['driver'] or 'none'}{blocks}")


_MARK = {"ok": "ok", "info": "info", "warn": "WARN", "fail": "FAIL"}  # doctor.Status values


def doctor_cmd(
    address: Annotated[
        str | None,
        typer.Argument(
            metavar="BDF", autocompletion=complete.pci_addresses, help="Also check this device."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check the host (and a device) for VFIO passthrough; each problem with its remedy.

    Exit code 0: all good; 10: a check failed; 11: warnings only.
    """
    from .. import doctor as doc

    sysroot = SysRoot()
    addr = devmod.resolve(sysroot, address) if address else None
    checks = doc.run(sysroot, addr)
    code = doc.exit_code(checks)
    if as_json:
        checks_json = [c.to_dict() for c in checks]
        typer.echo(document({"device": addr, "checks": checks_json, "exit_code": int(code)}))
    else:
        for c in checks:
            typer.echo(f"[{_MARK[c.status]:>4}] {c.title}: {c.detail}")
            if c.remedy and c.status in (doc.Status.WARN, doc.Status.FAIL, doc.Status.INFO):
                typer.echo(f"       remedy: {c.remedy}")
        summary = {0: "all checks passed", 10: "some checks FAILED", 11: "passed with warnings"}
        typer.echo(summary[int(code)])
    raise typer.Exit(int(code))


COMMANDS: dict[str, Callable[..., Any]] = {
    "list": list_cmd,
    "show": show_cmd,
    "doctor": doctor_cmd,
}
