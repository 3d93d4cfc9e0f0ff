"""vfiokit.uio against the fake kernel: the adaptive masks, the hand-over, stock kernels."""

from __future__ import annotations

import errno
import gc

import pytest

from fakesys import FakeSys
from vfiokit import InvalidArgument, NotFound, SysRoot, Unsupported, VfiokitError
from vfiokit.uio import UioDevice
from vfiokit.uio.fake import FakeUioDevice, FakeUioSyscalls

BDF = "0000:00:06.0"


def tree(host: FakeSys, *, irq: int = 22, driver: str = "uio_pci_generic") -> None:
    d = host.add_pci(BDF, vendor=0x1234, device=0x11E8, class_code=0xFF0000, driver=driver,
                     irq=irq)  # fmt: skip
    if driver == "uio_pci_generic":
        host.write(f"{d}/uio/uio0/dev", "250:0\n")
        host.write("sys/class/uio/uio0/event", "7\n")
        host.write("sys/class/uio/uio0/maps/map0/size", "0x0000000000100000\n")
        host.write("dev/uio0", "")
    host.add_irq(irq, "uio_pci_generic", mask_device=0)


@pytest.fixture
def host(tmp_path) -> FakeSys:
    h = FakeSys(tmp_path)
    tree(h)
    return h


def open_uio(host: FakeSys, dev: FakeUioDevice) -> tuple[UioDevice, FakeUioSyscalls]:
    dev.events += 7  # the count sysfs shows (tree()): earlier users' interrupts
    attr = host.root / f"sys/bus/pci/devices/{BDF}/adaptive_intx"
    if dev.irqcontrol:  # patch 0005's device attribute
        attr.write_text("1\n" if dev.adaptive else "0\n")
    elif attr.exists():
        attr.unlink()
    sys = FakeUioSyscalls(dev)
    return UioDevice(BDF, sysroot=SysRoot(host.root), sys=sys), sys


def test_alone_the_line_is_held_and_released_by_irqcontrol(host: FakeSys) -> None:
    dev = FakeUioDevice()
    udev, sys = open_uio(host, dev)
    with udev, udev.intx("state") as intx:
        assert intx.irqcontrol and intx.mask_device() is False
        for _ in range(3):
            dev.raise_irq()
            assert intx.wait(0) == 1 and dev.line_held and not dev.intx_disable
            dev.ack()
            assert intx.unmask() == "line" and not dev.line_held
            assert intx.wait(0) == 0
        assert intx.counts == {"line": 3, "device": 0, "kernel": 0}
        assert dev.config_writes == 0  # no config space access per interrupt
        assert len(udev.map(0)) == 0x100000
    assert sys.open_fds == 0


def test_shared_the_device_is_masked_and_the_write_unmasks_it(host: FakeSys) -> None:
    dev = FakeUioDevice()
    dev.set_sharer(True)
    udev, sys = open_uio(host, dev)
    with udev, udev.intx("state") as intx:
        assert intx.mask_device() is True and udev.adaptive is True
        writes = dev.irqcontrol_writes
        dev.raise_irq()
        assert intx.wait(0) == 1 and dev.intx_disable and not dev.line_held
        dev.ack()
        assert intx.unmask() == "device" and not dev.intx_disable
        intx.policy = "kernel"
        dev.raise_irq()
        assert intx.wait(0) == 1 and dev.intx_disable
        dev.ack()
        assert intx.unmask() == "kernel" and not dev.intx_disable
        assert intx.counts == {"line": 0, "device": 1, "kernel": 1}
        # Both through the write, never config space: only it undoes a held line too.
        assert dev.irqcontrol_writes - writes == 2 and dev.config_writes == 0
    assert sys.open_fds == 0


def test_both_masks_at_once_are_both_undone(host: FakeSys) -> None:
    """Under threadirqs the handler thread masks the device while the line is shared, the
    sharer leaves, and the thread's end holds the line too: the state read before the
    sharer left says "device", and the unmask must still release the line."""
    dev = FakeUioDevice()
    dev.set_sharer(True)
    udev, _ = open_uio(host, dev)
    with udev, udev.intx("state") as intx:
        dev.raise_irq()
        assert intx.wait(0) == 1 and dev.intx_disable
        dev.line_held = True  # the thread's hold, after the read the unmask makes
        dev.ack()
        assert intx.unmask() == "device"
        assert not dev.line_held and not dev.intx_disable


def test_hand_over_while_held_then_back_alone(host: FakeSys) -> None:
    dev = FakeUioDevice()
    udev, _ = open_uio(host, dev)
    with udev, udev.intx("state") as intx:
        dev.raise_irq()
        assert intx.wait(0) == 1 and dev.line_held
        dev.set_sharer(True)  # the core releases the line; the device fires again
        assert not dev.line_held and dev.intx_disable
        assert intx.wait(0) == 1  # the second report of the same assertion
        dev.ack()
        assert intx.unmask() == "device" and not dev.intx_disable
        dev.set_sharer(False)
        dev.raise_irq()
        assert intx.wait(0) == 1 and dev.line_held
        dev.ack()
        assert intx.unmask() == "line"


