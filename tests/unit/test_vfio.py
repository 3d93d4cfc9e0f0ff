"""The VFIO API against the fake syscall layer: every object, both backends, error paths."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import gc
import os
import resource
import selectors
import struct
import sys
import threading
import time
import weakref
from collections.abc import Iterator

import pytest

from fakesys import FakeSys
from vfiokit import Busy, ExitCode, InvalidArgument, NotFound, PermissionDenied, Unsupported
from vfiokit.vfio import (
    ClosedError,
    GroupNotViable,
    IovaAllocator,
    RealSyscalls,
    VfioDevice,
    VfioError,
    choose_backend,
)
from vfiokit.vfio import uapi as U
from vfiokit.vfio.fake import FakeSyscalls
from vfiokit.vfio.sys import error_for

BDF = "0000:00:04.0"


@pytest.fixture
def host(fake: FakeSys) -> FakeSys:
    """sysfs for one edu in group 3 bound to vfio-pci, with a VFIO cdev and /dev/iommu."""
    fake.add_pci(
        BDF, vendor=0x1234, device=0x11E8, class_code=0xFF00, driver="vfio-pci", group="3", irq=22
    )
    fake.write(f"sys/devices/pci0000:00/{BDF}/vfio-dev/vfio0/dev", "511:0\n")
    fake.write("dev/iommu", "")
    return fake


@pytest.fixture
def kernel() -> FakeSyscalls:
    k = FakeSyscalls()
    k.add_device(BDF, group="3", cdev="vfio0")
    return k


def open_dev(host: FakeSys, kernel: FakeSyscalls, backend: str, **kw) -> VfioDevice:
    from vfiokit import SysRoot

    return VfioDevice(BDF, backend=backend, sysroot=SysRoot(host.root), sys=kernel, **kw)


BACKENDS = ["legacy", "iommufd"]


def test_backend_choice(host: FakeSys) -> None:
    from vfiokit import SysRoot

    sysroot = SysRoot(host.root)
    assert choose_backend(sysroot, BDF) == "iommufd"
    (host.root / "dev/iommu").unlink()
    assert choose_backend(sysroot, BDF) == "legacy"
    with pytest.raises(Unsupported):
        choose_backend(sysroot, BDF, "iommufd")
    with pytest.raises(InvalidArgument):
        choose_backend(sysroot, BDF, "vfio-user")


@pytest.mark.parametrize("backend", BACKENDS)
def test_open_regions_and_close(host: FakeSys, kernel: FakeSyscalls, backend: str) -> None:
    with open_dev(host, kernel, backend) as vd:
        assert vd.backend == backend and vd.device.is_pci and vd.device.can_reset
        bar0 = vd.device.bar(0)
        assert bar0.size == 0x100000 and bar0.mappable and bar0.areas() == [(0, 0x100000)]
        bar0.write(0x60, 0xDEADBEEF)
        assert bar0.read(0x60) == 0xDEADBEEF
        assert bar0.read(0x60, 2) == 0xBEEF and bar0.read(0x63, 1) == 0xDE
        bar0.write(0x70, 1 << 63, 8)
        assert bar0.read(0x70, 8) == 1 << 63
        view = bar0.mmap().cast("I")
        assert len(view) == 0x100000 // 4
        view.release()
        import ctypes

        regs = bar0.mmap_array(ctypes.c_uint64)
        assert len(regs) == 0x100000 // 8
        del regs
        assert vd.device.config.read(0, 4) == 0x11E81234
        vd.device.reset()
    assert kernel.open_fds == 0


def test_region_bounds_and_widths(host: FakeSys, kernel: FakeSyscalls) -> None:
    with open_dev(host, kernel, "legacy") as vd:
        bar0 = vd.device.bar(0)
        for off, width in ((0x100000, 4), (-4, 4), (0xFFFFE, 4), (2, 4), (0, 3)):
            with pytest.raises(InvalidArgument):
                bar0.read(off, width)
        with pytest.raises(InvalidArgument):
            bar0.write(0, 1 << 32, 4)
        with pytest.raises(InvalidArgument):
            vd.device.region(U.VFIO_PCI_NUM_REGIONS)
        with pytest.raises(InvalidArgument):
            vd.device.bar(6)
        with pytest.raises(Unsupported):
            vd.device.config.mmap()
        dev = vd.device
    with pytest.raises(ClosedError):
        dev.bar(0).read(0)


def test_sparse_mmap_respects_the_msix_hole(host: FakeSys) -> None:
    kernel = FakeSyscalls()
    kernel.add_device(BDF, group="3", sparse=[(0, 0x2000), (0x3000, 0xFD000)])
    with open_dev(host, kernel, "legacy") as vd:
        bar0 = vd.device.bar(0)
        assert bar0.areas() == [(0, 0x2000), (0x3000, 0xFD000)]
        assert len(bar0.mmap(1)) == 0xFD000
        with pytest.raises(InvalidArgument):
            bar0.mmap(2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dma_buffers(host: FakeSys, kernel: FakeSyscalls, backend: str) -> None:
    with open_dev(host, kernel, backend, dma_limit=(1 << 28) - 1) as vd:
        a = vd.dma_buffer(100)
        b = vd.dma_buffer(8192)
        assert a.size == 4096 and b.size == 8192
        assert a.iova == 4096 and b.iova == 8192  # page 0 kept free
        assert kernel.mappings[a.iova] == (a.vaddr, 4096)
        a.view[:5] = b"hello"
        assert bytes(a.view[:5]) == b"hello"
        a.close()
        assert a.iova not in kernel.mappings
        c = vd.dma_buffer(4096)
        assert c.iova == 4096  # reused
    assert kernel.mappings == {} and kernel.open_fds == 0


def test_dma_beyond_memlock_is_explained(host: FakeSys) -> None:
    kernel = FakeSyscalls(memlock=8192)
    kernel.add_device(BDF, group="3")
    with open_dev(host, kernel, "legacy") as vd:
        vd.dma_buffer(8192)
        with pytest.raises(VfioError) as info:
            vd.dma_buffer(4096)
        assert info.value.errno == errno.ENOMEM and "RLIMIT_MEMLOCK" in (info.value.remedy or "")
        assert len(vd.allocator.used) == 1  # the failed buffer gave its IOVA back


def test_iova_allocator() -> None:
    alloc = IovaAllocator([(0, 0x7FFF), (0x10000, 0x1FFFF)], limit=0x1BFFF)
    assert alloc.alloc(0x3000) == 0x1000  # page 0 is kept free
    assert alloc.alloc(0x4000) == 0x4000  # fills the first range exactly
    assert alloc.alloc(0x8000) == 0x10000  # next range
    with pytest.raises(Exception, match="no free IOVA"):
        alloc.alloc(0x10000)  # would cross the DMA limit
    alloc.free(0x4000)
    assert alloc.alloc(0x1000) == 0x4000
    with pytest.raises(InvalidArgument):
        alloc.free(0x999000)
    with pytest.raises(InvalidArgument):
        alloc.alloc(0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_intx_stock_uses_the_ioctl(host: FakeSys, kernel: FakeSyscalls, backend: str) -> None:
    dev = kernel.devices[BDF]
    with open_dev(host, kernel, backend) as vd:
        intx = vd.intx()
        assert not intx.vfiokit and intx.state() is None
        assert intx.wait(0) == 0
        kernel.fire(dev, 0)
        assert intx.wait(1) == 1
        kernel.fire(dev, 0)  # masked: no second signal
        assert intx.wait(0) == 0
        assert intx.unmask() == "kernel" and dev.unmask_ioctls == 1
        kernel.fire(dev, 0)
        assert intx.wait(1) == 1
        assert intx.counts == {"line": 0, "device": 0, "kernel": 1}
        # wait() without a time-out is one blocking read; it returns once signalled.
        intx.unmask()
        timer = threading.Timer(0.05, kernel.fire, (dev, 0))
        timer.start()
        assert intx.wait() == 1
        timer.join()
        intx.close()
        with pytest.raises(VfioError) as info:
            intx.wait()
        assert info.value.errno == errno.EBADF
    assert kernel.open_fds == 0 and dev.triggers == {}


def test_intx_per_interrupt_path_is_the_builtins_with_typed_errors(
    host: FakeSys, kernel: FakeSyscalls
) -> None:
    # On the real kernel wait() and unmask() call the builtins themselves: no frame of the
    # syscall layer per interrupt (the API's round trip against a stdlib-only loop).
    import fcntl

    from vfiokit.vfio.sys import raw_error

    real = RealSyscalls()
    with pytest.raises(VfioError) as info:  # fcntl's ValueError for fd -1: typed EBADF
        real.ioctl(-1, U.VFIO_DEVICE_SET_IRQS, bytearray(20))
    assert info.value.errno == errno.EBADF
    assert real.raw_ioctl is fcntl.ioctl and real.raw_eventfd_read is os.eventfd_read
    assert real.raw_eventfd_write is os.eventfd_write
    with pytest.raises(ValueError):
        real.raw_eventfd_read(-1)
    err = raw_error("read eventfd", ValueError("negative file descriptor"))
    assert err.errno == errno.EBADF and err.op == "read eventfd"
    err = raw_error("VFIO_DEVICE_SET_IRQS", OSError(errno.EACCES, "denied"))
    assert isinstance(err, PermissionDenied) and err.op == "VFIO_DEVICE_SET_IRQS"
    # Their errors come out typed, from every unmask path and from wait().
    dev = kernel.devices[BDF]
    with open_dev(host, kernel, "legacy") as vd:
        intx = vd.intx("kernel")
        kernel.fail(U.VFIO_DEVICE_SET_IRQS, errno.ENODEV)  # the fake's own VfioError
        with pytest.raises(NotFound) as info:
            intx.unmask()
        assert info.value.errno == errno.ENODEV and intx.counts["kernel"] == 0
        intx.policy = "eventfd"
        kernel.fire(dev, 0)
        assert intx.wait(1) == 1 and intx.unmask() == "eventfd" and not dev.masked
        ufd = intx.unmask_eventfd()
        kernel.close(ufd)  # the fd gone under it: the builtin's EBADF, typed
        with pytest.raises(VfioError) as info:
            intx.unmask()
        assert info.value.errno == errno.EBADF and info.value.op == "write eventfd"
        intx.policy = "kernel"
        vd.device.close()  # the device's fd is -1 now: never an ioctl on a reused number
        with pytest.raises(VfioError) as info:
            intx.unmask()
        assert info.value.errno == errno.EBADF and info.value.op == "VFIO_DEVICE_SET_IRQS"
        with contextlib.suppress(VfioError):
            intx.close()


def fire_once_unmasked(kernel: FakeSyscalls, dev: object) -> threading.Thread:
    """Raise INTx from another thread as soon as the line is unmasked (a raise while it is
    masked is dropped by the fake, and the blocking read would wait for good)."""

    def run() -> None:
        end = time.monotonic() + 10
        while dev.masked and time.monotonic() < end:  # type: ignore[attr-defined]
            time.sleep(0.001)
        kernel.fire(dev, 0)  # type: ignore[arg-type]

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("backend", BACKENDS)
def test_intx_interrupts_unmask_between_steps_and_follow_the_policy(
    host: FakeSys, kernel: FakeSyscalls, backend: str
) -> None:
    dev = kernel.devices[BDF]
    with open_dev(host, kernel, backend) as vd:
        intx = vd.intx("kernel")
        steps = intx.interrupts()
        kernel.fire(dev, 0)
        assert next(steps) == 1 and dev.masked and dev.unmask_ioctls == 0
        kernel.fire(dev, 0)  # still masked: the loop's body has not finished
        assert intx.wait(0) == 0
        # The next step unmasks first, then waits (blocking) for the next interrupt.
        timer = fire_once_unmasked(kernel, dev)
        assert next(steps) == 1 and dev.unmask_ioctls == 1 and dev.masked
        timer.join()
        assert intx.counts["kernel"] == 1
        intx.policy = "eventfd"  # a policy change between steps is followed
        timer = fire_once_unmasked(kernel, dev)
        assert next(steps) == 1
        timer.join()
        assert dev.unmask_ioctls == 1 and dev.unmask_eventfd_writes == 1
        assert intx.counts == {"line": 0, "device": 0, "kernel": 1, "eventfd": 1}
        steps.close()  # leaving the loop does not unmask
        assert dev.masked
        intx.policy = "kernel"
        intx.unmask()
        steps = intx.interrupts()
        kernel.fire(dev, 0)
        assert next(steps) == 1
        kernel.fail(U.VFIO_DEVICE_SET_IRQS, errno.ENODEV)  # a device gone: typed
        with pytest.raises(NotFound):
            next(steps)
        assert intx.counts["kernel"] == 2  # the unmask() above; the failed one not
        # A loop paused across close() stops at its next step, before any unmask.
        intx.unmask()
        steps = intx.interrupts()
        kernel.fire(dev, 0)
        assert next(steps) == 1
        unmasks = dev.unmask_ioctls
        intx.close()
        intx.policy = "kernel"  # even a policy set after close keeps it off the fast path
        with pytest.raises(VfioError) as info:
            next(steps)
        assert info.value.errno == errno.EBADF and dev.unmask_ioctls == unmasks
        with pytest.raises(VfioError) as info:  # typed, never a read on a reused fd
            next(intx.interrupts())
        assert info.value.errno == errno.EBADF and info.value.op == "read eventfd"
    assert kernel.open_fds == 0 and dev.triggers == {}


def _step(kernel: FakeSyscalls, dev: object, steps: Iterator[int]) -> int:
    """One step of a paused interrupts() loop: it unmasks, then waits for the next raise."""
    timer = fire_once_unmasked(kernel, dev)
    n = next(steps)
    timer.join()
    return n


@pytest.mark.parametrize("backend", BACKENDS)
def test_intx_interrupts_count_their_unmasks_live_and_after_they_end(
    host: FakeSys, kernel: FakeSyscalls, backend: str
) -> None:
    dev = kernel.devices[BDF]
    with open_dev(host, kernel, backend) as vd:
        intx = vd.intx("kernel")
        first = intx.interrupts()
        kernel.fire(dev, 0)
        assert next(first) == 1
        _step(kernel, dev, first)
        _step(kernel, dev, first)
        assert intx.counts["kernel"] == 2 == dev.unmask_ioctls  # read from the paused loop
        intx.unmask()
        second = intx.interrupts()
        kernel.fire(dev, 0)
        assert next(second) == 1
        _step(kernel, dev, second)
        assert intx.counts["kernel"] == 4 == dev.unmask_ioctls  # both loops and unmask()
        first.close()  # ended: its count moves into the Intx's, not lost nor doubled
        assert intx.counts["kernel"] == 4
        del second  # a loop dropped unclosed ends the same way
        gc.collect()
        assert intx.counts["kernel"] == 4
        intx.unmask()
        assert intx.counts == {"line": 0, "device": 0, "kernel": 5} and dev.unmask_ioctls == 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_intx_interrupts_stop_when_the_device_closes_first(
    host: FakeSys, kernel: FakeSyscalls, backend: str
) -> None:
    """The loop holds the device fd's number: Device.close() (before the Intx's) must take
    it off its fast path, or its next step would unmask through a closed, maybe reused, fd."""
    dev = kernel.devices[BDF]
    with open_dev(host, kernel, backend) as vd:
        intx = vd.intx("kernel")
        steps = intx.interrupts()
        kernel.fire(dev, 0)
        assert next(steps) == 1
        vd.device.close()
        with pytest.raises(VfioError) as info:
            next(steps)
        assert info.value.errno == errno.EBADF and info.value.op == "interrupts() after close"
        assert dev.unmask_ioctls == 0
        intx.close()


@pytest.mark.parametrize("page", [True, False], ids=["state page", "state feature"])
def test_intx_adaptive_follows_the_state(host: FakeSys, page: bool) -> None:
    kernel = FakeSyscalls()
    dev = kernel.add_device(BDF, group="3", vfiokit=True, state_page=page)
    with open_dev(host, kernel, "legacy") as vd:
        intx = vd.intx()
        assert intx.vfiokit and intx.page_mapped == page
        dev.mask_device = 0
        kernel.fire(dev, 0)
        assert intx.wait(1) == 1 and intx.state().masked
        assert intx.unmask() == "line" and dev.unmask_ioctls == 1 and not dev.masked
        dev.mask_device = 1
        kernel.fire(dev, 0)
        assert intx.wait(1) == 1
        assert intx.unmask() == "device" and dev.unmask_ioctls == 1 and not dev.masked
        # A toggle of INTx Disable in the command register's high byte (set, then
        # clear: the only config writes that unmask), the other bits read back and kept.
        assert dev.command_writes == [b"\x04", b"\x00"]
        # A write that leaves INTx Disable clear does not unmask (vfio-pci's rule).
        kernel.fire(dev, 0)
        assert intx.wait(1) == 1 and dev.masked
        vd.device.sys.pwrite(vd.device.fd, b"\x00", vd.device.config.offset + 5)
        assert dev.masked
        assert intx.counts == {"line": 1, "device": 1, "kernel": 0}
        kernel_policy = intx
        kernel_policy.policy = "kernel"
        assert kernel_policy.unmask() == "kernel"


def test_device_unmask_keeps_command_bits_set_after_open(host: FakeSys) -> None:
    """The device unmask toggles INTx Disable around COMMAND's high byte as it is at
    each unmask: SERR# (bit 8) and Fast Back-to-Back (bit 9), set after the Intx was
    made, survive every unmask (a byte captured at open would clear them)."""
    kernel = FakeSyscalls()
    dev = kernel.add_device(BDF, group="3", vfiokit=True)
    with open_dev(host, kernel, "legacy") as vd:
        intx = vd.intx()
        cfg = vd.device.config
        cfg.write(4, cfg.read(4, 2) | 0x0300, 2)  # SERR# and Fast Back-to-Back, later
        dev.mask_device = 1
        dev.command_writes.clear()
        for _ in range(2):
            kernel.fire(dev, 0)
            assert intx.wait(1) == 1 and intx.unmask() == "device" and not dev.masked
        assert dev.command_writes == [b"\x07", b"\x03"] * 2
        assert cfg.read(4, 2) == 0x0306


def test_intx_selectors_and_asyncio(host: FakeSys, kernel: FakeSyscalls) -> None:
    dev = kernel.devices[BDF]
    with open_dev(host, kernel, "legacy") as vd:
        intx = vd.intx()
        sel = selectors.DefaultSelector()
        sel.register(intx, selectors.EVENT_READ)
        assert sel.select(0) == []
        kernel.fire(dev, 0)
        assert len(sel.select(1)) == 1
        assert intx.wait(0) == 1
        intx.unmask()

        async def main() -> int:
            asyncio.get_running_loop().call_later(0.05, kernel.fire, dev, 0)
            return await asyncio.wait_for(intx.wait_async(), 2)

        assert asyncio.run(main()) == 1
        sel.close()


def test_no_intx_pin(host: FakeSys) -> None:
    kernel = FakeSyscalls()
    kernel.add_device(BDF, group="3", intx=False, msix=4)
    with open_dev(host, kernel, "legacy") as vd:
        with pytest.raises(Unsupported, match="no INTx"):
            vd.intx()
        vec = vd.msix(4)
        kernel.fire(kernel.devices[BDF], U.VFIO_PCI_MSIX_IRQ_INDEX, 2)
        assert vec.wait(1) == [2]
        vec.trigger(3)
        assert vec.wait(1) == [3]
        with pytest.raises(Unsupported):
            vd.msi(2)
    assert kernel.open_fds == 0


def test_errors_carry_errno_and_remedy(host: FakeSys, kernel: FakeSyscalls) -> None:
    kernel.fail(U.VFIO_SET_IOMMU, errno.EPERM)
    with pytest.raises(VfioError) as info:
        open_dev(host, kernel, "legacy")
    assert info.value.errno == errno.EPERM and info.value.remedy
    assert "VFIO_SET_IOMMU" in str(info.value)
    assert kernel.open_fds == 0  # everything opened so far was closed again
    from vfiokit import SysRoot

    with pytest.raises(NotFound):
        VfioDevice("0000:00:09.0", sysroot=SysRoot(host.root), sys=kernel)
    with pytest.raises(InvalidArgument):
        VfioDevice("zz", sys=kernel)


@pytest.mark.parametrize(
    ("code", "cls", "exit_code"),
    [
        (errno.EBUSY, Busy, ExitCode.BUSY),
        (errno.EPERM, PermissionDenied, ExitCode.PERMISSION),
        (errno.EACCES, PermissionDenied, ExitCode.PERMISSION),
        (errno.ENODEV, NotFound, ExitCode.NOT_FOUND),
        (errno.ENOTTY, Unsupported, ExitCode.UNSUPPORTED),
    ],
)
def test_syscall_errors_are_the_typed_classes(
    host: FakeSys, kernel: FakeSyscalls, code: int, cls: type, exit_code: ExitCode
) -> None:
    """`except Busy` (and the others) match a failed ioctl; it still is a VfioError."""
    kernel.fail(U.VFIO_GROUP_GET_DEVICE_FD, code)
    with pytest.raises(cls) as info:
        open_dev(host, kernel, "legacy")
    assert isinstance(info.value, VfioError) and info.value.errno == code
    assert info.value.exit_code == exit_code and "VFIO_GROUP_GET_DEVICE_FD" in str(info.value)
    assert kernel.open_fds == 0
    kernel.fail(U.VFIO_GROUP_GET_DEVICE_FD, errno.EIO)  # no subclass for EIO: VfioError
    with pytest.raises(VfioError) as info:
        open_dev(host, kernel, "legacy")
    assert type(info.value) is VfioError and info.value.exit_code == ExitCode.ERROR


def test_eventfd_and_poll_failures_are_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    real = RealSyscalls()
    with pytest.raises(VfioError) as info:
        real.eventfd_write(-1)
    assert info.value.errno == errno.EBADF
    with pytest.raises(VfioError):
        real.eventfd_read(-1)
    with pytest.raises(VfioError) as info:
        real.wait_readable([-1], 0)  # select(): ValueError
    assert info.value.errno == errno.EBADF
    efd = real.eventfd()
    os.close(efd)
    with pytest.raises(VfioError) as info:
        real.wait_readable([efd], 0)  # a closed fd: EBADF, not silence
    assert info.value.errno == errno.EBADF

    def emfile(*_args: object) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(os, "eventfd", emfile)
    with pytest.raises(VfioError) as info:
        real.eventfd()
    assert info.value.errno == errno.EMFILE


def test_waiting_on_fds_above_1023() -> None:
    """MSI-X has up to 2048 vectors: fd numbers past select()'s FD_SETSIZE must work."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1600:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 1600")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1600), hard))
    real = RealSyscalls()
    efd = real.eventfd()
    high = os.dup2(efd, 1500)
    try:
        assert real.wait_readable([high], 0) == []
        real.eventfd_write(high)
        assert real.wait_readable([efd, high], 0) == [efd, high]
        assert real.eventfd_read(high) == 1
    finally:
        os.close(high)
        os.close(efd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_non_viable_group(host: FakeSys, kernel: FakeSyscalls) -> None:
    host.add_pci("0000:00:05.0", vendor=0x8086, device=0x100E, class_code=0x020000,
                 driver="e1000", group="3")  # fmt: skip
    orig = kernel._ioctl_group

    def not_viable(f, req, arg):
        if req == U.VFIO_GROUP_GET_STATUS:
            arg[:8] = bytes(U.vfio_group_status(argsz=8, flags=0))
            return 0
        return orig(f, req, arg)

    kernel._ioctl_group = not_viable  # type: ignore[method-assign]
    with pytest.raises(GroupNotViable, match="not viable") as info:
        open_dev(host, kernel, "legacy")
    # The real cause: a member bound to a host driver, no invented EINVAL.
    assert info.value.errno is None and isinstance(info.value, Busy)
    assert "0000:00:05.0 is bound to host driver e1000" in str(info.value)
    assert "vfiokit doctor" in (info.value.remedy or "")
    assert kernel.open_fds == 0


def test_hot_reset_scope_and_caps(host: FakeSys, kernel: FakeSyscalls) -> None:
    with open_dev(host, kernel, "legacy") as vd:
        assert vd.device.capabilities() == []
        with pytest.raises(VfioError):
            vd.device.hot_reset_scope()  # on the root bus: no bus reset (ENODEV)


# -- leaks: every fd closed on every path -------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_device_fd_closed_when_get_info_fails(
    host: FakeSys, kernel: FakeSyscalls, backend: str
) -> None:
    kernel.fail(U.VFIO_DEVICE_GET_INFO, errno.EIO)
    with pytest.raises(VfioError):
        open_dev(host, kernel, backend)
    assert kernel.open_fds == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_device_close_with_a_view_held_closes_the_fd(
    host: FakeSys, kernel: FakeSyscalls, backend: str
) -> None:
    """Close first, raise after: the fd goes even while a region view is held."""
    vd = open_dev(host, kernel, backend)
    view = vd.device.bar(0).mmap().cast("I")
    regs = vd.device.bar(0).mmap_array()
    with pytest.raises(Busy, match="still have views"):
        vd.close()
    assert kernel.open_fds == 0 and vd.device.fd == -1
    vd.close()  # a second close is a no-op
    vd.device.close()
    view[0] = 1  # the mapping lives on until its view goes
    assert regs[0] == 0  # (the fake's mmaps are copies)
    view.release()
    del regs


