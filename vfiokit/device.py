"""The host device model: a PCI device as sysfs shows it, read-only."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from . import names, pciconfig
from .address import PciAddress
from .errors import NotFound
from .sysroot import SysRoot

# Devices the kernel marks `broken_intx_masking` (drivers/pci/quirks.c, Linux 6.12).
_INTEL_I40E = (0x1572, 0x1574, 0x1580, 0x1581, *range(0x1583, 0x158C), 0x37D0, 0x37D1, 0x37D2)
BROKEN_INTX_MASKING = frozenset(
    {(0x1425, 0x0030), (0x1814, 0x0601), (0x1B7C, 0x0004), (0x1102, 0x000B), (0x10EC, 0x8169)}
    | {(0x8086, d) for d in _INTEL_I40E}
)
# Devices on which vfio-pci hides INTx altogether (vfio_pci_nointx, vfio_pci_core.c).
VFIO_NOINTX = frozenset({(0x8086, d) for d in _INTEL_I40E} | {(0x8086, 0x1563)})

PCI_CLASSES = {
    0x00: "unclassified",
    0x01: "storage",
    0x02: "network",
    0x03: "display",
    0x04: "multimedia",
    0x05: "memory",
    0x06: "bridge",
    0x07: "communication",
    0x08: "system",
    0x09: "input",
    0x0A: "docking",
    0x0B: "processor",
    0x0C: "serial-bus",
    0x0D: "wireless",
    0x0E: "intelligent-io",
    0x0F: "satellite",
    0x10: "encryption",
    0x11: "signal-processing",
    0x12: "accelerator",
    0x13: "non-essential",
    0x40: "coprocessor",
    0xFF: "unassigned",
}


def class_name(class_code: int | None) -> str | None:
    return None if class_code is None else PCI_CLASSES.get(class_code >> 16, "other")


@dataclass
class PciDevice:
    address: str
    vendor_id: int | None
    device_id: int | None
    subsystem_vendor_id: int | None
    subsystem_device_id: int | None
    class_code: int | None
    revision: int | None
    vendor_name: str | None
    device_name: str | None
    driver: str | None
    driver_override: str | None
    iommu_group: str | None
    iommu_group_members: list[str]
    numa_node: int | None
    intx_pin: int | None  # 0 none, 1..4 INTA..INTD; None if config space is unreadable
    irq: int | None
    intx_masking: bool | None  # PCI 2.3 INTx Disable usable; None: not known from here
    intx_masking_reason: str
    msi: dict[str, object] | None
    msix: dict[str, object] | None
    config_readable: int  # bytes of config space this user could read
    reset_methods: list[str]
    power_state: str | None
    enabled: bool | None
    sriov_totalvfs: int | None
    sriov_numvfs: int | None
    physfn: str | None
    net_interfaces: list[str] = field(default_factory=list)
    block_devices: list[str] = field(default_factory=list)
    vfiokit_intx: dict[str, str] | None = None  # vfiokit-pci's sysfs state, when bound to it

    @property
    def class_name(self) -> str | None:
        return class_name(self.class_code)

    @property
    def ids(self) -> str:
        v = f"{self.vendor_id:04x}" if self.vendor_id is not None else "????"
        d = f"{self.device_id:04x}" if self.device_id is not None else "????"
        return f"{v}:{d}"

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["ids"] = self.ids
        d["class_name"] = self.class_name
        for key in ("vendor_id", "device_id", "subsystem_vendor_id", "subsystem_device_id"):
            d[key] = None if d[key] is None else f"{d[key]:04x}"
        d["class_code"] = None if self.class_code is None else f"{self.class_code:06x}"
        return d


def list_addresses(sysroot: SysRoot) -> list[str]:
    return sysroot.listdir("/sys/bus/pci/devices")


def resolve(sysroot: SysRoot, text: str) -> str:
    """Validate a user-given address and return the canonical address of an existing device."""
    addr = str(PciAddress.parse(text))
    if not sysroot.exists(f"/sys/bus/pci/devices/{addr}"):
        raise NotFound(
            f"no PCI device {addr}",
            remedy="see `vfiokit list` for the devices this machine has",
        )
    return addr


def _intx_masking(
    vendor: int | None, device: int | None, pin: int | None, cfg: bytes
) -> tuple[bool | None, str]:
    if pin == 0:
        return False, "no INTx pin"
    if (vendor, device) in BROKEN_INTX_MASKING:
        return False, "kernel quirk: INTx Disable is broken on this device"
    pcie = pciconfig.is_pcie(cfg)
    if pcie:
        return True, "PCI Express: INTx Disable is mandatory"
    if pcie is None:
        return None, "unknown: config space beyond 64 bytes needs root"
    return None, "conventional PCI: the kernel tests INTx Disable at enumeration"


_BDF_PART = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def class_owners(sysroot: SysRoot, klass: str) -> dict[str, list[str]]:
    """PCI address -> names of the class devices (net, block) anywhere below it, from one
    pass over /sys/class/<klass> (resolving each entry once, not once per PCI device)."""
    out: dict[str, list[str]] = {}
    for name in sysroot.listdir(f"/sys/class/{klass}"):
        try:
            target = sysroot.path(f"/sys/class/{klass}/{name}").resolve()
        except OSError:
            continue
        for part in target.parts:
            if _BDF_PART.match(part):
                out.setdefault(part, []).append(name)
    return out


def _vfiokit_state(sysroot: SysRoot, base: str) -> dict[str, str] | None:
    """vfiokit-pci's view (docs/vfiokit-pci.md): intx_mode, mask_device, masked, counts."""
    names = sysroot.listdir(f"{base}/vfiokit")
    if not names:
        return None
    return {n: sysroot.read(f"{base}/vfiokit/{n}") or "" for n in names}


