import resource

from fakesys import FakeSys
from unit import scenarios
from vfiokit import ExitCode, SysRoot
from vfiokit import doctor as doc


def by_id(checks: list[doc.Check]) -> dict[str, doc.Check]:
    return {c.id: c for c in checks}


def test_healthy_host(fake: FakeSys) -> None:
    bdf = scenarios.alone_in_group(fake)
    fake.bind(bdf, "vfio-pci")
    checks = by_id(doc.run(SysRoot(fake.root), bdf))
    assert checks["iommu"].status == doc.Status.OK and "intel-vt-d" in checks["iommu"].detail
    assert checks["irq_remap"].status == doc.Status.OK
    assert checks["module_vfio_pci"].status == doc.Status.OK
    assert checks["group"].status == doc.Status.OK
    assert checks["intx"].status == doc.Status.OK and "alone" in checks["intx"].detail
    assert checks["driver"].status == doc.Status.OK
    assert checks["genirq_patch"].status == doc.Status.INFO


def test_no_iommu_fails_with_remedy(fake: FakeSys) -> None:
    bdf = scenarios.no_iommu(fake)
    checks = doc.run(SysRoot(fake.root), bdf)
    c = by_id(checks)
    assert c["iommu"].status == doc.Status.FAIL and "intel_iommu=on" in (c["iommu"].remedy or "")
    assert c["group"].status == doc.Status.FAIL
    assert c["module_vfio"].status == doc.Status.FAIL
    assert doc.exit_code(checks) == ExitCode.CHECK_FAILED


def test_non_viable_group_is_named(fake: FakeSys) -> None:
    bdf = scenarios.non_viable_group(fake)
    c = by_id(doc.run(SysRoot(fake.root), bdf))["group"]
    assert c.status == doc.Status.WARN
    assert "0000:00:1b.0 is bound to host driver snd_hda_intel" in c.detail
    assert "0000:00:1c.0" not in c.detail  # the bridge does not block


def test_shared_line_without_masking_explains_ebusy(fake: FakeSys) -> None:
    bdf = scenarios.shared_line_no_masking(fake)
    c = by_id(doc.run(SysRoot(fake.root), bdf))["intx"]
    assert c.status == doc.Status.FAIL
    assert "Flags mismatch irq 19" in c.detail and "EBUSY" in c.detail
    assert "0000:06:00.0" in c.detail
    assert c.remedy and "MSI" in c.remedy


def test_no_pin_is_info(fake: FakeSys) -> None:
    bdf = scenarios.no_pin(fake)
    c = by_id(doc.run(SysRoot(fake.root), bdf))["intx"]
    assert c.status == doc.Status.INFO and "MSI" in c.detail


def test_patch_detected(fake: FakeSys) -> None:
    scenarios.alone_in_group(fake)
    fake.add_irq(17, "", mask_device=1)
    assert by_id(doc.run(SysRoot(fake.root)))["genirq_patch"].status == doc.Status.OK


def test_memlock() -> None:
    assert doc.check_memlock((resource.RLIM_INFINITY, resource.RLIM_INFINITY), False).status == (
        doc.Status.OK
    )
    low = doc.check_memlock((8 << 20, 8 << 20), False)
    assert low.status == doc.Status.WARN and "8 MiB" in low.detail
    assert "limits.d" in (low.remedy or "") and "prlimit" in (low.remedy or "")
    assert doc.check_memlock((8 << 20, 8 << 20), True).status == doc.Status.OK


def test_exit_codes() -> None:
    ok = doc.Check("a", "a", doc.Status.OK, "")
    warn = doc.Check("b", "b", doc.Status.WARN, "")
    fail = doc.Check("c", "c", doc.Status.FAIL, "")
    assert doc.exit_code([ok]) == ExitCode.OK
    assert doc.exit_code([ok, warn]) == ExitCode.CHECK_WARNED
    assert doc.exit_code([warn, fail]) == ExitCode.CHECK_FAILED
