"""Read-only commands: list, show, doctor. Safe on any machine, no privileges needed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from .. import device as devmod
from ..binding.persist import Persisted
from ..sysroot import SysRoot
from . import complete, listing
from .options import JsonOpt
from .output import document, keyvalues, text

_YES_NO = {True: "yes", False: "no", None: "unknown"}


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
    listing.run(klass=klass, vendor=vendor, driver=driver, group=group, tree=tree,
                as_json=as_json)  # fmt: skip


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
    listing.names_hint(sysroot)
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