def read_device(
    sysroot: SysRoot, address: str, owners: dict[str, dict[str, list[str]]] | None = None
) -> PciDevice:
    """Build a PciDevice from sysfs. `address` must be canonical (see resolve()). `owners`:
    class_owners() of "net" and "block", when reading many devices at once."""
    base = f"/sys/bus/pci/devices/{address}"
    if not sysroot.exists(base):
        raise NotFound(f"no PCI device {address}", remedy="see `vfiokit list`")
    if owners is None:
        owners = {k: class_owners(sysroot, k) for k in ("net", "block")}
    r = sysroot.read
    ri = sysroot.read_int
    cfg = sysroot.read_bytes(f"{base}/config") or b""
    vendor, device = ri(f"{base}/vendor", 16), ri(f"{base}/device", 16)
    pin = pciconfig.interrupt_pin(cfg)
    group = sysroot.link_name(f"{base}/iommu_group")
    members = sysroot.listdir(f"/sys/kernel/iommu_groups/{group}/devices") if group else []
    masking, why = _intx_masking(vendor, device, pin, cfg)
    msi = pciconfig.msi(cfg)
    msix = pciconfig.msix(cfg)
    caps_known = pciconfig.capabilities(cfg) is not None
    override = r(f"{base}/driver_override")
    vname, dname = names.lookup(sysroot, address, vendor, device)
    return PciDevice(
        address=address,
        vendor_id=vendor,
        device_id=device,
        subsystem_vendor_id=ri(f"{base}/subsystem_vendor", 16),
        subsystem_device_id=ri(f"{base}/subsystem_device", 16),
        class_code=ri(f"{base}/class", 16),
        revision=ri(f"{base}/revision", 16),
        vendor_name=vname,
        device_name=dname,
        driver=sysroot.link_name(f"{base}/driver"),
        driver_override=None if override in (None, "", "(null)") else override,
        iommu_group=group,
        iommu_group_members=members,
        numa_node=ri(f"{base}/numa_node", 10),
        intx_pin=pin,
        irq=(ri(f"{base}/irq", 10) or None) if pin != 0 else None,
        intx_masking=masking,
        intx_masking_reason=why,
        msi=(asdict(msi) if msi else ({} if caps_known else None)),
        msix=(asdict(msix) if msix else ({} if caps_known else None)),
        config_readable=len(cfg),
        reset_methods=(r(f"{base}/reset_method") or "").split(),
        power_state=r(f"{base}/power_state"),
        enabled=None if ri(f"{base}/enable") is None else bool(ri(f"{base}/enable")),
        sriov_totalvfs=ri(f"{base}/sriov_totalvfs", 10),
        sriov_numvfs=ri(f"{base}/sriov_numvfs", 10),
        physfn=sysroot.link_name(f"{base}/physfn"),
        net_interfaces=owners["net"].get(address, []),
        block_devices=owners["block"].get(address, []),
        vfiokit_intx=_vfiokit_state(sysroot, base),
    )


def read_all(sysroot: SysRoot) -> list[PciDevice]:
    owners = {k: class_owners(sysroot, k) for k in ("net", "block")}
    return [read_device(sysroot, a, owners) for a in list_addresses(sysroot)]
