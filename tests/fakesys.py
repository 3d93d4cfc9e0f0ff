"""Fake sysfs/procfs trees for unit tests, laid out as the kernel lays out the real ones.

A FakeSys is a folder with sys/, proc/, dev/ and lib/ below it; point vfiokit at it with
SysRoot(fake.root) or VFIOKIT_SYSROOT. Symlinks are relative, as in sysfs, so code that
resolves them sees the same structure it would see on a host.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vfiokit import pciconfig as pc


@dataclass
class Cap:
    cap_id: int
    body: bytes = b""


def msi_cap(vectors_log2: int = 0, is_64: bool = True, enabled: bool = False) -> Cap:
    ctrl = (vectors_log2 << 1) | (0x80 if is_64 else 0) | (1 if enabled else 0)
    return Cap(pc.CAP_ID_MSI, ctrl.to_bytes(2, "little") + bytes(12))


def msix_cap(
    table_size: int,
    table_bar: int = 0,
    table_off: int = 0x2000,
    pba_bar: int = 0,
    pba_off: int = 0x3000,
    enabled: bool = False,
) -> Cap:
    ctrl = (table_size - 1) | (0x8000 if enabled else 0)
    return Cap(
        pc.CAP_ID_MSIX,
        ctrl.to_bytes(2, "little")
        + (table_off | table_bar).to_bytes(4, "little")
        + (pba_off | pba_bar).to_bytes(4, "little"),
    )


def pcie_cap() -> Cap:
    return Cap(pc.CAP_ID_PCIE, bytes(0x3A))


def config_space(
    vendor: int,
    device: int,
    class_code: int,
    pin: int = 1,
    caps: list[Cap] | None = None,
    command: int = 0,
    status: int = 0,
    size: int = 256,
) -> bytes:
    cfg = bytearray(256)
    cfg[0:2] = vendor.to_bytes(2, "little")
    cfg[2:4] = device.to_bytes(2, "little")
    cfg[4:6] = command.to_bytes(2, "little")
    cfg[9:12] = class_code.to_bytes(3, "little")
    cfg[0x3D] = pin
    off = 0x40
    prev = pc.CAP_PTR
    for cap in caps or []:
        cfg[prev] = off
        cfg[off] = cap.cap_id
        cfg[off + 2 : off + 2 + len(cap.body)] = cap.body
        prev = off + 1
        off += (2 + len(cap.body) + 3) & ~3
    if caps:
        status |= pc.STATUS_CAP_LIST
    cfg[6:8] = status.to_bytes(2, "little")
    return bytes(cfg[:size])


class FakeSys:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.parents: dict[str, str] = {}  # device -> the bridge it sits below
        for d in (
            "sys/bus/pci/devices",
            "sys/bus/pci/drivers",
            "sys/kernel/iommu_groups",
            "sys/kernel/irq",
            "sys/class/iommu",
            "sys/class/net",
            "sys/class/block",
            "sys/module",
            "proc/sys/kernel",
            "dev",
        ):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.write("proc/sys/kernel/osrelease", "6.12.117-test\n")
        self.write("lib/modules/6.12.117-test/modules.dep", "")
        self.write("lib/modules/6.12.117-test/modules.builtin", "")
        self.write("proc/cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/vda1\n")
        self.write("proc/interrupts", "           CPU0       CPU1\n")

    # -- helpers ----------------------------------------------------------------------------
    def write(self, rel: str, text: str | bytes) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text)
        return p

    def link(self, rel: str, target_rel: str) -> None:
        """Make sys-relative symlink `rel` -> `target_rel` (both relative to the root)."""
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.is_symlink():
            p.unlink()
        p.symlink_to(os.path.relpath(self.root / target_rel, p.parent))

    def dev_dir(self, bdf: str) -> str:
        if bdf in self.parents:
            return f"{self.dev_dir(self.parents[bdf])}/{bdf}"
        return f"sys/devices/pci0000:00/{bdf}"

    # -- building blocks ---------------------------------------------------------------------
    def add_pci(
        self,
        bdf: str,
        *,
        vendor: int,
        device: int,
        class_code: int,
        driver: str | None = None,
        group: str | None = None,
        irq: int | None = 16,
        pin: int = 1,
        caps: list[Cap] | None = None,
        enabled: bool = True,
        config_size: int = 256,
        sriov: tuple[int, int] | None = None,
        physfn: str | None = None,
        override: str | None = None,
        reset_methods: str = "flr bus",
        parent: str | None = None,
    ) -> str:
        if parent is not None:
            self.parents[bdf] = parent
        d = self.dev_dir(bdf)
        for name, value in (
            ("vendor", f"0x{vendor:04x}"),
            ("device", f"0x{device:04x}"),
            ("subsystem_vendor", f"0x{vendor:04x}"),
            ("subsystem_device", "0x0001"),
            ("class", f"0x{class_code:06x}"),
            ("revision", "0x01"),
            ("irq", str(irq or 0)),
            ("numa_node", "-1"),
            ("enable", "1" if enabled else "0"),
            ("power_state", "D0"),
            ("reset_method", reset_methods),
            ("driver_override", override if override else "(null)"),
        ):
            self.write(f"{d}/{name}", value + "\n")
        self.write(
            f"{d}/config",
            config_space(vendor, device, class_code, pin=pin, caps=caps, size=config_size),
        )
        self.link(f"sys/bus/pci/devices/{bdf}", d)
        if driver:
            self.bind(bdf, driver)
        if group is not None:
            self.link(f"{d}/iommu_group", f"sys/kernel/iommu_groups/{group}")
            self.link(f"sys/kernel/iommu_groups/{group}/devices/{bdf}", d)
        if sriov:
            self.write(f"{d}/sriov_totalvfs", f"{sriov[0]}\n")
            self.write(f"{d}/sriov_numvfs", f"{sriov[1]}\n")
        if physfn:
            self.link(f"{d}/physfn", self.dev_dir(physfn))
        return d

    def bind(self, bdf: str, driver: str) -> None:
        (self.root / f"sys/bus/pci/drivers/{driver}").mkdir(parents=True, exist_ok=True)
        self.link(f"{self.dev_dir(bdf)}/driver", f"sys/bus/pci/drivers/{driver}")

    def add_net(self, name: str, bdf: str) -> None:
        d = f"{self.dev_dir(bdf)}/net/{name}"
        self.write(f"{d}/operstate", "up\n")
        self.link(f"{d}/device", self.dev_dir(bdf))
        self.link(f"sys/class/net/{name}", d)

    def add_block(self, name: str, bdf: str) -> None:
        d = f"{self.dev_dir(bdf)}/virtio1/block/{name}"
        self.write(f"{d}/size", "1000\n")
        self.link(f"sys/class/block/{name}", d)

    def add_irq(
        self,
        irq: int,
        actions: str,
        *,
        chip: str = "IR-IO-APIC",
        trigger: str = "level",
        mask_device: int | None = None,
    ) -> None:
        d = f"sys/kernel/irq/{irq}"
        self.write(f"{d}/actions", actions + "\n")
        self.write(f"{d}/chip_name", chip + "\n")
        self.write(f"{d}/type", trigger + "\n")
        if mask_device is not None:
            self.write(f"{d}/mask_device", f"{mask_device}\n")

    def set_proc_interrupts(self, text: str) -> None:
        self.write("proc/interrupts", text)

    def add_iommu(self, unit: str = "dmar0", remapping: bool = True) -> None:
        (self.root / f"sys/class/iommu/{unit}").mkdir(parents=True, exist_ok=True)
        chip = "IR-IO-APIC" if remapping else "IO-APIC"
        self.set_proc_interrupts(
            f"           CPU0       CPU1\n  4:         16          0  {chip}   4-edge      ttyS0\n"
        )

    def add_vfio(self) -> None:
        (self.root / "sys/module/vfio").mkdir(parents=True, exist_ok=True)
        (self.root / "sys/module/vfio_pci").mkdir(parents=True, exist_ok=True)
        (self.root / "sys/bus/pci/drivers/vfio-pci").mkdir(parents=True, exist_ok=True)
        self.write("dev/vfio/vfio", "")


class FakeSysfsKernel:
    """Plays the kernel's part when vfiokit writes to a FakeSys tree: unbind, driver_override,
    drivers_probe. `native` is the driver the kernel would pick without an override;
    `refuse` lists (address, driver) probes that fail, as a driver's probe() may."""

    def __init__(self, fake: FakeSys, native: dict[str, str] | None = None):
        self.fake = fake
        self.native = native or {}
        self.refuse: set[tuple[str, str]] = set()
        self.log: list[tuple[str, str]] = []

    def write(self, rel: str, text: str) -> None:
        rel = rel.lstrip("/")
        self.log.append((rel, text))
        root = self.fake.root
        if rel == "sys/bus/pci/drivers_probe":
            addr = text.strip()
            dev = root / "sys/bus/pci/devices" / addr
            if (dev / "driver").is_symlink():
                return
            override = (dev / "driver_override").read_text().strip()
            drv = override if override and override != "(null)" else self.native.get(addr)
            if drv and (addr, drv) not in self.refuse:
                self.fake.bind(addr, drv)
            return
        if rel.endswith("/driver/unbind"):
            dev = root / rel.removesuffix("/driver/unbind")
            (dev / "driver").unlink()
            return
        if rel.endswith("/driver_override"):
            (root / rel).write_text((text.strip() or "(null)") + "\n")
            return
        if rel.endswith("/sriov_numvfs"):
            now = int((root / rel).read_text())
            if now and int(text) and now != int(text):
                raise AssertionError("the kernel refuses to change numvfs without going via 0")
            (root / rel).write_text(f"{int(text)}\n")
            return
        raise AssertionError(f"unexpected sysfs write {rel!r}")
