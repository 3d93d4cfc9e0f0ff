"""The INTx line view: who else is on a device's interrupt line, and how it is masked.

Sources: ``/proc/interrupts`` (counts, chip, handler names), ``/sys/kernel/irq/<N>/``
(``actions``, ``chip_name``, ``type`` and, on a kernel with the vfiokit genirq patch,
``mask_device``) and the ``irq`` attribute of every PCI device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .sysroot import SysRoot

_VFIO_HANDLER = re.compile(r"^vfio(?:kit)?-intx\((?P<bdf>[0-9a-fA-F:.]+)\)$")


@dataclass(frozen=True)
class ProcInterrupt:
    """One numbered line of /proc/interrupts."""

    irq: int
    counts: tuple[int, ...]
    chip: str
    hwirq_type: str
    actions: tuple[str, ...]

    @property
    def total(self) -> int:
        return sum(self.counts)


def parse_proc_interrupts(text: str) -> dict[int, ProcInterrupt]:
    """Parse /proc/interrupts; lines that are not numbered IRQs (NMI, LOC, ...) are skipped."""
    lines = text.splitlines()
    if not lines:
        return {}
    ncpu = len(lines[0].split())
    result: dict[int, ProcInterrupt] = {}
    for line in lines[1:]:
        label, sep, rest = line.partition(":")
        label = label.strip()
        if not sep or not label.isdigit():
            continue
        fields = rest.split()
        counts: list[int] = []
        for tok in fields[:ncpu]:
            if not tok.isdigit():
                break
            counts.append(int(tok))
        tail = fields[len(counts) :]
        chip = tail[0] if tail else ""
        hwirq_type = tail[1] if len(tail) > 1 else ""
        actions = " ".join(tail[2:])
        names = tuple(a.strip() for a in actions.split(",") if a.strip())
        result[int(label)] = ProcInterrupt(int(label), tuple(counts), chip, hwirq_type, names)
    return result


def parse_actions(text: str | None) -> tuple[str, ...]:
    """Parse /sys/kernel/irq/<N>/actions (comma-separated handler names)."""
    if not text:
        return ()
    return tuple(a.strip() for a in text.split(",") if a.strip())


def vfio_handler_device(action: str) -> str | None:
    """The PCI address in a VFIO INTx handler name (``vfio-intx(0000:00:04.0)``), else None."""
    m = _VFIO_HANDLER.match(action)
    return m["bdf"] if m else None


@dataclass
class IntxLine:
    """One interrupt line as the kernel sees it now."""

    irq: int
    chip: str | None = None
    trigger: str | None = None  # "level" / "edge"
    actions: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()  # PCI addresses whose `irq` attribute is this line
    count: int | None = None  # interrupts delivered so far, all CPUs
    mask_device: bool | None = None  # None: kernel without the vfiokit genirq patch
    patched: bool = False
    handler_devices: dict[str, str | None] = field(default_factory=dict)

    @property
    def shared(self) -> bool:
        """More than one device is wired to the line, or more than one handler is on it."""
        return len(self.devices) > 1 or len(self.actions) > 1

    def to_dict(self) -> dict[str, object]:
        return {
            "irq": self.irq,
            "chip": self.chip,
            "trigger": self.trigger,
            "actions": list(self.actions),
            "handler_devices": self.handler_devices,
            "devices": list(self.devices),
            "shared": self.shared,
            "count": self.count,
            "genirq_patch": self.patched,
            "mask_device": self.mask_device,
        }


def handler_device(sysroot: SysRoot, action: str) -> str | None:
    """Which PCI device registered a handler, where its name tells (vfio, a net interface)."""
    bdf = vfio_handler_device(action)
    if bdf:
        return bdf
    dev = sysroot.link_name(f"/sys/class/net/{action}/device") if "/" not in action else None
    return dev


def irq_devices(sysroot: SysRoot) -> dict[int, list[str]]:
    """Every enabled PCI device with an INTx pin, grouped by its IRQ number.

    A device no driver has enabled still shows the firmware's legacy IRQ in `irq`; the
    kernel routes it (ACPI _PRT) only when it is enabled, so such devices are left out.
    """
    lines: dict[int, list[str]] = {}
    for bdf in sysroot.listdir("/sys/bus/pci/devices"):
        base = f"/sys/bus/pci/devices/{bdf}"
        irq = sysroot.read_int(f"{base}/irq", 10)
        if not irq or sysroot.read_int(f"{base}/enable", 10) == 0:
            continue
        # `irq` shows the MSI vector while MSI is on; the pin tells whether INTx exists at all.
        cfg = sysroot.read_bytes(f"{base}/config", 64)
        if cfg is not None and len(cfg) > 0x3D and cfg[0x3D] == 0:
            continue
        lines.setdefault(irq, []).append(bdf)
    return lines


def read_line(
    sysroot: SysRoot, irq: int, *, proc: dict[int, ProcInterrupt] | None = None
) -> IntxLine:
    """Everything known about interrupt line `irq`."""
    if proc is None:
        proc = parse_proc_interrupts(sysroot.read("/proc/interrupts") or "")
    base = f"/sys/kernel/irq/{irq}"
    entry = proc.get(irq)
    actions = parse_actions(sysroot.read(f"{base}/actions"))
    if not actions and entry:
        actions = entry.actions
    md = sysroot.read(f"{base}/mask_device")
    line = IntxLine(
        irq=irq,
        chip=sysroot.read(f"{base}/chip_name") or (entry.chip if entry else None),
        trigger=sysroot.read(f"{base}/type"),
        actions=actions,
        devices=tuple(irq_devices(sysroot).get(irq, [])),
        count=entry.total if entry else None,
        mask_device=None if md is None else md.strip() == "1",
        patched=md is not None,
    )
    line.handler_devices = {a: handler_device(sysroot, a) for a in actions}
    return line
