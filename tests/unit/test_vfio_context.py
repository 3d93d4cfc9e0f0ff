"""Several devices in one DMA space (IommuContext) against the fake syscall layer."""

from __future__ import annotations

import errno

import pytest

from fakesys import FakeSys
from vfiokit import Busy, InvalidArgument, SysRoot, Unsupported
from vfiokit.vfio import IommuContext, VfioDevice, VfioError
from vfiokit.vfio import uapi as U
from vfiokit.vfio.fake import FakeSyscalls

A, B = "0000:00:04.0", "0000:00:08.0"  # two edus, groups 3 and 4
F0, F1 = "0000:00:11.0", "0000:00:11.1"  # two functions of one group, 7
BACKENDS = ["legacy", "iommufd"]


@pytest.fixture
def host(fake: FakeSys) -> FakeSys:
    for bdf, group, cdev in (
        (A, "3", "vfio0"),
        (B, "4", "vfio1"),
        (F0, "7", "vfio2"),
        (F1, "7", "vfio3"),
    ):
        fake.add_pci(
            bdf, vendor=0x1234, device=0x11E8, class_code=0xFF00, driver="vfio-pci", group=group
        )
        fake.write(f"sys/devices/pci0000:00/{bdf}/vfio-dev/{cdev}/dev", "511:0\n")
    fake.write("dev/iommu", "")
    return fake


@pytest.fixture
def kernel() -> FakeSyscalls:
    k = FakeSyscalls()
    k.add_device(A, group="3", cdev="vfio0")
    k.add_device(B, group="4", cdev="vfio1")
    k.add_device(F0, group="7", cdev="vfio2")
    k.add_device(F1, group="7", cdev="vfio3")
    return k


def context(host: FakeSys, kernel: FakeSyscalls, backend: str) -> IommuContext:
    return IommuContext(backend=backend, sysroot=SysRoot(host.root), sys=kernel)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_devices_share_one_dma_space(host: FakeSys, kernel: FakeSyscalls, backend: str) -> None:
    with context(host, kernel, backend) as ctx:
        a, b = ctx.open_device(A), ctx.open_device(B)
        assert a.dma is b.dma and a.allocator is b.allocator and a.backend == backend
        buf = ctx.dma_buffer(8192)
        assert list(kernel.mappings) == [buf.iova]  # mapped once, for both
        # a buffer made through either device is the context's too
        other = b.dma_buffer(4096)
        assert sorted(kernel.mappings) == sorted([buf.iova, other.iova])
        assert [vd.address for vd in ctx.devices] == [A, B]
        space = "/dev/vfio/vfio" if backend == "legacy" else "/dev/iommu"
        assert kernel.calls.count(f"open {space}") == 1
        a.device.reset()
        b.device.reset()
        assert (kernel.devices[A].resets, kernel.devices[B].resets) == (1, 1)
    assert kernel.open_fds == 0 and kernel.mappings == {}


def test_two_functions_of_one_group_legacy(host: FakeSys, kernel: FakeSyscalls) -> None:
    # Alone, the second function cannot be opened: the group node is taken.
    first = VfioDevice(F0, backend="legacy", sysroot=SysRoot(host.root), sys=kernel)
    with pytest.raises(VfioError) as err:
        VfioDevice(F1, backend="legacy", sysroot=SysRoot(host.root), sys=kernel)
    assert err.value.errno == errno.EBUSY
    first.close()
    assert kernel.open_fds == 0
    # In one context the group is opened once, for both.
    with context(host, kernel, "legacy") as ctx:
        f0, f1 = ctx.open_device(F0), ctx.open_device(F1)
        # the first alone, the refused one, and once for both here
        assert kernel.calls.count("open /dev/vfio/7") == 3
        assert f0.device.fd != f1.device.fd
    assert kernel.open_fds == 0


def test_two_functions_of_one_group_iommufd(host: FakeSys, kernel: FakeSyscalls) -> None:
    first = VfioDevice(F0, backend="iommufd", sysroot=SysRoot(host.root), sys=kernel)
    with pytest.raises(VfioError) as err:  # another iommufd owns the group
        VfioDevice(F1, backend="iommufd", sysroot=SysRoot(host.root), sys=kernel)
    assert err.value.errno == errno.EPERM  # as 6.12 says
    first.close()
    with context(host, kernel, "iommufd") as ctx:
        ctx.open_device(F0)
        ctx.open_device(F1)
        assert kernel.devices[F0].bound_iommufd == kernel.devices[F1].bound_iommufd
    assert kernel.open_fds == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_closing_one_device_leaves_the_rest(
    host: FakeSys, kernel: FakeSyscalls, backend: str
) -> None:
    ctx = context(host, kernel, backend)
    a, b = ctx.open_device(A), ctx.open_device(B)
    a.intx(policy="kernel")
    assert kernel.devices[A].triggers
    buf = ctx.dma_buffer(4096)
    a.close()
    a.close()  # twice is fine
    assert (
        kernel.devices[A].triggers == {}
        and a.device.fd == -1
        and [vd.address for vd in ctx.devices] == [B]
    )
    assert list(kernel.mappings) == [buf.iova]  # the buffer is the context's
    b.device.reset()
    # the same device can be opened again
    again = ctx.open_device(A)
    again.device.reset()
    ctx.close()
    ctx.close()
    assert kernel.open_fds == 0 and kernel.mappings == {} and buf.closed


def test_misuse_is_explained(host: FakeSys, kernel: FakeSyscalls) -> None:
    ctx = context(host, kernel, "auto")
    with pytest.raises(InvalidArgument, match="open a device"):
        ctx.dma_buffer(4096)
    ctx.open_device(A)
    with pytest.raises(Busy, match="already open"):
        ctx.open_device(A)
    ctx.close()
    with pytest.raises(InvalidArgument, match="closed"):
        ctx.open_device(B)
    with pytest.raises(InvalidArgument, match="unknown backend"):
        IommuContext(backend="vfio")


def test_the_first_device_decides_the_backend(host: FakeSys, kernel: FakeSyscalls) -> None:
    (host.root / f"sys/devices/pci0000:00/{B}/vfio-dev/vfio1/dev").unlink()
    (host.root / f"sys/devices/pci0000:00/{B}/vfio-dev/vfio1").rmdir()
    with context(host, kernel, "auto") as ctx:
        ctx.open_device(A)
        assert ctx.backend == "iommufd"
        with pytest.raises(Unsupported, match=f"no iommufd path for {B}"):
            ctx.open_device(B)
        assert [vd.address for vd in ctx.devices] == [A]
    with context(host, kernel, "auto") as ctx:  # legacy first: legacy for all
        ctx.open_device(B)
        ctx.open_device(A)
        assert ctx.backend == "legacy"
    assert kernel.open_fds == 0


def test_a_failed_open_gives_back_its_group(host: FakeSys, kernel: FakeSyscalls) -> None:
    with context(host, kernel, "legacy") as ctx:
        ctx.open_device(A)
        kernel.fail(U.VFIO_GROUP_GET_DEVICE_FD, errno.EPERM)
        fds = kernel.open_fds
        with pytest.raises(VfioError):
            ctx.open_device(B)
        assert kernel.open_fds == fds  # group 4 closed again
        ctx.open_device(B)  # and it can be opened now
    assert kernel.open_fds == 0


def test_unclosed_context_warns(host: FakeSys, kernel: FakeSyscalls) -> None:
    import gc

    ctx = context(host, kernel, "legacy")
    ctx.open_device(A)
    with pytest.warns(ResourceWarning):
        del ctx
        gc.collect()
