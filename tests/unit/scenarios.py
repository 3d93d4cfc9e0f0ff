"""Fake hosts for the device-model, doctor and CLI tests: one function a scenario."""

from __future__ import annotations

from fakesys import FakeSys, msi_cap, msix_cap, pcie_cap

NIC = dict(vendor=0x8086, device=0x10D3, class_code=0x020000)
AUDIO = dict(vendor=0x8086, device=0x293E, class_code=0x040300)
BRIDGE = dict(vendor=0x8086, device=0x2448, class_code=0x060400)
RTL8169 = dict(vendor=0x10EC, device=0x8169, class_code=0x020000)  # broken INTx masking
SATA = dict(vendor=0x8086, device=0x2922, class_code=0x010601)
EDU = dict(vendor=0x1234, device=0x11E8, class_code=0x00FF00)


def alone_in_group(fake: FakeSys) -> str:
    """A PCIe NIC with MSI and MSI-X, bound to e1000e, alone in IOMMU group 7."""
    fake.add_iommu()
    fake.add_vfio()
    fake.add_pci(
        "0000:03:00.0",
        **NIC,
        driver="e1000e",
        group="7",
        irq=17,
        caps=[pcie_cap(), msi_cap(2), msix_cap(5, table_bar=3)],
    )
    fake.add_net("enp3s0", "0000:03:00.0")
    fake.add_irq(17, "")
    return "0000:03:00.0"


def non_viable_group(fake: FakeSys) -> str:
    """Group 2: a bridge (pcieport), an audio function (snd_hda_intel) and our NIC."""
    fake.add_iommu()
    fake.add_vfio()
    fake.add_pci("0000:00:1c.0", **BRIDGE, driver="pcieport", group="2", irq=None, pin=0)
    fake.add_pci("0000:00:1b.0", **AUDIO, driver="snd_hda_intel", group="2", irq=22)
    fake.add_pci("0000:02:00.0", **NIC, driver="e1000e", group="2", irq=18, caps=[pcie_cap()])
    return "0000:02:00.0"


def shared_line_no_masking(fake: FakeSys) -> str:
    """An RTL8169 (no INTx masking) on IRQ 19, shared with an e1000e that has a handler."""
    fake.add_iommu()
    fake.add_vfio()
    fake.add_pci("0000:05:00.0", **RTL8169, driver="r8169", group="9", irq=19, caps=[pcie_cap()])
    fake.add_pci("0000:06:00.0", **NIC, driver="e1000e", group="10", irq=19, caps=[pcie_cap()])
    fake.add_net("enp6s0", "0000:06:00.0")
    fake.add_irq(19, "enp6s0")
    fake.set_proc_interrupts(
        "           CPU0       CPU1\n 19:        120        300  IR-IO-APIC  19-fasteoi   enp6s0\n"
    )
    return "0000:05:00.0"


def no_iommu(fake: FakeSys) -> str:
    fake.add_pci("0000:00:04.0", **EDU, irq=11, caps=[msi_cap()])
    return "0000:00:04.0"


def sriov_pf(fake: FakeSys) -> str:
    fake.add_iommu()
    fake.add_vfio()
    fake.add_pci(
        "0000:41:00.0",
        vendor=0x8086,
        device=0x1593,
        class_code=0x020000,
        driver="ice",
        group="30",
        irq=40,
        caps=[pcie_cap(), msix_cap(64)],
        sriov=(128, 2),
    )
    fake.add_pci(
        "0000:41:01.0",
        vendor=0x8086,
        device=0x1889,
        class_code=0x020000,
        driver="iavf",
        group="31",
        irq=0,
        pin=0,
        caps=[pcie_cap(), msix_cap(17)],
        physfn="0000:41:00.0",
    )
    return "0000:41:00.0"


def no_pin(fake: FakeSys) -> str:
    fake.add_iommu()
    fake.add_vfio()
    fake.add_pci(
        "0000:07:00.0", **NIC, driver=None, group="12", irq=0, pin=0, caps=[pcie_cap(), msix_cap(8)]
    )
    return "0000:07:00.0"


VIRTIO_BLK = dict(vendor=0x1AF4, device=0x1042, class_code=0x010000)
VIRTIO_NET = dict(vendor=0x1AF4, device=0x1041, class_code=0x020000)


def host_devices(fake: FakeSys) -> tuple[str, str]:
    """A QEMU guest's own devices: the root disk's controller (00:02.0, vda1 is root=) and
    the NIC with the host's address (00:03.0, enp0s3). Each alone in its group."""
    fake.add_iommu()
    fake.add_vfio()
    fake.add_pci("0000:00:02.0", **VIRTIO_BLK, driver="virtio-pci", group="4", irq=20,
                 caps=[pcie_cap()])  # fmt: skip
    fake.add_block("vda", "0000:00:02.0")
    fake.write("sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda/vda1/partition", "1\n")
    fake.link("sys/class/block/vda1", "sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda/vda1")
    fake.add_pci("0000:00:03.0", **VIRTIO_NET, driver="virtio-pci", group="5", irq=21,
                 caps=[pcie_cap()])  # fmt: skip
    fake.add_net("enp0s3", "0000:00:03.0")
    return "0000:00:02.0", "0000:00:03.0"


def behind_bridges(fake: FakeSys) -> dict[str, str]:
    """Root port 00:1c.0 (group 2) with a NIC at 02:00.0 (group 2, IRQ 18, up as enp2s0)
    below it; a second root port 00:1d.0 (group 3) with a PCIe switch 04:00.0 below, and
    an RTL8169 at 05:00.0 (group 4) below that, sharing IRQ 18 with the NIC; the root
    disk's controller 00:1f.2 (group 5) on the root bus."""
    fake.add_iommu()
    fake.add_vfio()
    fake.add_pci("0000:00:1c.0", **BRIDGE, driver="pcieport", group="2", irq=None, pin=0)
    fake.add_pci("0000:02:00.0", **NIC, driver="e1000e", group="2", irq=18,
                 parent="0000:00:1c.0")  # fmt: skip
    fake.add_pci("0000:00:1d.0", **BRIDGE, driver="pcieport", group="3", irq=None, pin=0)
    fake.add_pci("0000:04:00.0", **BRIDGE, driver="pcieport", group="3", irq=None, pin=0,
                 parent="0000:00:1d.0")  # fmt: skip
    fake.add_pci("0000:05:00.0", **RTL8169, driver="r8169", group="4", irq=18,
                 parent="0000:04:00.0")  # fmt: skip
    fake.add_pci("0000:00:1f.2", **SATA, driver="ahci", group="5", irq=None, pin=0)
    fake.add_net("enp2s0", "0000:02:00.0")
    fake.add_block("vda", "0000:00:1f.2")  # vda1 is root= (the fake's /proc/cmdline)
    part = f"{fake.dev_dir('0000:00:1f.2')}/virtio1/block/vda/vda1"
    fake.write(f"{part}/partition", "1\n")
    fake.link("sys/class/block/vda1", part)
    return {"port": "0000:00:1c.0", "nic": "0000:02:00.0", "switch": "0000:04:00.0",
            "rtl": "0000:05:00.0", "sata": "0000:00:1f.2"}  # fmt: skip
