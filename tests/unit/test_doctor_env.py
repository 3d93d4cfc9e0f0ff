"""doctor in containers and VMs: capabilities read, not assumed; a VM is told how to get a
vIOMMU; what cannot be known is said to be unknown."""

from __future__ import annotations

import shutil

from fakesys import FakeSys
from unit import scenarios
from vfiokit import SysRoot, virt
from vfiokit import doctor as doc
from vfiokit.binding.memlock import limits_file

NO_CAPS = "Name:\tpython3\nCapEff:\t00000000a80425fb\n"  # docker's default set: no IPC_LOCK
ALL_CAPS = "Name:\tpython3\nCapEff:\t000001ffffffffff\n"


def by_id(fake: FakeSys, bdf: str | None = None) -> dict[str, doc.Check]:
    return {c.id: c for c in doc.run(SysRoot(fake.root), bdf)}


def test_capability_is_read_from_capeff(fake: FakeSys) -> None:
    sysroot = SysRoot(fake.root)
    assert virt.has_capability(sysroot, virt.CAP_IPC_LOCK) is None
    fake.write("proc/self/status", NO_CAPS)
    assert virt.has_capability(sysroot, virt.CAP_IPC_LOCK) is False
    fake.write("proc/self/status", ALL_CAPS)
    assert virt.has_capability(sysroot, virt.CAP_IPC_LOCK) is True


def test_memlock_without_cap_ipc_lock_is_limited(fake: FakeSys) -> None:
    low = doc.check_memlock((8 << 20, 8 << 20), ipc_lock=False, user="alice")
    assert low.status == doc.Status.WARN
    assert "root has CAP_IPC_LOCK" not in low.detail
    ok = doc.check_memlock((8 << 20, 8 << 20), ipc_lock=True)
    assert ok.status == doc.Status.OK and "CAP_IPC_LOCK" in ok.detail


def test_memlock_remedy_names_the_file_assign_names(fake: FakeSys) -> None:
    low = doc.check_memlock((8 << 20, 8 << 20), ipc_lock=False, user="alice")
    assert limits_file("alice") in (low.remedy or "")
    assert limits_file("alice") == "/etc/security/limits.d/90-vfiokit-alice.conf"


def test_vm_without_viommu_is_told_how_to_get_one(fake: FakeSys) -> None:
    scenarios.no_iommu(fake)
    fake.write("sys/class/dmi/id/sys_vendor", "QEMU\n")
    fake.write("sys/class/dmi/id/product_name", "Standard PC (Q35 + ICH9, 2009)\n")
    c = by_id(fake)["iommu"]
    assert c.status == doc.Status.FAIL
    remedy = c.remedy or ""
    assert "-device intel-iommu,intremap=on" in remedy and "<iommu model='intel'/>" in remedy
    assert "firmware" not in remedy and "VT-d" not in remedy


def test_vm_by_cpu_flag_and_irq_remapping(fake: FakeSys) -> None:
    scenarios.alone_in_group(fake)
    fake.add_iommu(remapping=False)
    fake.write("proc/cpuinfo", "processor\t: 0\nflags\t\t: fpu vme hypervisor lahf_lm\n")
    assert virt.hypervisor(SysRoot(fake.root)) == "a hypervisor"
    c = by_id(fake)["irq_remap"]
    assert c.status == doc.Status.WARN and "intremap=on" in (c.remedy or "")


def test_bare_metal_keeps_the_firmware_remedy(fake: FakeSys) -> None:
    scenarios.no_iommu(fake)
    fake.write("sys/class/dmi/id/sys_vendor", "Dell Inc.\n")
    fake.write("proc/cpuinfo", "flags\t\t: fpu vme lahf_lm\n")
    assert "VT-d" in (by_id(fake)["iommu"].remedy or "")


def test_modules_unknown_without_lib_modules(fake: FakeSys) -> None:
    scenarios.no_iommu(fake)
    shutil.rmtree(fake.root / "lib/modules")
    c = by_id(fake)["module_vfio_pci"]
    assert c.status == doc.Status.INFO
    assert "unknown" in c.detail and "not present in this kernel" not in c.detail
    assert doc.kernel_module(SysRoot(fake.root), "vfio_pci") == "unknown"


def test_modules_missing_with_lib_modules(fake: FakeSys) -> None:
    scenarios.no_iommu(fake)
    c = by_id(fake)["module_vfio_pci"]
    assert c.status == doc.Status.FAIL and "not present in this kernel" in c.detail
