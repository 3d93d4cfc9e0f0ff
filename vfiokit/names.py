"""Vendor and device names: the pci.ids file first, then udev's hwdb (through pyudev) for
what pci.ids does not name, or where there is no pci.ids. (The hwdb's PCI names are made
from pci.ids; importing pyudev and libudev cost `vfiokit list` about 30 ms.)

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


def _vendor_line(text: str, vendor: int) -> re.Match[str] | None:
    """The first line `vvvv  Name` of `vendor`: str.find for its ID at a line start, the
    regex only there (indexing every vendor of the 1.3 MB file took 13 ms per process)."""
    key = f"{vendor:04x}  "
    at = 0 if text.startswith(key) else text.find("\n" + key) + 1
    while at > 0 or (at == 0 and text.startswith(key)):
        m = _VENDOR_LINE.match(text, at)
        if m:
            return m
        nxt = text.find("\n" + key, at + 1)
        at = nxt + 1 if nxt >= 0 else -1
    return None


_NEXT_VENDOR = re.compile(r"\n[0-9a-f]{4}  [^\n]")  # a literal first: a fast scan


@lru_cache(maxsize=256)
def _vendor_block(text: str, vendor: int) -> tuple[str, int, int] | None:
    """(name, start, end) of a vendor's block of device lines; once per vendor a process
    (a host has many devices of few vendors)."""
    m = _vendor_line(text, vendor)
    if m is None:
        return None
    nxt = _NEXT_VENDOR.search(text, m.end())
    return m.group(2).strip(), m.end(), nxt.start() if nxt else len(text)


def find_in_pci_ids(text: str, vendor: int, device: int | None) -> tuple[str | None, str | None]:
    """The names of one vendor and device from pci.ids: the vendor's line, then its device
    lines up to the next vendor's line, without parsing the rest of the file."""
    block = _vendor_block(text, vendor)
    if block is None:
        return None, None
    name, start, end = block
    if device is None:
        return name, None
    key = f"\n\t{device:04x}  "
    at = text.find(key, start, end)
    while at >= 0:
        line_end = text.find("\n", at + len(key))
        rest = text[at + len(key) : line_end if line_end >= 0 else len(text)]
        if rest:
            return name, rest.strip()
        at = text.find(key, at + 1, end)
    return name, None


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
    if vendor is not None:
        for rel in PCI_IDS_PATHS:
            path = sysroot.path(rel)
            if path.exists():
                vname, dname = find_in_pci_ids(_pci_ids_text(str(path)), vendor, device)
                break
    if (vname is None or dname is None) and sysroot.is_host:
        props = _udev_properties(sysroot, f"/sys/bus/pci/devices/{bdf}")
        vname = vname or props.get("ID_VENDOR_FROM_DATABASE")
        dname = dname or props.get("ID_MODEL_FROM_DATABASE")
    return vname, dname
