"""The device model and the line/group views on fake hosts."""

import pytest

from fakesys import FakeSys, msi_cap
from unit import scenarios
from vfiokit import NotFound, SysRoot, intx, iommu
from vfiokit import device as devmod


def test_alone_in_group(fake: FakeSys) -> None:
    bdf = scenarios.alone_in_group(fake)
    d = devmod.read_device(SysRoot(fake.root), bdf)
    assert d.ids == "8086:10d3" and d.class_name == "network"
    assert d.driver == "e1000e" and d.driver_override is None
    assert d.iommu_group == "7" and d.iommu_group_members == [bdf]
    assert d.intx_pin == 1 and d.irq == 17
    assert d.intx_masking is True  # PCIe
    assert d.msi is not None and d.msi["vectors"] == 4 and d.msi["is_64bit"] is True
    assert d.msix is not None and d.msix["table_size"] == 5 and d.msix["table_bar"] == 3
    assert d.net_interfaces == ["enp3s0"]
    assert d.reset_methods == ["flr", "bus"]
    assert iommu.read_group(SysRoot(fake.root), "7").viable is False  # e1000e blocks it


def test_non_viable_group_names_the_blocker(fake: FakeSys) -> None:
    bdf = scenarios.non_viable_group(fake)
    sysroot = SysRoot(fake.root)
    group = iommu.read_group(sysroot, "2")
    blockers = group.blockers(taking={bdf})
    assert [(m.address, why) for m, why in blockers] == [
        ("0000:00:1b.0", "bound to host driver snd_hda_intel")
    ]
    bridge = next(m for m in group.members if m.address == "0000:00:1c.0")
    assert bridge.is_bridge and bridge.blocker_reason() is None


def test_shared_line_without_masking(fake: FakeSys) -> None:
    bdf = scenarios.shared_line_no_masking(fake)
    sysroot = SysRoot(fake.root)
    d = devmod.read_device(sysroot, bdf)
    assert d.intx_masking is False and "quirk" in d.intx_masking_reason
    line = intx.read_line(sysroot, 19)
    assert line.devices == ("0000:05:00.0", "0000:06:00.0")
    assert line.actions == ("enp6s0",)
    assert line.handler_devices == {"enp6s0": "0000:06:00.0"}
    assert line.shared and line.count == 420
    assert line.mask_device is None and not line.patched


def test_patched_line_state(fake: FakeSys) -> None:
    scenarios.alone_in_group(fake)
    fake.add_irq(17, "vfiokit-intx(0000:03:00.0)", mask_device=0)
    line = intx.read_line(SysRoot(fake.root), 17)
    assert line.patched and line.mask_device is False and not line.shared
    assert line.handler_devices == {"vfiokit-intx(0000:03:00.0)": "0000:03:00.0"}


def test_no_iommu(fake: FakeSys) -> None:
    bdf = scenarios.no_iommu(fake)
    sysroot = SysRoot(fake.root)
    d = devmod.read_device(sysroot, bdf)
    assert d.iommu_group is None and d.iommu_group_members == []
    state = iommu.read_state(sysroot)
    assert not state.enabled and state.kind is None and state.interrupt_remapping is False


def test_sriov(fake: FakeSys) -> None:
    bdf = scenarios.sriov_pf(fake)
    sysroot = SysRoot(fake.root)
    pf = devmod.read_device(sysroot, bdf)
    assert (pf.sriov_totalvfs, pf.sriov_numvfs, pf.physfn) == (128, 2, None)
    vf = devmod.read_device(sysroot, "0000:41:01.0")
    assert vf.physfn == bdf and vf.sriov_totalvfs is None


def test_no_pin(fake: FakeSys) -> None:
    bdf = scenarios.no_pin(fake)
    d = devmod.read_device(SysRoot(fake.root), bdf)
    assert d.intx_pin == 0 and d.irq is None
    assert d.intx_masking is False and d.intx_masking_reason == "no INTx pin"
    assert d.driver is None


def test_unprivileged_config_read(fake: FakeSys) -> None:
    fake.add_pci("0000:00:04.0", **scenarios.EDU, config_size=64, irq=20, caps=[msi_cap()])
    d = devmod.read_device(SysRoot(fake.root), "0000:00:04.0")
    assert d.msi is None and d.msix is None and d.intx_masking is None
    assert d.config_readable == 64


def test_resolve(fake: FakeSys) -> None:
    scenarios.no_iommu(fake)
    sysroot = SysRoot(fake.root)
    assert devmod.resolve(sysroot, "00:04.0") == "0000:00:04.0"
    with pytest.raises(NotFound):
        devmod.resolve(sysroot, "00:05.0")


def test_unenabled_devices_not_on_line(fake: FakeSys) -> None:
    """Before a driver enables a device its `irq` is the firmware's: not a real sharer."""
    fake.add_pci("0000:00:04.0", **scenarios.EDU, irq=10, enabled=False)
    fake.add_pci("0000:00:08.0", **scenarios.EDU, irq=10, enabled=True)
    assert intx.irq_devices(SysRoot(fake.root)) == {10: ["0000:00:08.0"]}


def test_vfiokit_pci_state_is_shown(fake: FakeSys) -> None:
    bdf = scenarios.alone_in_group(fake)
    fake.bind(bdf, "vfiokit-pci")
    d = fake.dev_dir(bdf)
    fake.write(f"{d}/vfiokit/intx_mode", "line\n")
    fake.write(f"{d}/vfiokit/counts", "line=3 device=1\n")
    dev = devmod.read_device(SysRoot(fake.root), bdf)
    assert dev.vfiokit_intx == {"counts": "line=3 device=1", "intx_mode": "line"}
