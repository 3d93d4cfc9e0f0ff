"""Vendor and device names: udev's hwdb (through pyudev) first, then the pci.ids file.

Names are decoration: where neither source is there (a minimal container, a fake tree
without pci.ids) they are None, and nothing else depends on them.
"""

from __future__ import annotations

import re
from functools import lru_cache

from .sysroot import SysRoot

PCI_IDS_PATHS = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids")
HWDB_PATHS = ("/etc/udev/hwdb.bin", "/usr/lib/udev/hwdb.bin", "/lib/udev/hwdb.bin")
MISSING_HINT = (
    "hint: no pci.ids and no udev hwdb here, so device names are blank; "
    "install them with: apt install pci.ids"
)


def available(sysroot: SysRoot) -> bool:
    """Whether any source of names is there: a pci.ids file, or udev with its hwdb."""
    if any(sysroot.exists(p) for p in PCI_IDS_PATHS):
        return True
    return (
        sysroot.is_host
        and sysroot.exists("/run/udev/data")
        and any(sysroot.exists(p) for p in HWDB_PATHS)
    )


@lru_cache(maxsize=4)
def _pci_ids_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


_VENDOR_LINE = re.compile(r"^([0-9a-f]{4})  (.+)$", re.M)


@lru_cache(maxsize=4)
def _vendor_index(text: str) -> dict[int, tuple[str, int, int]]:
    """vendor -> (name, start, end) of its block of device lines: one pass over the file."""
    found = [
        (int(m.group(1), 16), m.group(2).strip(), m.end()) for m in _VENDOR_LINE.finditer(text)
    ]
    out: dict[int, tuple[str, int, int]] = {}
    for i, (vendor, name, start) in enumerate(found):
        end = found[i + 1][2] if i + 1 < len(found) else len(text)
        out.setdefault(vendor, (name, start, end))
    return out


def find_in_pci_ids(text: str, vendor: int, device: int | None) -> tuple[str | None, str | None]:
    """The names of one vendor and device from pci.ids. The vendors are indexed once per
    process, without parsing every device line (the file is 1.3 MB)."""
    entry = _vendor_index(text).get(vendor)
    if entry is None:
        return None, None
    name, start, end = entry
    if device is None:
        return name, None
    d = re.compile(rf"^\t{device:04x}  (.+)$", re.M).search(text, start, end)
    return name, (d.group(1).strip() if d else None)


@lru_cache(maxsize=1)
def _udev_context():  # type: ignore[no-untyped-def]
    import pyudev

    return pyudev.Context()


def _udev_properties(sysroot: SysRoot, sys_path: str) -> dict[str, str]:
    """udev's properties of a device; {} where udev keeps no database (no udevd runs)."""
    if not sysroot.exists("/run/udev/data"):
        return {}
    try:
        import pyudev

        dev = pyudev.Devices.from_sys_path(_udev_context(), sys_path)
        return dict(dev.properties)
    except Exception:  # no libudev, no such device: names are optional
        return {}


def lookup(
    sysroot: SysRoot, bdf: str, vendor: int | None, device: int | None
) -> tuple[str | None, str | None]:
    """(vendor name, device name) for a PCI device, each None when unknown."""
    vname = dname = None
    if sysroot.is_host:
        props = _udev_properties(sysroot, f"/sys/bus/pci/devices/{bdf}")
        vname = props.get("ID_VENDOR_FROM_DATABASE")
        dname = props.get("ID_MODEL_FROM_DATABASE")
    if (vname is None or dname is None) and vendor is not None:
        for rel in PCI_IDS_PATHS:
            path = sysroot.path(rel)
            if path.exists():
                v, d = find_in_pci_ids(_pci_ids_text(str(path)), vendor, device)
                vname = vname or v
                dname = dname or d
                break
    return vname, dname
