"""IOMMU state and IOMMU groups: is there an IOMMU, which, with interrupt remapping, and
can a group be handed to VFIO (viability), naming the member that blocks it and why."""

from __future__ import annotations

from dataclasses import dataclass, field

from .sysroot import SysRoot

# Drivers with which a device does not block its group: VFIO's own drivers, and drivers
# that declare `driver_managed_dma` (pci-stub, the PCIe port driver).
VFIO_DRIVERS = frozenset({"vfio-pci", "vfiokit-pci"})
HARMLESS_DRIVERS = frozenset({"pci-stub", "pcieport"})


def is_vfio_driver(driver: str | None) -> bool:
    return driver is not None and (driver in VFIO_DRIVERS or driver.endswith("-vfio-pci"))


@dataclass
class IommuState:
    units: list[str] = field(default_factory=list)  # /sys/class/iommu entries
    kind: str | None = None  # "intel-vt-d", "amd-vi", "virtio-iommu", ...
    groups: int = 0
    interrupt_remapping: bool | None = None
    cmdline: str = ""

    @property
    def enabled(self) -> bool:
        return self.groups > 0

    def to_dict(self) -> dict[str, object]:
        return {
            "enabled": self.enabled,
            "kind": self.kind,
            "units": self.units,
            "groups": self.groups,
            "interrupt_remapping": self.interrupt_remapping,
        }


def _kind(units: list[str]) -> str | None:
    for unit in units:
        if unit.startswith("dmar"):
            return "intel-vt-d"
        if unit.startswith("ivhd"):
            return "amd-vi"
        if "virtio" in unit:
            return "virtio-iommu"
    return units[0] if units else None


def read_state(sysroot: SysRoot, proc_interrupts: str | None = None) -> IommuState:
    units = sysroot.listdir("/sys/class/iommu")
    groups = len(sysroot.listdir("/sys/kernel/iommu_groups"))
    text = proc_interrupts if proc_interrupts is not None else sysroot.read("/proc/interrupts")
    ir: bool | None = None
    if text is not None:
        # Remapped interrupt domains are named IR-IO-APIC, IR-PCI-MSI, ... in /proc/interrupts.
        ir = any(" IR-" in f" {line}" for line in text.splitlines())
    return IommuState(
        units=units,
        kind=_kind(units),
        groups=groups,
        interrupt_remapping=ir,
        cmdline=sysroot.read("/proc/cmdline") or "",
    )


@dataclass(frozen=True)
class GroupMember:
    address: str
    driver: str | None
    class_code: int | None

    @property
    def is_bridge(self) -> bool:
        return (
            self.class_code is not None
            and self.class_code >> 16 == 0x06
            and ((self.class_code >> 8) & 0xFF) in (0x04, 0x09)
        )

    def blocker_reason(self) -> str | None:
        """Why this member stops its group from being viable for VFIO, or None."""
        if self.driver is None or is_vfio_driver(self.driver) or self.driver in HARMLESS_DRIVERS:
            return None
        return f"bound to host driver {self.driver}"


@dataclass
class IommuGroup:
    number: str
    members: list[GroupMember]

    def blockers(self, taking: set[str] | None = None) -> list[tuple[GroupMember, str]]:
        """Members that keep the group non-viable, excluding the ones in `taking`."""
        out = []
        for m in self.members:
            if taking and m.address in taking:
                continue
            reason = m.blocker_reason()
            if reason:
                out.append((m, reason))
        return out

    @property
    def viable(self) -> bool:
        """Viable as it stands now: every member bound to VFIO, harmless or unbound."""
        return not self.blockers()

    def to_dict(self) -> dict[str, object]:
        return {
            "group": self.number,
            "viable": self.viable,
            "members": [
                {
                    "address": m.address,
                    "driver": m.driver,
                    "bridge": m.is_bridge,
                    "blocks": m.blocker_reason(),
                }
                for m in self.members
            ],
        }


def read_group(sysroot: SysRoot, number: str) -> IommuGroup:
    members = []
    for addr in sysroot.listdir(f"/sys/kernel/iommu_groups/{number}/devices"):
        base = f"/sys/bus/pci/devices/{addr}"
        members.append(
            GroupMember(
                addr, sysroot.link_name(f"{base}/driver"), sysroot.read_int(f"{base}/class", 16)
            )
        )
    return IommuGroup(number, members)
