"""Hot reset (VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, VFIO_DEVICE_PCI_HOT_RESET) against the
fake syscall layer, on both backends: the scope as the kernel reports it (groups, or devids
and the ownership flags), the refusal that names the devices not owned, and a reset that
is seen to happen (the devices' registers back at their power-on values).

The fake follows vfio_pci_core.c (Linux 6.12): ENOSPC with the count (and flags 0) when
the buffer is too small; by devid, with DEV_ID and DEV_ID_OWNED, for a device opened
through its cdev; a zero-length fd array for a cdev-opened device only; the fds of every
group in the scope otherwise (EINVAL if one is missing or an fd is no group, EBADF for no
fd); EINVAL if a device behind the reset is not bound to a VFIO driver.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from vfiokit import InvalidArgument, PermissionDenied, SysRoot
from vfiokit import vfio as V  # names looked up in each test (HEAD lacked some)
from vfiokit.vfio import IommuContext, VfioDevice, VfioError
from vfiokit.vfio import uapi as U
from vfiokit.vfio.fake import FakeSyscalls

R0, R1 = "0000:01:00.0", "0000:01:00.1"  # two devices behind one bus reset, groups 10, 11
ALONE = "0000:02:00.0"  # alone behind its bus reset, group 12
F0, F1 = "0000:03:00.0", "0000:03:00.1"  # one group (13) behind one bus reset
ROOT = "0000:00:04.0"  # on the root bus: no bus or slot reset
BACKENDS = ["legacy", "iommufd"]
BAR_REG = 0x04


@pytest.fixture
def kernel() -> FakeSyscalls:
    k = FakeSyscalls()
    k.add_device(R0, group="10", cdev="vfio10", reset_bus="01")
    k.add_device(R1, group="11", cdev="vfio11", reset_bus="01")
    k.add_device(ALONE, group="12", cdev="vfio12", reset_bus="02")
    k.add_device(F0, group="13", cdev="vfio13", reset_bus="03")
    k.add_device(F1, group="13", cdev="vfio14", reset_bus="03")
    k.add_device(ROOT, group="3", cdev="vfio3")
    return k


@pytest.fixture
def sysroot(kernel: FakeSyscalls, tmp_path: Path) -> SysRoot:
    return kernel.sysroot(tmp_path)


def context(kernel: FakeSyscalls, sysroot: SysRoot, backend: str) -> IommuContext:
    return IommuContext(backend=backend, sysroot=sysroot, sys=kernel)


def dirty(vd: VfioDevice, value: int = 0xC0FFEE) -> None:
    """Change a device register, and see it changed."""
    bar = vd.device.bar(0)
    bar.write(BAR_REG, value)
    assert bar.read(BAR_REG) == value


# -- the scope ------------------------------------------------------------------------------


def test_scope_legacy_reports_each_device_and_its_group(
    kernel: FakeSyscalls, sysroot: SysRoot
) -> None:
    with context(kernel, sysroot, "legacy") as ctx:
        scope = ctx.open_device(R0).device.hot_reset_scope()
        assert scope.addresses == [R0, R1]
        assert not scope.by_devid and scope.all_owned is None
        assert scope.groups == [10, 11]
        assert [(d.group, d.devid, d.owned) for d in scope.devices] == [
            (10, None, None),
            (11, None, None),
        ]
    assert kernel.open_fds == 0


def test_scope_iommufd_reads_the_ownership_flags(kernel: FakeSyscalls, sysroot: SysRoot) -> None:
    """By devid: R1, not opened in this iommufd, is VFIO_PCI_DEVID_NOT_OWNED (not group
    4294967295) and clears DEV_ID_OWNED; opened in the same context it has its devid."""
    with context(kernel, sysroot, "iommufd") as ctx:
        scope = ctx.open_device(R0).device.hot_reset_scope()
        assert scope.by_devid and scope.all_owned is False
        r0, r1 = scope.devices
        assert (r0.address, r0.devid, r0.owned) == (R0, kernel.devices[R0].devid, True)
        assert (r1.address, r1.group, r1.devid, r1.owned) == (R1, None, None, False)
        assert scope.groups == []
        ctx.open_device(R1)
        scope = ctx.open_device(ALONE).device.hot_reset_scope()
        assert [d.address for d in scope.devices] == [ALONE]
        scope = ctx.devices[0].device.hot_reset_scope()
        assert scope.all_owned is True
        assert [d.devid for d in scope.devices] == [
            kernel.devices[R0].devid,
            kernel.devices[R1].devid,
        ]
        assert all(d.devid for d in scope.devices)


def test_scope_iommufd_a_device_owned_through_its_group(
    kernel: FakeSyscalls, sysroot: SysRoot
) -> None:
    """F1 is not opened, but its group is owned by this iommufd (F0 is bound to it): the
    kernel reports it as VFIO_PCI_DEVID_OWNED (devid 0), owned, and the reset goes."""
    with context(kernel, sysroot, "iommufd") as ctx:
        f0 = ctx.open_device(F0)
        scope = f0.device.hot_reset_scope()
        assert scope.all_owned is True
        assert [(d.address, d.devid, d.owned) for d in scope.devices] == [
            (F0, kernel.devices[F0].devid, True),
            (F1, U.VFIO_PCI_DEVID_OWNED, True),
        ]
        f0.hot_reset()
        assert (kernel.devices[F0].hot_resets, kernel.devices[F1].hot_resets) == (1, 1)


def test_scope_survives_a_device_added_between_the_two_calls(
    kernel: FakeSyscalls, sysroot: SysRoot
) -> None:
    """The count comes with ENOSPC; if a device appears before the second call, ENOSPC
    again with the new count, and the scope is asked once more."""
    calls: list[int] = []
    orig = kernel._hot_reset_info

    def growing(dev, cdev, buf):  # type: ignore[no-untyped-def]
        calls.append(U.vfio_pci_hot_reset_info.parse(buf).argsz)
        if len(calls) == 2:
            kernel.add_device("0000:01:01.0", group="15", cdev="vfio15", reset_bus="01")
        return orig(dev, cdev, buf)

    kernel._hot_reset_info = growing  # type: ignore[method-assign]
    with context(kernel, sysroot, "legacy") as ctx:
        scope = ctx.open_device(R0).device.hot_reset_scope()
    assert scope.addresses == [R0, R1, "0000:01:01.0"]
    assert calls == [12, 12 + 2 * 8, 12 + 3 * 8]


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_bus_reset_is_not_found_and_named(
    kernel: FakeSyscalls, sysroot: SysRoot, backend: str
) -> None:
    with VfioDevice(ROOT, backend=backend, sysroot=sysroot, sys=kernel) as vd:
        with pytest.raises(V.VfioNotFound) as err:
            vd.device.hot_reset_scope()
        assert err.value.errno == errno.ENODEV
        assert err.value.op == "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO"
        with pytest.raises(V.VfioNotFound):
            vd.hot_reset()


# -- the reset happens ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_hot_reset_resets_every_device_of_the_scope(
    kernel: FakeSyscalls, sysroot: SysRoot, backend: str
) -> None:
    with context(kernel, sysroot, backend) as ctx:
        r0, r1 = ctx.open_device(R0), ctx.open_device(R1)
        dirty(r0, 0x1111)
        dirty(r1, 0x2222)
        cmd = r0.device.config.read(4, 2)
        plan = r0.hot_reset()
        # both devices' registers are back at their power-on value, read through the API
        assert r0.device.bar(0).read(BAR_REG) == 0
        assert r1.device.bar(0).read(BAR_REG) == 0
        assert (kernel.devices[R0].hot_resets, kernel.devices[R1].hot_resets) == (1, 1)
        assert kernel.devices[ALONE].hot_resets == 0
        # the kernel restored the config space it saved
        assert r0.device.config.read(4, 2) == cmd
        if backend == "legacy":
            fds = {g: ctx._groups[g].fd for g in ("10", "11")}
            assert sorted(plan.group_fds) == sorted(fds.values())
        else:
            assert plan.group_fds == []
        # and the devices work on
        dirty(r0)
    assert kernel.open_fds == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_hot_reset_of_a_device_opened_alone(
    kernel: FakeSyscalls, sysroot: SysRoot, backend: str
) -> None:
    """open_device()'s own context holds the group: legacy passes its fd."""
    with VfioDevice(ALONE, backend=backend, sysroot=sysroot, sys=kernel) as vd:
        dirty(vd)
        vd.hot_reset()
        assert vd.device.bar(0).read(BAR_REG) == 0
        assert kernel.devices[ALONE].hot_resets == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_interrupt_status_cleared_by_the_reset(
    kernel: FakeSyscalls, sysroot: SysRoot, backend: str
) -> None:
    with VfioDevice(ALONE, backend=backend, sysroot=sysroot, sys=kernel) as vd:
        kernel.devices[ALONE].regions[U.VFIO_PCI_CONFIG_REGION_INDEX].data[6] |= 0x08
        assert vd.device.config.read(6, 2) & 0x08
        vd.hot_reset()
        assert not vd.device.config.read(6, 2) & 0x08


