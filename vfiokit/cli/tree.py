"""`vfiokit list --tree`: the PCI hierarchy with each device's driver, IOMMU group, INTx
line (and who shares it) and in-use verdict; as text or as the same nested JSON."""

from __future__ import annotations

from ..binding.inuse import Use
from ..device import PciDevice
from ..topology import Node


def _is_bridge(dev: PciDevice) -> bool:
    code = dev.class_code
    return code is not None and code >> 16 == 0x06 and (code >> 8) & 0xFF in (0x04, 0x09)


def _intx(dev: PciDevice) -> int | None:
    return dev.irq if dev.intx_pin and dev.irq else None


class Tree:
    """The devices, their in-use verdicts and the INTx lines: rendered two ways."""

    def __init__(self, devices: list[PciDevice], in_use: dict[str, list[Use]],
                 lines: dict[int, list[str]]) -> None:  # fmt: skip
        self.devices = {d.address: d for d in devices}
        self.in_use = in_use
        self.lines = lines  # IRQ -> the enabled devices wired to it (intx.irq_devices)

    def sharers(self, dev: PciDevice) -> list[str]:
        irq = _intx(dev)
        return [a for a in self.lines.get(irq, []) if a != dev.address] if irq else []

    def node_dict(self, node: Node) -> dict[str, object]:
        if node.address not in self.devices:
            return {"bus": node.address, "children": [self.node_dict(c) for c in node.children]}
        dev = self.devices[node.address]
        return {
            "address": dev.address,
            "class_name": dev.class_name,
            "bridge": _is_bridge(dev),
            "driver": dev.driver,
            "iommu_group": dev.iommu_group,
            "intx_irq": _intx(dev),
            "intx_shared_with": self.sharers(dev),
            "in_use": [u.to_dict() for u in self.in_use.get(dev.address, [])],
            "children": [self.node_dict(c) for c in node.children],
        }

    def label(self, dev: PciDevice) -> str:
        parts = [dev.address, dev.class_name or "?", dev.driver or "no driver"]
        parts.append(f"group {dev.iommu_group}" if dev.iommu_group else "no group")
        irq = _intx(dev)
        if irq:
            shared = self.sharers(dev)
            parts.append(f"intx {irq}" + (f" shared with {', '.join(shared)}" if shared else ""))
        uses = self.in_use.get(dev.address, [])
        if uses:
            mark = "!! " if any(u.fatal for u in uses) else "* "
            parts.append(mark + "in use: " + ", ".join(u.short or u.what for u in uses))
        return "  ".join(parts)

    def text(self, roots: list[Node]) -> str:
        out: list[str] = []

        def walk(node: Node, prefix: str) -> None:
            for i, child in enumerate(node.children):
                last = i == len(node.children) - 1
                branch = "└─ " if last else "├─ "
                out.append(prefix + branch + self.label(self.devices[child.address]))
                walk(child, prefix + ("   " if last else "│  "))

        for root in roots:
            out.append(root.address)
            walk(root, "")
        return "\n".join(out)
