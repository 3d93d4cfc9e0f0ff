"""Vendor and device names: udev's hwdb (through pyudev) first, then the pci.ids file.

Names are decoration: where neither source is there (a minimal container, a fake tree
without pci.ids) they are None, and nothing else depends on them.
"""

from __future__ import annotations

from functools import lru_cache

from .sysroot import SysRoot

PCI_IDS_PATHS = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids")


def parse_pci_ids(text: str) -> tuple[dict[int, str], dict[tuple[int, int], str]]:
    """Parse pci.ids: ``(vendors, devices)`` keyed by vendor and (vendor, device) ID.

    Subsystem lines (two tabs) and the device-class section (``C xx``) are skipped; a
    malformed line is ignored rather than fatal.
    """
    vendors: dict[int, str] = {}
    devices: dict[tuple[int, int], str] = {}
    vendor: int | None = None
    for raw in text.splitlines():
        if not raw or raw.startswith("#"):
            continue
        if raw.startswith("C "):
            vendor = None
            continue
        if raw.startswith("\t\t"):
            continue
        if raw.startswith("\t"):
            if vendor is None:
                continue
            ident, _, name = raw[1:].partition(" ")
            try:
                devices[(vendor, int(ident, 16))] = name.strip()
            except ValueError:
                continue
            continue
        ident, _, name = raw.partition(" ")
        try:
            vendor = int(ident, 16)
        except ValueError:
            vendor = None
            continue
        vendors[vendor] = name.strip()
    return vendors, devices


@lru_cache(maxsize=4)
def _pci_ids(path: str) -> tuple[dict[int, str], dict[tuple[int, int], str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_pci_ids(f.read())
    except OSError:
        return {}, {}


def _udev_properties(sys_path: str) -> dict[str, str]:
    try:
        import pyudev

        dev = pyudev.Devices.from_sys_path(pyudev.Context(), sys_path)
        return dict(dev.properties)
    except Exception:  # no libudev, no such device: names are optional
        return {}


def lookup(
    sysroot: SysRoot, bdf: str, vendor: int | None, device: int | None
) -> tuple[str | None, str | None]:
    """(vendor name, device name) for a PCI device, each None when unknown."""
    vname = dname = None
    if sysroot.is_host:
        props = _udev_properties(f"/sys/bus/pci/devices/{bdf}")
        vname = props.get("ID_VENDOR_FROM_DATABASE")
        dname = props.get("ID_MODEL_FROM_DATABASE")
    if (vname is None or dname is None) and vendor is not None:
        for rel in PCI_IDS_PATHS:
            path = sysroot.path(rel)
            if path.exists():
                vendors, devices = _pci_ids(str(path))
                vname = vname or vendors.get(vendor)
                if device is not None:
                    dname = dname or devices.get((vendor, device))
                break
    return vname, dname
