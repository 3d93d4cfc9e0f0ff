"""The test bed is what it claims: topology, stock vfio-pci binding, an INTx round trip."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import helpers as h

IDS = {
    "edu": (0x1234, 0x11E8),
    "e1000": (0x8086, 0x100E),
    "e1000e": (0x8086, 0x10D3),
    "nvme": (0x1B36, 0x0010),
}


def test_devices_are_where_the_topology_says(topology) -> None:
    for dev in topology.devices:
        if dev.qemu not in IDS:
            continue
        base = h.PCI / "devices" / dev.address
        assert base.is_dir(), f"{dev.name} missing at {dev.address}"
        ids = (int((base / "vendor").read_text(), 16), int((base / "device").read_text(), 16))
        assert ids == IDS[dev.qemu], dev.name


def test_iommu_and_remapping() -> None:
    assert os.listdir("/sys/class/iommu") == ["dmar0"]
    assert len(os.listdir("/sys/kernel/iommu_groups")) >= 5
    assert " IR-IO-APIC " in Path("/proc/interrupts").read_text()


def test_shared_and_alone_lines(topology) -> None:
    """Enable every test device; the kernel's routing must match the topology's."""
    nic = topology.by_name("nic")
    iface = os.listdir(h.PCI / "devices" / nic.address / "net")[0]
    subprocess.run(["ip", "link", "set", iface, "up"], check=True)
    edus = [d for d in topology.devices if d.qemu == "edu" and d.line in ("shared", "alone")]
    for dev in edus:
        h.bind(dev.address, "vfio-pci")
    opened = [h.VfioDevice(d.address) for d in edus]  # opening enables the device
    try:
        for dev in [*edus, nic]:
            irq = int((h.PCI / "devices" / dev.address / "irq").read_text())
            assert irq == dev.gsi, f"{dev.name}: IRQ {irq}, topology says GSI {dev.gsi}"
        shared = {d.address for d in topology.on_line("shared")}
        for dev in edus:
            same_line = {
                d.address
                for d in [*edus, nic]
                if int((h.PCI / "devices" / d.address / "irq").read_text()) == dev.gsi
            }
            assert same_line == (shared if dev.line == "shared" else {dev.address})
        actions = Path(f"/sys/kernel/irq/{nic.gsi}/actions").read_text().strip().split(",")
        assert iface in actions
    finally:
        for d in opened:
            d.close()
        for dev in edus:
            h.unbind(dev.address)


@pytest.mark.parametrize("name", ["edu_a", "edu_alone"])
def test_intx_round_trip_on_stock_vfio_pci(topology, name: str) -> None:
    dev = topology.by_name(name)
    with h.bound(dev.address, "vfio-pci"), h.VfioDevice(dev.address) as v:
        assert os.path.exists(f"/dev/vfio/{h.group_of(dev.address)}")
        flags, count = v.irq_info()
        assert count == 1 and flags & 0x7 == 0x7  # EVENTFD | MASKABLE | AUTOMASKED
        assert v.read32(0) == 0x010000ED  # edu identification: version 1.0, 0xed
        v.enable_intx()
        handlers = Path(f"/sys/kernel/irq/{dev.gsi}/actions").read_text()
        assert f"vfio-intx({dev.address})" in handlers
        before = h.irq_count(dev.gsi)
        rounds = 50
        for i in range(rounds):
            v.write32(h.EDU_IRQ_RAISE, 1 << (i % 8))
            assert v.wait_irq() == 1, f"no interrupt in round {i}"
            assert v.read32(h.EDU_IRQ_STATUS) == 1 << (i % 8)
            v.write32(h.EDU_IRQ_ACK, 1 << (i % 8))
            v.unmask_intx()
        assert v.wait_irq(0.1) == 0, "an interrupt arrived after the last ack + unmask"
        assert h.irq_count(dev.gsi) - before == rounds


def test_unmask_while_asserted_refires(topology) -> None:
    """Level semantics: unmasking a device that still asserts INTx signals again."""
    dev = topology.by_name("edu_b")
    with h.bound(dev.address, "vfio-pci"), h.VfioDevice(dev.address) as v:
        v.enable_intx()
        v.write32(h.EDU_IRQ_RAISE, 4)
        assert v.wait_irq() == 1
        v.unmask_intx()  # not acked: the device still asserts
        assert v.wait_irq() == 1
        v.write32(h.EDU_IRQ_ACK, 4)
        v.unmask_intx()
        assert v.wait_irq(0.1) == 0
