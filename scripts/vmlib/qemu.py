"""Turn the test-bed topology (scripts/vm-topology.toml) into a QEMU command line."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

TOPOLOGY = Path(__file__).resolve().parent.parent / "vm-topology.toml"


@dataclass(frozen=True)
class Device:
    name: str
    qemu: str
    slot: int
    # "shared", "alone", "group" (a multi-function device), "pm" (a PM capability to
    # test), "msix" (interrupts by MSI-X only, its INTx pin off the test lines) or "infra"
    line: str
    options: str = ""
    function: int = 0
    parent: str = ""  # behind this root port (a device of qemu "pcie-root-port")
    parent_slot: int = 0  # that root port's slot
    pci_bus: int = 0  # the bus number the guest gives the port's secondary bus
    disk: str = ""  # the size ("64M") of a fresh raw image backing the device, if any

    @property
    def disk_bytes(self) -> int:
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        if not self.disk:
            return 0
        if self.disk[-1] in units:
            return int(self.disk[:-1]) * units[self.disk[-1]]
        return int(self.disk)

    @property
    def option(self) -> dict[str, str]:
        """The QEMU options as a dict ({"serial": ...})."""
        return dict(kv.split("=", 1) for kv in self.options.split(",") if "=" in kv)

    @property
    def address(self) -> str:
        return f"0000:{self.pci_bus:02x}:{self.slot:02x}.{self.function}"

    @property
    def gsi(self) -> int:
        """The q35 (ICH9) GSI of the device's INTA pin.

        Behind a root port, INTx is swizzled onto the port's own pin: (slot + pin) % 4 of
        the device, which for slot 0 pin A is the port's INTA.
        """
        slot = self.slot
        if self.parent:
            slot = self.parent_slot + self.slot  # (swizzle with pin A)
        return 16 if slot >= 25 else 20 + slot % 4


@dataclass(frozen=True)
class Topology:
    machine: str
    memory: str
    cpus: int
    iommu: str
    devices: tuple[Device, ...] = field(default_factory=tuple)

    def by_name(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(name)

    def on_line(self, line: str) -> list[Device]:
        return [d for d in self.devices if d.line == line]


def load(path: Path = TOPOLOGY) -> Topology:
    with open(path, "rb") as f:
        data = tomllib.load(f)
    m = data["machine"]
    slots = {d["name"]: int(d["slot"]) for d in data["device"]}
    devices = tuple(
        Device(
            name=d["name"],
            qemu=d["qemu"],
            slot=int(d["slot"]),
            line=d["line"],
            options=d.get("options", ""),
            function=int(d.get("function", 0)),
            parent=d.get("parent", ""),
            parent_slot=slots[d["parent"]] if "parent" in d else 0,
            pci_bus=int(d.get("pci_bus", 0)),
            disk=d.get("disk", ""),
        )
        for d in data["device"]
    )
    places = [(d.pci_bus, d.slot, d.function) for d in devices]
    if len(set(places)) != len(places):
        raise ValueError(f"{path}: two devices at one address")
    return Topology(m["type"], m["memory"], int(m["cpus"]), m["iommu"], devices)


def scratch_disks(topo: Topology, where: Path) -> dict[str, Path]:
    """A fresh, sparse raw image for every device with a `disk`, in `where` (one run's
    temporary folder): the guest starts from zeros each time. Device name -> image."""
    where.mkdir(parents=True, exist_ok=True)
    disks = {}
    for dev in topo.devices:
        if dev.disk:
            path = where / f"{dev.name}.img"
            with open(path, "wb") as f:
                f.truncate(dev.disk_bytes)
            disks[dev.name] = path
    return disks


def command(
    topo: Topology,
    *,
    kernel: Path,
    append: str,
    shares: dict[str, tuple[Path, bool]],
    disks: dict[str, Path] | None = None,
    accel: str = "tcg",
    tcg_thread: str = "single",
    qemu: str = "qemu-system-x86_64",
) -> list[str]:
    """The QEMU argv. `shares` maps a 9p mount tag to (host path, read_only); `disks` a
    device's name to the raw image behind it (scratch_disks()), for devices with a `disk`.

    Under TCG the vCPUs run round-robin in one host thread (`tcg_thread="single"`) unless
    asked for multi-threaded TCG: with QEMU 7.2's MTTCG and two vCPUs, a guest CPU's LAPIC
    was seen keeping the timer vector in service while idle (ISR and IRR 236 on CPU 1, no
    EOI): its ticks stop, so do its low-resolution hrtimers, and the sleepers on that CPU
    never wake; level interrupts of the shared line were lost too. Neither was seen
    round-robin (docs/testbed.md, "TCG threads").
    """
    if tcg_thread not in ("single", "multi"):
        raise ValueError(f"tcg_thread: {tcg_thread!r} is neither single nor multi")
    # No LA57 (5-level paging) under TCG: the 7.2 debug kernel takes KASAN's shadow range
    # from the LA57 feature bit, which identify_cpu() clears and sets again while it
    # re-reads CPUID; an interrupt in that window was once reported as a KASAN
    # "wild-memory-access" (docs/testbed.md). "no5lvl" does not close it: the bit comes back
    # from CPUID either way.
    cpu = "host" if accel == "kvm" else "max,la57=off"
    accel_opt = f"tcg,thread={tcg_thread}" if accel == "tcg" else accel
    machine = topo.machine + (",kernel-irqchip=split" if accel == "kvm" else "")
    argv = [
        qemu,
        "-accel", accel_opt,
        "-cpu", cpu,
        "-machine", machine,
        "-m", topo.memory,
        "-smp", str(topo.cpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", "stdio",
        "-device", topo.iommu,
        "-kernel", str(kernel),
        "-append", append,
    ]  # fmt: skip
    multi = {(d.pci_bus, d.slot) for d in topo.devices if d.function}
    chassis = 0
    for dev in topo.devices:
        opts = f",{dev.options}" if dev.options else ""
        if (dev.pci_bus, dev.slot) in multi and dev.function == 0:
            opts += ",multifunction=on"
        if dev.qemu == "pcie-root-port":
            chassis += 1
            opts += f",id={dev.name},chassis={chassis}"
        if dev.parent:
            opts += f",bus={dev.parent}"
        if dev.qemu == "virtio-9p-pci":
            path, ro = shares[dev.name]
            fs = f"local,id=fs_{dev.name},path={path},security_model=none,multidevs=remap"
            argv += ["-fsdev", fs + (",readonly=on" if ro else "")]
            opts += f",fsdev=fs_{dev.name},mount_tag={dev.name}"
        if dev.disk:
            if not disks or dev.name not in disks:
                raise ValueError(f"{dev.name} needs a disk image (scratch_disks())")
            drive = f"if=none,id=disk_{dev.name},file={disks[dev.name]},format=raw"
            argv += ["-drive", drive]
            opts += f",drive=disk_{dev.name}"
        argv += ["-device", f"{dev.qemu},addr={dev.slot:#04x}.{dev.function}{opts}"]
    return argv