def test_intx_setup_failure_disarms_and_closes(host: FakeSys) -> None:
    kernel = FakeSyscalls()
    dev = kernel.add_device(BDF, group="3", vfiokit=True)
    with open_dev(host, kernel, "legacy") as vd:
        before = kernel.open_fds
        kernel.fail(U.VFIO_DEVICE_FEATURE, errno.EIO)  # the vfiokit-pci probe, after arming
        with pytest.raises(VfioError):
            vd.intx()
        assert kernel.open_fds == before and dev.triggers == {}
        kernel.fail(U.VFIO_DEVICE_SET_IRQS, errno.EBUSY)  # arming itself
        with pytest.raises(Busy):
            vd.intx()
        assert kernel.open_fds == before and dev.triggers == {}
        intx = vd.intx()
        assert intx.vfiokit


@pytest.mark.parametrize("code", [errno.ENODEV, errno.EIO])
def test_intx_close_when_set_irqs_fails(host: FakeSys, kernel: FakeSyscalls, code: int) -> None:
    """Surprise removal: the disarm fails with ENODEV; the eventfd is closed all the same."""
    with open_dev(host, kernel, "legacy") as vd:
        before = kernel.open_fds
        intx = vd.intx()
        kernel.fail(U.VFIO_DEVICE_SET_IRQS, code)
        if code == errno.ENODEV:
            intx.close()  # the device is gone: nothing is armed, no error
        else:
            with pytest.raises(VfioError):
                intx.close()  # raised after closing
        assert kernel.open_fds == before and intx.efds == []
        intx.close()


