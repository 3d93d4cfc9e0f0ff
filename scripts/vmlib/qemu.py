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
    line: str  # "shared", "alone", "group" (a multi-function device) or "infra"
    options: str = ""
    function: int = 0

    @property
    def address(self) -> str:
        return f"0000:00:{self.slot:02x}.{self.function}"

    @property
    def gsi(self) -> int:
        """The q35 (ICH9) GSI of the device's INTA pin."""
        return 16 if self.slot >= 25 else 20 + self.slot % 4


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
    devices = tuple(
        Device(
            d["name"],
            d["qemu"],
            int(d["slot"]),
            d["line"],
            d.get("options", ""),
            int(d.get("function", 0)),
        )
        for d in data["device"]
    )
    places = [(d.slot, d.function) for d in devices]
    if len(set(places)) != len(places):
        raise ValueError(f"{path}: two devices at one address")
    return Topology(m["type"], m["memory"], int(m["cpus"]), m["iommu"], devices)


def command(
    topo: Topology,
    *,
    kernel: Path,
    append: str,
    shares: dict[str, tuple[Path, bool]],
    accel: str = "tcg",
    qemu: str = "qemu-system-x86_64",
) -> list[str]:
    """The QEMU argv. `shares` maps a 9p mount tag to (host path, read_only)."""
    cpu = "host" if accel == "kvm" else "max"
    machine = topo.machine + (",kernel-irqchip=split" if accel == "kvm" else "")
    argv = [
        qemu,
        "-accel", accel,
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
    multi = {d.slot for d in topo.devices if d.function}
    for dev in topo.devices:
        opts = f",{dev.options}" if dev.options else ""
        if dev.slot in multi and dev.function == 0:
            opts += ",multifunction=on"
        if dev.qemu == "virtio-9p-pci":
            path, ro = shares[dev.name]
            fs = f"local,id=fs_{dev.name},path={path},security_model=none,multidevs=remap"
            argv += ["-fsdev", fs + (",readonly=on" if ro else "")]
            opts += f",fsdev=fs_{dev.name},mount_tag={dev.name}"
        argv += ["-device", f"{dev.qemu},addr={dev.slot:#04x}.{dev.function}{opts}"]
    return argv