# -- refused: devices in the scope not owned ---------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_refused_naming_the_devices_not_owned(
    kernel: FakeSyscalls, sysroot: SysRoot, backend: str
) -> None:
    with context(kernel, sysroot, backend) as ctx:
        r0 = ctx.open_device(R0)
        dirty(r0)
        plan = r0.hot_reset_plan()
        assert not plan.allowed and [d.address for d, _ in plan.not_owned] == [R1]
        with pytest.raises(V.HotResetRefused) as err:
            r0.hot_reset()
        assert isinstance(err.value, PermissionDenied) and err.value.errno is None
        assert err.value.devices == [R1]
        assert R1 in str(err.value) and "open" in (err.value.remedy or "")
        if backend == "legacy":
            assert "IOMMU group 11" in str(err.value)
        # nothing was reset
        assert kernel.devices[R0].hot_resets == kernel.devices[R1].hot_resets == 0
        assert r0.device.bar(0).read(BAR_REG) == 0xC0FFEE


@pytest.mark.parametrize("backend", BACKENDS)
def test_refused_when_another_context_holds_the_other_device(
    kernel: FakeSyscalls, sysroot: SysRoot, backend: str
) -> None:
    with context(kernel, sysroot, backend) as a, context(kernel, sysroot, backend) as b:
        r0 = a.open_device(R0)
        b.open_device(R1)
        with pytest.raises(V.HotResetRefused) as err:
            r0.hot_reset()
        assert err.value.devices == [R1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_refused_when_a_device_is_bound_to_a_host_driver(
    kernel: FakeSyscalls, sysroot: SysRoot, backend: str
) -> None:
    kernel.devices[R1].vfio = False
    with context(kernel, sysroot, backend) as ctx:
        r0 = ctx.open_device(R0)
        with pytest.raises(V.HotResetRefused) as err:
            r0.hot_reset()
        assert err.value.devices == [R1]


def test_hot_reset_plan_needs_the_device_in_the_context(
    kernel: FakeSyscalls, sysroot: SysRoot
) -> None:
    with context(kernel, sysroot, "legacy") as ctx:
        ctx.open_device(R0)
        with pytest.raises(InvalidArgument, match="not open in this IommuContext"):
            ctx.hot_reset_plan(R1)


# -- the kernel's rules, as the fake models them (the low-level Device.hot_reset) -----------


def test_kernel_rules_legacy(kernel: FakeSyscalls, sysroot: SysRoot) -> None:
    with context(kernel, sysroot, "legacy") as ctx:
        r0 = ctx.open_device(R0)
        ctx.open_device(R1)
        g10, g11 = ctx._groups["10"].fd, ctx._groups["11"].fd

        def refused(fds: list[int], code: int) -> None:
            with pytest.raises(VfioError) as err:
                r0.device.hot_reset(fds)
            assert err.value.errno == code
            # named for the ioctl made, not its container twin VFIO_IOMMU_MAP_DMA
            assert err.value.op == "VFIO_DEVICE_PCI_HOT_RESET"
            assert "MAP_DMA" not in str(err.value)

        refused([], errno.EINVAL)  # legacy needs the group fds
        refused([g10], errno.EINVAL)  # group 11 is in the scope too
        refused([g10, ctx.dma.fd], errno.EINVAL)  # type: ignore[union-attr]  # a container
        refused([g10, 99999], errno.EBADF)
        refused([g10, g11, g11], errno.EINVAL)  # more fds than devices behind the reset
        assert kernel.devices[R0].hot_resets == 0
        r0.device.hot_reset([g11, g10])  # any order
        assert kernel.devices[R0].hot_resets == kernel.devices[R1].hot_resets == 1


def test_kernel_rules_iommufd(kernel: FakeSyscalls, sysroot: SysRoot) -> None:
    with context(kernel, sysroot, "iommufd") as ctx:
        r0 = ctx.open_device(R0)
        with pytest.raises(VfioError) as err:
            r0.device.hot_reset()  # R1 is not owned by this iommufd
        assert err.value.errno == errno.EINVAL
        ctx.open_device(R1)
        legacy_group = os.open(os.devnull, os.O_RDONLY)  # any fd: the count alone refuses
        try:
            with pytest.raises(VfioError) as err:
                r0.device.hot_reset([legacy_group])  # fds are for group-opened devices
            assert err.value.errno == errno.EINVAL
        finally:
            os.close(legacy_group)
        r0.device.hot_reset()
        assert kernel.devices[R1].hot_resets == 1


def test_get_info_sizing_as_the_kernel(kernel: FakeSyscalls, sysroot: SysRoot) -> None:
    """ENOSPC writes back the count and flags 0; argsz below the header is EINVAL."""
    with context(kernel, sysroot, "iommufd") as ctx:
        fd = ctx.open_device(R0).device.fd
        buf = U.vfio_pci_hot_reset_info.new(8).to_bytes() + bytearray(8)  # room for one
        with pytest.raises(VfioError) as err:
            kernel.ioctl(fd, U.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, buf)
        assert err.value.errno == errno.ENOSPC
        hdr = U.vfio_pci_hot_reset_info.parse(buf)
        assert (hdr.count, hdr.flags) == (2, 0)
        short = U.vfio_pci_hot_reset_info(argsz=8).to_bytes()
        with pytest.raises(VfioError) as err:
            kernel.ioctl(fd, U.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, short)
        assert err.value.errno == errno.EINVAL


def test_errors_name_the_ioctl_made(kernel: FakeSyscalls, sysroot: SysRoot) -> None:
    """The device and container ioctls share numbers: each error names the one made."""
    with context(kernel, sysroot, "legacy") as ctx:
        vd = ctx.open_device(ALONE)
        kernel.fail(U.VFIO_DEVICE_PCI_HOT_RESET, errno.EIO)
        with pytest.raises(VfioError) as err:
            vd.device.hot_reset([ctx._groups["12"].fd])
        assert err.value.op == "VFIO_DEVICE_PCI_HOT_RESET"
        kernel.fail(U.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, errno.EIO)
        with pytest.raises(VfioError) as err:
            vd.device.hot_reset_scope()
        assert err.value.op == "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO"
        kernel.fail(U.VFIO_IOMMU_MAP_DMA, errno.EFAULT)
        with pytest.raises(VfioError) as err:
            ctx.dma_buffer(4096)
        assert err.value.op == "VFIO_IOMMU_MAP_DMA"
        assert "HOT_RESET" not in str(err.value)
    assert kernel.open_fds == 0