def test_vectors_setup_and_close_failures_close_eventfds(host: FakeSys) -> None:
    kernel = FakeSyscalls()
    dev = kernel.add_device(BDF, group="3", intx=False, msix=8)
    with open_dev(host, kernel, "legacy") as vd:
        before = kernel.open_fds
        made = []
        real_eventfd = kernel.eventfd

        def third_fails(nonblock: bool = True) -> int:
            if len(made) == 2:
                raise kernel._oserror("eventfd", errno.EMFILE)
            made.append(1)
            return real_eventfd(nonblock)

        kernel.eventfd = third_fails  # type: ignore[method-assign]
        with pytest.raises(VfioError):
            vd.msix(4)
        kernel.eventfd = real_eventfd  # type: ignore[method-assign]
        assert kernel.open_fds == before
        kernel.fail(U.VFIO_DEVICE_SET_IRQS, errno.EINVAL)
        with pytest.raises(VfioError):
            vd.msix(4)
        assert kernel.open_fds == before and dev.triggers == {}
        vec = vd.msix(4)
        kernel.fail(U.VFIO_DEVICE_SET_IRQS, errno.EINVAL)
        with pytest.raises(VfioError):
            vd.msix(2)  # refused: the vectors armed before must stay armed
        assert len(dev.triggers[U.VFIO_PCI_MSIX_IRQ_INDEX]) == 4
        kernel.fail(U.VFIO_DEVICE_SET_IRQS, errno.ENODEV)
        vec.close()
        assert kernel.open_fds == before and vec.efds == []


