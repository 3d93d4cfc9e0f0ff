"""The PCI hierarchy as sysfs lays it out: host bridges (`pci0000:00`), bridges and the
devices below them. Each device's parent is the directory its /sys/devices path sits in."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from .sysroot import SysRoot

_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


@dataclass
class Node:
    """A PCI device (or, with `address` like `pci0000:00`, a root bus) and its children."""

    address: str
    children: list[Node] = field(default_factory=list)


def parent_of(sysroot: SysRoot, address: str) -> str:
    """The PCI device above `address`, or its root bus (`pci0000:00`) when none is."""
    real = os.path.realpath(sysroot.path(f"/sys/bus/pci/devices/{address}"))
    up = os.path.basename(os.path.dirname(real))
    return up if _BDF.match(up) or up.startswith("pci") else f"pci{address[:7]}"


def build(sysroot: SysRoot, addresses: list[str]) -> list[Node]:
    """The forest of `addresses`, one tree per root bus, children in address order. A device
    whose parent is not among `addresses` hangs from its root bus."""
    nodes = {a: Node(a) for a in sorted(addresses)}
    roots: dict[str, Node] = {}
    for addr, node in nodes.items():
        up = parent_of(sysroot, addr)
        parent = nodes.get(up)
        if parent is None:
            bus = up if up.startswith("pci") else f"pci{addr[:7]}"
            parent = roots.setdefault(bus, Node(bus))
        parent.children.append(node)
    return [roots[r] for r in sorted(roots)]