def test_stale_line_view_after_the_sharer_left(host: FakeSys) -> None:
    """Masked at the device while shared, the sharer leaves: the state says line, and the
    irqcontrol write must unmask the device all the same."""
    dev = FakeUioDevice()
    dev.set_sharer(True)
    udev, _ = open_uio(host, dev)
    with udev, udev.intx("state") as intx:
        dev.raise_irq()
        assert intx.wait(0) == 1 and dev.intx_disable
        dev.set_sharer(False)
        dev.ack()
        assert intx.unmask() == "line" and not dev.intx_disable and not dev.line_held


def test_still_asserted_at_unmask_is_reported_again(host: FakeSys) -> None:
    dev = FakeUioDevice()
    dev.set_sharer(True)
    udev, _ = open_uio(host, dev)
    with udev, udev.intx("kernel") as intx:
        dev.raise_irq()
        assert intx.wait(0) == 1
        intx.unmask()  # not acked: stays masked, and the kernel says so again
        assert dev.intx_disable and intx.wait(0) == 1


@pytest.mark.parametrize("series", [True, False], ids=["series", "stock kernel"])
def test_without_irqcontrol_the_stock_way(host: FakeSys, series: bool) -> None:
    dev = FakeUioDevice(irqcontrol=False, series=series)
    dev.intx_disable = True  # left masked by a previous user: enabled on creation
    udev, sys = open_uio(host, dev)
    with udev, udev.intx("state") as intx:
        assert not intx.irqcontrol and not dev.intx_disable
        assert intx.mask_device() is (True if series else None)
        dev.raise_irq()
        assert intx.wait(0) == 1 and dev.intx_disable
        dev.ack()
        assert intx.unmask() == "device" and not dev.intx_disable
        assert dev.irqcontrol_writes == 0 and intx.counts["device"] == 1
    assert sys.open_fds == 0


def test_interrupts_unmask_between_steps(host: FakeSys) -> None:
    dev = FakeUioDevice()
    udev, _ = open_uio(host, dev)
    with udev, udev.intx("kernel") as intx:
        steps = intx.interrupts()
        dev.raise_irq()
        assert next(steps) == 1 and dev.line_held
        dev.ack()
        with pytest.raises(VfiokitError) as info:  # the fake's read would block: none yet
            next(steps)
        assert info.value.errno == errno.EAGAIN and not dev.line_held  # unmasked first
        assert intx.counts["kernel"] == 1


def test_refusals(tmp_path) -> None:
    host = FakeSys(tmp_path)
    tree(host, driver="vfio-pci")
    with pytest.raises(NotFound) as info:
        UioDevice(BDF, sysroot=SysRoot(host.root), sys=FakeUioSyscalls(FakeUioDevice()))
    assert "vfio-pci" in str(info.value) and "--driver uio_pci_generic" in (info.value.remedy or "")
    with pytest.raises(NotFound):
        UioDevice("0000:00:09.0", sysroot=SysRoot(host.root), sys=FakeUioSyscalls(FakeUioDevice()))
    host2 = FakeSys(tmp_path / "b")
    tree(host2, irq=0)
    udev, sys = open_uio(host2, FakeUioDevice())
    with udev:
        with pytest.raises(Unsupported):
            udev.intx()
        with pytest.raises(InvalidArgument):
            udev.map(3)
    assert sys.open_fds == 0


def test_config_policy_only_where_the_device_is_masked_at_the_device(host: FakeSys) -> None:
    udev, _ = open_uio(host, FakeUioDevice())
    with udev, pytest.raises(InvalidArgument) as info:
        udev.intx("config")
    assert "held line" in str(info.value) and '"state"' in (info.value.remedy or "")
    dev = FakeUioDevice(adaptive=False)
    udev, sys = open_uio(host, dev)
    with udev, udev.intx("config") as intx:
        assert intx.adaptive is False
        dev.raise_irq()
        assert intx.wait(0) == 1 and dev.intx_disable
        dev.ack()
        writes = dev.irqcontrol_writes
        assert intx.unmask() == "device" and not dev.intx_disable
        assert dev.config_writes == 1 and dev.irqcontrol_writes == writes
        with pytest.raises(InvalidArgument):
            intx.policy = "line"
    assert sys.open_fds == 0


def test_wait_counts_every_interrupt_since_the_last(host: FakeSys) -> None:
    dev = FakeUioDevice()
    dev.set_sharer(True)
    udev, _ = open_uio(host, dev)
    with udev, udev.intx("kernel") as intx:
        dev.raise_irq()
        intx.unmask()  # still asserted: reported again
        assert intx.wait(0) == 2


def test_device_close_closes_its_intx_and_use_after_is_ebadf(host: FakeSys) -> None:
    udev, sys = open_uio(host, FakeUioDevice())
    intx = udev.intx()
    udev.close()
    assert sys.open_fds == 0  # the Intx's own listener and state fds too
    with pytest.raises(VfiokitError) as info:
        intx.unmask()
    assert info.value.errno == errno.EBADF
    intx.close()
    udev.close()


def test_unclosed_objects_warn_and_give_their_fds_back(host: FakeSys) -> None:
    udev, sys = open_uio(host, FakeUioDevice())
    intx = udev.intx()
    assert sys.open_fds == 4  # the device's /dev/uio0 and config, the Intx's two
    with pytest.warns(ResourceWarning, match="unclosed UioIntx"):
        del intx
        gc.collect()
    assert sys.open_fds == 2
    with pytest.warns(ResourceWarning, match="unclosed UioDevice"):
        del udev
        gc.collect()
    assert sys.open_fds == 0