@pytest.mark.parametrize("derive", ["slice", "ctypes"])
def test_dma_close_with_a_derived_view(host: FakeSys, kernel: FakeSyscalls, derive: str) -> None:
    """Unmapped and closed, then Busy raised: never unmapped-but-open."""
    with open_dev(host, kernel, "legacy") as vd:
        buf = vd.dma_buffer(4096)
        part = buf.view[:16] if derive == "slice" else (ctypes.c_char * 16).from_buffer(buf.view)
        with pytest.raises(Busy, match="views of its memory"):
            buf.close()
        assert buf.closed and buf.iova not in kernel.mappings and vd.allocator.used == {}
        buf.close()  # a no-op, not a second unmap
        part[0:1] = b"x"  # the memory lives on with the view (no longer the device's)
        del part
        again = vd.dma_buffer(4096)
        assert again.iova == buf.iova


def test_dma_close_when_unmap_fails_stays_open(host: FakeSys, kernel: FakeSyscalls) -> None:
    with open_dev(host, kernel, "legacy") as vd:
        buf = vd.dma_buffer(4096)
        kernel.fail(U.VFIO_IOMMU_UNMAP_DMA, errno.EIO)
        with pytest.raises(VfioError):
            buf.close()
        assert not buf.closed and buf.iova in kernel.mappings
        buf.view[0] = 1  # still usable
        buf.close()
        assert kernel.mappings == {}


