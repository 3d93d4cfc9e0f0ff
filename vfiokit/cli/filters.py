"""`vfiokit list`'s filters, validated: a class, driver, IOMMU group or vendor that cannot
match is a usage error (exit 2) naming the valid choices, not a silently empty table."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from ..device import PCI_CLASSES, PciDevice
from ..errors import InvalidArgument
from ..sysroot import SysRoot

Filter = Callable[[PciDevice], bool]
CLASS_NAMES = (*PCI_CLASSES.values(), "other")
VFIO_DRIVERS = ("vfio-pci", "vfiokit-pci")  # valid even while their module is not loaded
_HEX = re.compile(r"^(0x)?[0-9a-f]+$")


def _did_you_mean(want: str, choices: Iterable[str]) -> str:
    import difflib  # on the error path only: `vfiokit list` starts without it

    choices = list(choices)
    near = [c for c in choices if c.startswith(want)] or difflib.get_close_matches(
        want, choices, n=2
    )
    return f" (did you mean {' or '.join(near)}?)" if near else ""


def normalize_driver(name: str) -> str:
    """Driver names as the kernel compares module names: `-` and `_` are the same."""
    return name.replace("-", "_")


def class_filter(want: str) -> Filter:
    w = want.strip().lower()
    if w in CLASS_NAMES:
        return lambda d: d.class_name == w
    if _HEX.match(w) and len(w.removeprefix("0x")) <= 6:
        prefix = w.removeprefix("0x")
        return lambda d: d.class_code is not None and f"{d.class_code:06x}".startswith(prefix)
    raise InvalidArgument(
        f"--class: unknown class {want!r}{_did_you_mean(w, CLASS_NAMES)}",
        remedy=f"one of {', '.join(CLASS_NAMES)}, or a hex class code prefix (02, 0200)",
    )


def driver_filter(sysroot: SysRoot, devices: list[PciDevice], want: str) -> Filter:
    known = {"none", *VFIO_DRIVERS, *sysroot.listdir("/sys/bus/pci/drivers")}
    known |= {d.driver for d in devices if d.driver}
    w = normalize_driver(want.strip())
    if w not in {normalize_driver(k) for k in known}:
        choices = sorted(known)
        raise InvalidArgument(
            f"--driver: no PCI driver {want!r} in this kernel"
            f"{_did_you_mean(want.strip(), choices)}",
            remedy=f"one of {', '.join(choices)} (`none`: no driver)",
        )
    return lambda d: normalize_driver(d.driver or "none") == w


def _ranges(numbers: list[int]) -> str:
    out: list[str] = []
    for n in sorted(numbers):
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


def group_filter(sysroot: SysRoot, want: str) -> Filter:
    groups = [int(g) for g in sysroot.listdir("/sys/kernel/iommu_groups") if g.isdigit()]
    where = (f"the IOMMU groups here: {_ranges(groups)}" if groups
             else "this host has no IOMMU groups (`vfiokit doctor`)")  # fmt: skip
    w = want.strip()
    if not w.isdigit():
        raise InvalidArgument(f"--group: not an IOMMU group number: {want!r}", remedy=where)
    if int(w) not in groups:
        raise InvalidArgument(f"--group: no IOMMU group {int(w)}", remedy=where)
    return lambda d: d.iommu_group is not None and int(d.iommu_group) == int(w)


def vendor_filter(devices: list[PciDevice], want: str) -> Filter:
    w = want.strip().lower()
    hex_id = w.removeprefix("0x") if _HEX.match(w) and len(w.removeprefix("0x")) <= 4 else None

    def by_name(d: PciDevice) -> bool:
        return bool(d.vendor_name) and w in (d.vendor_name or "").lower()

    if hex_id is not None:
        return lambda d: (d.vendor_id is not None and d.vendor_id == int(hex_id, 16)) or by_name(d)
    named = {d.vendor_name: d.vendor_id for d in devices if d.vendor_name}
    if not named:
        raise InvalidArgument(
            f"--vendor: {want!r} is not a hex vendor ID, and vendor names are unknown here "
            "(no pci.ids, no udev hwdb)",
            remedy="give the vendor ID in hex (e.g. --vendor 8086), or install pci.ids "
            "(Debian: apt install pci.ids)",
        )
    if not any(by_name(d) for d in devices):
        listed = ", ".join(f"{n} ({v:04x})" for n, v in sorted(named.items()) if v is not None)
        raise InvalidArgument(f"--vendor: no vendor matching {want!r} on this host",
                              remedy=f"a hex vendor ID, or part of one of: {listed}")  # fmt: skip
    return by_name