def test_the_session_forgets_closed_buffers(host: FakeSys, kernel: FakeSyscalls) -> None:
    with open_dev(host, kernel, "iommufd") as vd:
        refs = []
        for _ in range(50):
            with vd.dma_buffer(4096) as buf:
                refs.append(weakref.ref(buf))
        del buf
        gc.collect()
        assert all(r() is None for r in refs)
        kept = vd.dma_buffer(4096)  # an open one is still closed by the session
    assert kept.closed and kernel.mappings == {}


# -- correctness ---------------------------------------------------------------------------


def test_fd_arrays_are_native_byte_order(host: FakeSys, kernel: FakeSyscalls) -> None:
    """The kernel reads eventfd and group-fd arrays as native s32s: no fixed '<' anywhere
    an fd array is packed or unpacked (s390x is big-endian)."""
    import re
    from pathlib import Path

    import vfiokit.vfio

    src = Path(vfiokit.vfio.__file__).parent
    for path in sorted(src.glob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            assert not re.search(r"""pack\(f?["']<[^"']*i["']""", line), f"{path.name}:{n}"
    seen: list[bytes] = []
    orig = kernel._set_irqs

    def spy(dev, data: bytes) -> int:
        seen.append(data[ctypes.sizeof(U.vfio_irq_set) :])
        return orig(dev, data)

    kernel._set_irqs = spy  # type: ignore[method-assign]
    with open_dev(host, kernel, "legacy") as vd:
        intx = vd.intx()
        assert seen[0] == intx.efds[0].to_bytes(4, sys.byteorder, signed=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_unmapped_size_is_checked(host: FakeSys, kernel: FakeSyscalls, backend: str) -> None:
    """type1 unmaps nothing, successfully, where nothing is mapped: the size it reports
    back is what tells; iommufd says ENOENT."""
    from vfiokit import VfiokitError

    with open_dev(host, kernel, backend) as vd:
        buf = vd.dma_buffer(8192)
        vd.dma.unmap(buf.iova, buf.size)
        expected, match = (
            (VfiokitError, "unmapped 0x0") if backend == "legacy" else (NotFound, "ENOENT")
        )
        with pytest.raises(expected, match=match):
            vd.dma.unmap(buf.iova, buf.size)
        vd.dma.map(buf.vaddr, buf.iova, buf.size)  # for the session's close


@pytest.mark.parametrize("backend", BACKENDS)
def test_iova_alignment_follows_the_iommu(host: FakeSys, backend: str) -> None:
    """64 KiB IOMMU pages (type1's iova_pgsizes, iommufd's out_iova_alignment): IOVA,
    size and address of every buffer are multiples of 64 KiB."""
    kernel = FakeSyscalls(pgsizes=0x10000 | 0x200000 | 0x40000000)
    kernel.add_device(BDF, group="3")
    with open_dev(host, kernel, backend) as vd:
        assert vd.dma.iova_alignment() == 0x10000
        a, b = vd.dma_buffer(100), vd.dma_buffer(0x10001)
        assert (a.iova, a.size, len(a.view)) == (0x10000, 0x10000, 0x10000)
        assert (b.iova, b.size) == (0x20000, 0x20000)
        assert a.vaddr % 0x10000 == 0 and b.vaddr % 0x10000 == 0
        a.view[:3] = b"abc"
        a.close()
        assert kernel.mappings.keys() == {b.iova}
    assert kernel.mappings == {} and kernel.open_fds == 0


def test_unmask_buffers_are_not_shared_by_threads(host: FakeSys) -> None:
    """Thread A's state read is answered "mask at the device"; before A looks at it,
    thread B's is answered "at the line". With one shared buffer A would see B's."""
    kernel = FakeSyscalls()
    dev = kernel.add_device(BDF, group="3", vfiokit=True, state_page=False)
    with open_dev(host, kernel, "legacy") as vd:
        intx = vd.intx()
        orig = kernel._ioctl_device
        a_answered, b_answered = threading.Event(), threading.Event()

        def feature(f, req, arg):
            name = threading.current_thread().name
            if req != U.VFIO_DEVICE_FEATURE or name not in ("A", "B"):
                return orig(f, req, arg)
            if name == "B":
                assert a_answered.wait(10)
            dev.mask_device = int(name == "A")
            rc = orig(f, req, arg)
            (a_answered if name == "A" else b_answered).set()
            if name == "A":
                assert b_answered.wait(10)
            return rc

        kernel._ioctl_device = feature  # type: ignore[method-assign]
        how: dict[str, str] = {}

        def run() -> None:
            how[threading.current_thread().name] = intx.unmask()

        threads = [threading.Thread(target=run, name=n) for n in "AB"]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert how == {"A": "device", "B": "line"}


def test_iova_allocator_is_thread_safe() -> None:
    """Two threads allocating at once: without the lock both see the same free range."""
    barrier = threading.Barrier(2, timeout=0.5)

    class Racy(dict):
        def items(self):  # both threads inside alloc() at once, if nothing stops them
            seen = list(super().items())
            with contextlib.suppress(threading.BrokenBarrierError):  # the other one is
                barrier.wait()  # (rightly) held at the lock
            return seen

    alloc = IovaAllocator([(0, (1 << 32) - 1)], used=Racy())
    got: list[int] = []
    threads = [threading.Thread(target=lambda: got.append(alloc.alloc(4096))) for _ in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [0x1000, 0x2000]


# -- what QEMU and DPDK use ---------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_intx_unmask_through_an_eventfd(host: FakeSys, kernel: FakeSyscalls, backend: str) -> None:
    """Policy "eventfd": ACTION_UNMASK | DATA_EVENTFD once, then one eventfd write per
    interrupt, no ioctl."""
    dev = kernel.devices[BDF]
    with open_dev(host, kernel, backend) as vd:
        before = kernel.open_fds
        intx = vd.intx("eventfd")
        assert dev.unmask_eventfd >= 0 and intx.unmask_eventfd() >= 0
        for _ in range(3):
            kernel.fire(dev, 0)
            assert intx.wait(1) == 1 and dev.masked
            assert intx.unmask() == "eventfd" and not dev.masked
        assert dev.unmask_ioctls == 0 and dev.unmask_eventfd_writes == 3
        assert intx.counts == {"line": 0, "device": 0, "kernel": 0, "eventfd": 3}
        intx.policy = "kernel"  # and back: the eventfd stays armed until close
        kernel.fire(dev, 0)
        assert intx.wait(1) == 1 and intx.unmask() == "kernel" and dev.unmask_ioctls == 1
        intx.close()
        assert kernel.open_fds == before and dev.unmask_eventfd == -1
        assert vd.intx().counts == {"line": 0, "device": 0, "kernel": 0}


def test_intx_unmask_eventfd_refused_closes_it(host: FakeSys, kernel: FakeSyscalls) -> None:
    with open_dev(host, kernel, "legacy") as vd:
        before = kernel.open_fds
        intx = vd.intx()
        kernel.fail(U.VFIO_DEVICE_SET_IRQS, errno.EINVAL)
        with pytest.raises(VfioError):
            intx.policy = "eventfd"
        assert intx.policy == "state" and intx.unmask_eventfd() == -1
        assert kernel.open_fds == before + 1  # only the trigger's eventfd
        with pytest.raises(InvalidArgument):
            vd.intx("bogus")


def test_device_feature_set_and_probe(host: FakeSys, kernel: FakeSyscalls) -> None:
    from vfiokit.vfio.fake import FakeFeature

    dev = kernel.devices[BDF]
    dev.features[7] = FakeFeature(data=bytearray(b"\x01\x02\x03\x04"))
    dev.features[8] = FakeFeature(set=False, data=bytearray(4))
    with open_dev(host, kernel, "iommufd") as vd:
        d = vd.device
        assert d.feature_probe(7) and d.feature_probe(7, get=True, set=True)
        assert d.feature_probe(8, get=True) and not d.feature_probe(8, set=True)
        assert not d.feature_probe(9)  # unknown: ENOTTY
        assert d.feature_get(7, 4) == b"\x01\x02\x03\x04"
        d.feature_set(7, b"\xaa\xbb\xcc\xdd")
        assert dev.features[7].data == b"\xaa\xbb\xcc\xdd"
        assert d.feature_get(7, 4) == b"\xaa\xbb\xcc\xdd"
        with pytest.raises(VfioError) as info:
            d.feature_set(8, b"\0\0\0\0")
        assert info.value.errno == errno.EINVAL
        with pytest.raises(Unsupported):
            d.feature_set(9, b"")  # ENOTTY
        with pytest.raises(InvalidArgument):
            d.feature_probe(0x10000)  # would spill into the GET/SET/PROBE bits


def test_region_type_capability(host: FakeSys) -> None:
    kernel = FakeSyscalls()
    dev = kernel.add_device(BDF, group="3", sparse=[(0, 0x1000), (0x3000, 0xFD000)])
    opregion = (U.REGION_TYPE_PCI_VENDOR | 0x8086, U.VFIO_REGION_SUBTYPE_INTEL_IGD_OPREGION)
    kernel.add_region(dev, U.VFIO_PCI_NUM_REGIONS, 0x2000, type=opregion)
    kernel.add_region(dev, U.VFIO_PCI_NUM_REGIONS + 1, 0x1000, type=(U.VFIO_REGION_TYPE_GFX, 1))
    with open_dev(host, kernel, "legacy") as vd:
        d = vd.device
        assert d.info.num_regions == U.VFIO_PCI_NUM_REGIONS + 2
        assert d.bar(0).type is None and d.bar(0).areas() == [(0, 0x1000), (0x3000, 0xFD000)]
        region = d.find_region(*opregion)
        assert region is not None and region.index == U.VFIO_PCI_NUM_REGIONS
        assert region.size == 0x2000 and region.read(0, 4) == 0
        gfx = d.find_region(U.VFIO_REGION_TYPE_GFX, 1)
        assert gfx is not None and gfx.type == (U.VFIO_REGION_TYPE_GFX, 1)
        assert d.find_region(U.VFIO_REGION_TYPE_CCW, 1) is None
        assert [(r.index, r.type) for r in d.device_regions()] == [
            (U.VFIO_PCI_NUM_REGIONS, opregion),
            (U.VFIO_PCI_NUM_REGIONS + 1, (U.VFIO_REGION_TYPE_GFX, 1)),
        ]


def test_no_device_specific_regions(host: FakeSys, kernel: FakeSyscalls) -> None:
    """A device without any (edu, most NICs): an empty list, find_region None."""
    with open_dev(host, kernel, "iommufd") as vd:
        d = vd.device
        assert d.info.num_regions == U.VFIO_PCI_NUM_REGIONS and d.device_regions() == []
        assert d.find_region(U.REGION_TYPE_PCI_VENDOR | 0x8086, 1) is None
        assert d.bar(0).type is None and d.config.type is None


def test_region_with_sparse_and_type_caps(host: FakeSys) -> None:
    """Two capabilities chained: both found."""
    kernel = FakeSyscalls()
    dev = kernel.add_device(BDF, group="3", sparse=[(0, 0x1000)])
    dev.regions[0].type = (U.REGION_TYPE_PCI_VENDOR | 0x1234, 5)
    with open_dev(host, kernel, "legacy") as vd:
        bar0 = vd.device.bar(0)
        assert bar0.areas() == [(0, 0x1000)]
        assert bar0.type == (U.REGION_TYPE_PCI_VENDOR | 0x1234, 5)


def test_the_docs_fake_example_runs() -> None:
    """docs/api.md's hardware-free example checks something and passes here too."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "FakeSyscalls" in b]
    assert len(blocks) == 1 and "assert" in blocks[0] and "# vd =" not in blocks[0]
    exec(compile(blocks[0], "docs/api.md", "exec"), {})


def test_dma_map_failing_otherwise_gives_everything_back(
    host: FakeSys, kernel: FakeSyscalls, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_dev(host, kernel, "legacy") as vd:

        def interrupted(*_a: object, **_k: object) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(vd.dma, "map", interrupted)
        with pytest.raises(KeyboardInterrupt):
            vd.dma_buffer(4096)
        assert vd.allocator.used == {} and vd._owned == {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_never_closed_warns_and_closes_the_fds(
    host: FakeSys, kernel: FakeSyscalls, backend: str
) -> None:
    """A session dropped without close(): ResourceWarnings, and no fd left open."""
    vd = open_dev(host, kernel, backend)
    vd.intx("eventfd")
    vd.msi(1)
    vd.dma_buffer(4096)
    assert kernel.open_fds > 0
    with pytest.warns(ResourceWarning) as seen:
        del vd
        gc.collect()
    names = {str(w.message).split()[1] for w in seen}
    assert {"VfioDevice", "Device", "Intx", "Vectors", "DmaBuffer"} <= names
    assert kernel.open_fds == 0


def test_closed_objects_do_not_warn(host: FakeSys, kernel: FakeSyscalls) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        with open_dev(host, kernel, "legacy") as vd:
            vd.intx()
            vd.dma_buffer(4096)
        del vd
        gc.collect()


def test_typed_errors_are_also_the_builtins(host: FakeSys, kernel: FakeSyscalls) -> None:
    """except ValueError / LookupError / PermissionError work too, errno kept."""
    kernel.fail(U.VFIO_GROUP_GET_DEVICE_FD, errno.EACCES)
    with pytest.raises(PermissionError) as perm:
        open_dev(host, kernel, "legacy")
    assert perm.value.errno == errno.EACCES and isinstance(perm.value, PermissionDenied)
    assert "permission denied" in str(perm.value).lower() and perm.value.remedy
    kernel.fail(U.VFIO_GROUP_GET_DEVICE_FD, errno.ENODEV)
    with pytest.raises(LookupError):
        open_dev(host, kernel, "legacy")
    with pytest.raises(ValueError):
        VfioDevice("zz", sys=kernel)
    assert PermissionDenied("x").to_dict()["error"] == "PermissionDenied"


# -- huge pages ----------------------------------------------------------------------------

MIB2, GIB = 2 << 20, 1 << 30
CPU_PAGE = resource.getpagesize()


def with_hugetlb(host: FakeSys, sizes: list[int]) -> None:
    """The host's hugetlb files: a pool per size, the first one the default."""
    for size in sizes:
        host.write(f"sys/kernel/mm/hugepages/hugepages-{size >> 10}kB/nr_hugepages", "0\n")
    host.write("proc/meminfo", f"MemTotal: 1000000 kB\nHugepagesize:    {sizes[0] >> 10} kB\n")


@pytest.mark.parametrize("backend", BACKENDS)
def test_hugepage_dma_buffer(host: FakeSys, backend: str) -> None:
    """hugepages="require": whole huge pages (MAP_HUGETLB of the default size), an IOVA
    aligned to one, the pages back in the pool on close; CPU pages by default."""
    with_hugetlb(host, [MIB2, GIB])
    kernel = FakeSyscalls(hugepages={MIB2: 4, GIB: 0})
    kernel.add_device(BDF, group="3", cdev="vfio0")
    with open_dev(host, kernel, backend) as vd:
        small = vd.dma_buffer(4096)
        assert not small.hugepages and small.page_size == CPU_PAGE and small.size == 4096
        buf = vd.dma_buffer(5000, hugepages="require")
        assert buf.hugepages and buf.page_size == MIB2 and buf.size == MIB2
        assert buf.iova % MIB2 == 0 and buf.iova >= small.iova + 4096
        assert kernel.mappings[buf.iova] == (buf.vaddr, MIB2)
        assert kernel.hugepages[MIB2] == 3
        buf.view[MIB2 - 5 :] = b"hello"
        assert bytes(buf.view[-5:]) == b"hello"
        after = vd.dma_buffer(4096)  # CPU pages again, after the huge page
        assert after.iova >= buf.iova + MIB2 or after.iova + 4096 <= buf.iova
        buf.close()
        assert kernel.hugepages[MIB2] == 4 and buf.iova not in kernel.mappings
        two = vd.dma_buffer(MIB2 + 1, hugepages="prefer")
        assert two.hugepages and two.size == 2 * MIB2 and kernel.hugepages[MIB2] == 2
    assert kernel.hugepages[MIB2] == 4 and kernel.mappings == {} and kernel.open_fds == 0


def test_hugepages_unavailable(host: FakeSys) -> None:
    """An empty pool: "require" is HugepagesUnavailable (ENOMEM, the remedy says how to
    reserve pages) with nothing left mapped or allocated; "prefer" gets CPU pages."""
    from vfiokit.vfio import HugepagesUnavailable

    with_hugetlb(host, [MIB2])
    kernel = FakeSyscalls(hugepages={MIB2: 0})
    kernel.add_device(BDF, group="3", cdev="vfio0")
    with open_dev(host, kernel, "legacy") as vd:
        with pytest.raises(HugepagesUnavailable) as info:
            vd.dma_buffer(4096, hugepages="require")
        exc = info.value
        assert isinstance(exc, VfioError) and exc.errno == errno.ENOMEM
        assert exc.page_size == MIB2 and "hugepages-2048kB/nr_hugepages" in (exc.remedy or "")
        assert kernel.mappings == {} and vd.allocator.used == {}
        buf = vd.dma_buffer(4096, hugepages="prefer")
        assert not buf.hugepages and buf.size == 4096 and buf.page_size == CPU_PAGE


def test_hugepages_policy_and_sizes(host: FakeSys) -> None:
    """A size the kernel has no pool of is EINVAL ("prefer": CPU pages); a bad policy or a
    size that is not a power of two is InvalidArgument."""
    from vfiokit.vfio import HugepagesUnavailable

    with_hugetlb(host, [MIB2])
    kernel = FakeSyscalls(hugepages={MIB2: 1})
    kernel.add_device(BDF, group="3", cdev="vfio0")
    with open_dev(host, kernel, "iommufd") as vd:
        with pytest.raises(HugepagesUnavailable) as info:
            vd.dma_buffer(4096, hugepages="require", hugepage_size=GIB)
        assert info.value.errno == errno.EINVAL and kernel.hugepages == {MIB2: 1}
        assert not vd.dma_buffer(4096, hugepages="prefer", hugepage_size=GIB).hugepages
        with pytest.raises(InvalidArgument):
            vd.dma_buffer(4096, hugepages="yes")
        with pytest.raises(InvalidArgument):
            vd.dma_buffer(4096, hugepages="require", hugepage_size=3 << 20)
        assert vd.dma_buffer(4096, hugepages="off").page_size == CPU_PAGE
        assert vd.dma_buffer(1, hugepages="require", hugepage_size=MIB2).size == MIB2


def test_no_hugetlb_in_the_kernel(host: FakeSys, kernel: FakeSyscalls) -> None:
    """No /sys/kernel/mm/hugepages, no Hugepagesize: "prefer" is CPU pages, "require" an
    EOPNOTSUPP HugepagesUnavailable that asks for CONFIG_HUGETLBFS."""
    from vfiokit.vfio import HugepagesUnavailable

    with open_dev(host, kernel, "legacy") as vd:
        assert not vd.dma_buffer(4096, hugepages="prefer").hugepages
        with pytest.raises(HugepagesUnavailable) as info:
            vd.dma_buffer(4096, hugepages="require")
        assert info.value.errno == errno.EOPNOTSUPP
        assert "CONFIG_HUGETLBFS" in (info.value.remedy or "")


def test_default_hugepage_size(host: FakeSys) -> None:
    from vfiokit import SysRoot
    from vfiokit.vfio.session import default_hugepage_size

    root = SysRoot(host.root)
    assert default_hugepage_size(root) is None
    host.write(f"sys/kernel/mm/hugepages/hugepages-{GIB >> 10}kB/nr_hugepages", "0\n")
    host.write(f"sys/kernel/mm/hugepages/hugepages-{MIB2 >> 10}kB/nr_hugepages", "0\n")
    assert default_hugepage_size(root) == MIB2  # the smallest, without /proc/meminfo
    host.write("proc/meminfo", "MemTotal: 1 kB\nHugepagesize:    1048576 kB\n")
    assert default_hugepage_size(root) == GIB


def test_hugetlb_mmap_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """MAP_HUGETLB with log2 of the size in bits 26..31, as include/uapi/linux/mman.h
    encodes MAP_HUGE_2MB and MAP_HUGE_1GB; the arches with their own MAP_HUGETLB."""
    import mmap

    from vfiokit.vfio import sys as S

    seen: list[int] = []

    def fake_mmap(fd: int, length: int, flags: int) -> bytes:
        seen.append(flags)
        return b""

    monkeypatch.setattr(S.mmap, "mmap", fake_mmap)
    RealSyscalls().anon_mmap(4096)
    RealSyscalls().anon_mmap(4096, MIB2)
    RealSyscalls().anon_mmap(4096, GIB)
    base = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    assert seen == [base, base | 0x40000 | 21 << 26, base | 0x40000 | 30 << 26]
    with pytest.raises(VfioError) as info:
        RealSyscalls().anon_mmap(4096, 3 << 20)
    assert info.value.errno == errno.EINVAL
    assert S._map_hugetlb("mips64") == S._map_hugetlb("parisc") == 0x80000
    assert S._map_hugetlb("alpha") == 0x100000 and S._map_hugetlb("aarch64") == 0x40000


def test_hugetlb_mmap_on_this_kernel() -> None:
    """The real mmap(2) with our flags: where this machine's 2 MiB pool is empty (and
    cannot overcommit) the kernel says ENOMEM, which proves it took the size encoding
    (a size it did not recognise would be EINVAL); where it has pages, one is mapped."""
    from pathlib import Path

    pool = "/sys/kernel/mm/hugepages/hugepages-2048kB"
    if not os.path.isdir(pool):
        pytest.skip("no 2 MiB huge pages on this kernel")
    free = int(Path(f"{pool}/free_hugepages").read_text())
    overcommit = int(Path(f"{pool}/nr_overcommit_hugepages").read_text())
    try:
        m = RealSyscalls().anon_mmap(4096, MIB2)
    except VfioError as exc:
        assert free == 0 and overcommit == 0 and exc.errno == errno.ENOMEM, exc
    else:
        assert len(m) == 4096  # Python's view: the kernel rounded the mapping up
        m.close()


def test_state_page_unmask_makes_no_state_syscall(host: FakeSys) -> None:
    """With vfiokit-pci's state page mapped, policy "state" reads the mask the last
    interrupt got from memory: per unmask one ioctl at the line, no VFIO_DEVICE_FEATURE."""
    kernel = FakeSyscalls()
    dev = kernel.add_device(BDF, group="3", vfiokit=True)
    with open_dev(host, kernel, "legacy") as vd:
        intx = vd.intx()
        assert intx.page_mapped
        calls: list[int] = []
        orig = kernel._ioctl_device

        def counting(f, req, arg):  # type: ignore[no-untyped-def]
            calls.append(req)
            return orig(f, req, arg)

        kernel._ioctl_device = counting  # type: ignore[method-assign]
        for name in ("pread", "pwrite"):  # config space: only at the device
            orig_rw = getattr(kernel, name)
            monkey = (lambda f, n: lambda *a: (calls.append(n), f(*a))[1])(orig_rw, name)
            setattr(kernel, name, monkey)
        for _ in range(3):
            kernel.fire(dev, 0)
            assert intx.wait(1) == 1 and intx.unmask() == "line" and not dev.masked
        assert calls == [U.VFIO_DEVICE_SET_IRQS] * 3
        # A sharer arrives after an interrupt: the page keeps the mask that interrupt got
        # (the unmask at the line, which the driver turns into whatever is in effect).
        kernel.fire(dev, 0)
        dev.mask_device = 1
        assert intx.wait(1) == 1 and intx.unmask() == "line" and not dev.masked
        kernel.fire(dev, 0)  # the next interrupt is masked at the device, and says so
        assert intx.wait(1) == 1 and intx.unmask() == "device" and not dev.masked
        assert intx.counts == {"line": 4, "device": 1, "kernel": 0}
        assert U.VFIO_DEVICE_FEATURE not in calls


def test_state_page_is_mapped_read_only_and_let_go_at_close(host: FakeSys) -> None:
    kernel = FakeSyscalls()
    dev = kernel.add_device(BDF, group="3", vfiokit=True)
    page = dev.regions[U.VFIO_PCI_NUM_REGIONS]
    with open_dev(host, kernel, "legacy") as vd:
        region = vd.device.find_region(U.VFIOKIT_REGION_TYPE, U.VFIOKIT_REGION_SUBTYPE_INTX_PAGE)
        assert region is not None and not region.writable
        with pytest.raises(VfioError) as info:
            vd.device.sys.mmap(vd.device.fd, region.size, region.offset, True)
        assert info.value.errno == errno.EPERM
        with pytest.raises(VfioError):
            vd.device.sys.pwrite(vd.device.fd, b"\x01", region.offset + 8)
        intx = vd.intx()
        assert page.live and not page.live[0].closed
        assert struct.unpack_from("=III", page.live[0]) == (1, U.VFIOKIT_INTX_ADAPTIVE, 0)
        intx.close()
        assert all(m.closed for m in page.live)  # unmapped with the Intx, device still open
        assert not intx.page_mapped
        assert intx.unmask() == "line"  # as without a page: the feature, then the ioctl


def test_state_page_of_no_known_version_is_not_used(host: FakeSys) -> None:
    """Versions only append fields: 2 would be read as 1; 0 is no page at all."""
    kernel = FakeSyscalls()
    dev = kernel.add_device(BDF, group="3", vfiokit=True)
    page = dev.regions[U.VFIO_PCI_NUM_REGIONS]
    page.data[:4] = struct.pack("=I", 0)
    with open_dev(host, kernel, "legacy") as vd:
        intx = vd.intx()
        assert intx.vfiokit and not intx.page_mapped
        assert all(m.closed for m in page.live or [])
        dev.mask_device = 1
        kernel.fire(dev, 0)
        assert intx.wait(1) == 1 and intx.unmask() == "device"  # from the feature


def test_intx_close_unmaps_only_its_own_page_mapping(host: FakeSys) -> None:
    """The page's Region is the device's, shared: a mapping of it made by the user
    outlives the Intx (a Region.close() there raised Busy on the user's live view)."""
    kernel = FakeSyscalls()
    dev = kernel.add_device(BDF, group="3", vfiokit=True)
    page = dev.regions[U.VFIO_PCI_NUM_REGIONS]
    with open_dev(host, kernel, "legacy") as vd:
        region = vd.device.find_region(U.VFIOKIT_REGION_TYPE, U.VFIOKIT_REGION_SUBTYPE_INTX_PAGE)
        assert region is not None
        mine = region.mmap().cast("I")
        intx = vd.intx()
        assert intx.page_mapped and len(page.live or []) == 2
        intx.close()
        assert [m.closed for m in page.live or []] == [False, True]
        assert mine[0] == 1  # still mapped, still readable
        mine.release()


def test_device_closed_before_its_intx(host: FakeSys) -> None:
    """The Intx holds no buffer export of its page: the Device's close unmaps it as any
    other mapping, and the Intx then says EBADF, typed, as for the device's fd."""
    kernel = FakeSyscalls()
    dev = kernel.add_device(BDF, group="3", vfiokit=True)
    with open_dev(host, kernel, "legacy") as vd:
        intx = vd.intx()
        kernel.fire(dev, 0)
        assert intx.wait(1) == 1
        vd.device.close()  # no Busy
        assert not intx.page_mapped
        with pytest.raises(VfioError) as info:
            intx.unmask()
        assert info.value.errno == errno.EBADF
        intx.close()


def test_state_page_mmap_refused_falls_back_to_the_feature(
    host: FakeSys, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = FakeSyscalls()
    dev = kernel.add_device(BDF, group="3", vfiokit=True)

    def refused(fd: int, length: int, offset: int, writable: bool = True) -> object:
        raise error_for("mmap", errno.EPERM)

    with open_dev(host, kernel, "legacy") as vd:
        monkeypatch.setattr(kernel, "mmap", refused)
        intx = vd.intx()
        assert intx.vfiokit and not intx.page_mapped
        dev.mask_device = 1
        kernel.fire(dev, 0)
        assert intx.wait(1) == 1 and intx.unmask() == "device"


def test_other_policies_keep_their_unmask_after_close(host: FakeSys) -> None:
    kernel = FakeSyscalls()
    kernel.add_device(BDF, group="3", vfiokit=True)
    with open_dev(host, kernel, "legacy") as vd:
        intx = vd.intx()
        intx.policy = "eventfd"
        intx.close()
        with pytest.raises(VfioError) as info:
            intx.unmask()  # its unmask eventfd is closed
        assert info.value.errno == errno.EBADF
