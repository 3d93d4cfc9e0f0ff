"""uio_pci_generic with the series' patch 0005, driven from Python (vfiokit.uio) after
`vfiokit bind --driver uio_pci_generic`: line level alone, device level shared, the
hand-over both ways, a hostile irqcontrol writer, an unbind while the line is held, and
the stock mode (adaptive_intx=0) beside it.

edu_alone is alone on its GSI (scripts/vm-topology.toml); vfiokit_test_sharer adds a
second handler to the line at will.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import helpers as h
from test_adaptive import DEBUGFS, irq_debug, mask_device, mounted, sharer
from vfiokit.uio import UioDevice, UioIntx

PARAM = Path("/sys/module/uio_pci_generic/parameters/adaptive_intx")
pytestmark = pytest.mark.usefixtures("vfiokit_modules")


def vfiokit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vfiokit", *args], capture_output=True,
                          text=True, check=False)  # fmt: skip


def held(gsi: int) -> bool:
    """Wait for the hold: under threadirqs the handler thread reports the interrupt before
    its end (irq_finalize_oneshot()) holds the line."""
    return h.wait_for(lambda: "IRQS_LINE_HELD" in irq_debug(gsi)[0], 2.0)


def intx_disable(bdf: str) -> bool:
    return bool(h.sysfs_config(bdf, 4, 2) & 0x400)


@contextlib.contextmanager
def uio_bound(bdf: str, adaptive: bool) -> Iterator[UioDevice]:
    """Bound with `vfiokit bind --driver uio_pci_generic` (adaptive_intx set first: it
    applies to devices bound afterwards), opened, and given back with `vfiokit unbind`."""
    before = PARAM.read_text().strip()
    PARAM.write_text("1" if adaptive else "0")
    res = vfiokit("bind", bdf, "--driver", "uio_pci_generic")
    assert res.returncode == 0, res.stderr
    try:
        assert h.driver_of(bdf) == "uio_pci_generic"
        with UioDevice(bdf) as dev:
            bar = dev.map(0).cast("I")
            bar[h.EDU_IRQ_ACK // 4] = 0xFFFFFFFF  # a quiet device to start from
            try:
                yield dev
            finally:
                bar[h.EDU_IRQ_ACK // 4] = 0xFFFFFFFF
                bar.release()
    finally:
        res = vfiokit("unbind", bdf)
        PARAM.write_text("1" if before == "Y" else "0")
        assert res.returncode == 0, res.stderr


class Edu:
    """edu's interrupt registers in BAR0 (uio map0)."""

    def __init__(self, dev: UioDevice):
        self.bar = dev.map(0).cast("I")

    def raise_(self, bit: int = 1) -> None:
        self.bar[h.EDU_IRQ_RAISE // 4] = bit

    def ack(self, bit: int = 0xFFFFFFFF) -> None:
        self.bar[h.EDU_IRQ_ACK // 4] = bit

    def release(self) -> None:
        self.bar.release()


def round_trip(edu: Edu, intx: UioIntx, bdf: str) -> tuple[str, bool, str]:
    """Raise, receive, note where it is masked, ack, unmask; (mask, device bit, how)."""
    edu.raise_()
    assert intx.wait(2.0) >= 1, "interrupt lost"
    at_device = h.wait_for(lambda: intx_disable(bdf), 0.05)
    where = "device" if at_device else "line"
    edu.ack()
    return where, at_device, intx.unmask()


def test_patched_uio_pci_generic() -> None:
    assert PARAM.exists(), "uio_pci_generic without patch 0005's adaptive_intx"


def test_alone_masks_at_the_line_and_irqcontrol_releases_it(topology) -> None:
    gsi, bdf = topology.by_name("edu_alone").gsi, topology.by_name("edu_alone").address
    mounted(DEBUGFS, "debugfs")
    with uio_bound(bdf, adaptive=True) as dev, dev.intx("state") as intx:
        edu = Edu(dev)
        try:
            assert intx.irqcontrol and intx.mask_device() is False and mask_device(gsi) == 0
            assert dev.adaptive is True
            before = h.irq_count(gsi)
            for _ in range(20):
                edu.raise_()
                assert intx.wait(2.0) == 1 and held(gsi)
                names, depth = irq_debug(gsi)
                assert "IRQS_LINE_HELD" in names and depth == 1
                assert not intx_disable(bdf)  # never masked at the device
                edu.ack()
                assert intx.unmask() == "line"
                names, depth = irq_debug(gsi)
                assert "IRQS_LINE_HELD" not in names and depth == 0
            assert intx.wait(0.1) == 0
            assert h.irq_count(gsi) - before == 20
            assert intx.counts == {"line": 20, "device": 0, "kernel": 0}
            # The interrupts() loop, policy "kernel": the write decides.
            intx.policy = "kernel"
            steps = intx.interrupts()
            edu.raise_()
            for _ in range(5):
                assert next(steps) == 1  # from the second on: unmasked first
                edu.ack()
                edu.raise_()  # the line is held: it fires at the next step's unmask
            steps.close()
            assert intx.counts["kernel"] == 4
            edu.ack()
            intx.unmask()
            # A write of 0 masks at the device; a write of 1 with the device asserting
            # leaves it masked and reports the interrupt again (vfio-pci's rule).
            intx.policy = "state"
            fd = os.open(f"/dev/{dev.name}", os.O_RDWR)
            try:
                os.write(fd, struct.pack("=i", 0))
                assert intx_disable(bdf)
                edu.raise_()
                assert intx.wait(0.3) == 0
                os.write(fd, struct.pack("=i", 1))
                assert intx.wait(2.0) == 1 and intx_disable(bdf)
                assert "IRQS_LINE_HELD" not in irq_debug(gsi)[0]
            finally:
                os.close(fd)
            edu.ack()
            assert intx.unmask() == "line" and not intx_disable(bdf)
            assert intx.wait(0.2) == 0
        finally:
            edu.release()


def test_hand_over_both_ways(topology) -> None:
    gsi, bdf = topology.by_name("edu_alone").gsi, topology.by_name("edu_alone").address
    mounted(DEBUGFS, "debugfs")
    with uio_bound(bdf, adaptive=True) as dev, dev.intx("state") as intx:
        edu = Edu(dev)
        try:
            edu.raise_()
            assert intx.wait(2.0) == 1 and held(gsi)
            with sharer(gsi):
                # The core released the line; the still asserting device fired again and
                # its handler, now reading the bit set, masked it at the device and said so.
                assert h.wait_for(lambda: intx_disable(bdf), 5.0)
                names, depth = irq_debug(gsi)
                assert "IRQS_LINE_HELD" not in names and depth == 0
                assert intx.wait(2.0) == 1  # the second report of the same assertion
                assert intx.mask_device() is True
                edu.ack()
                assert intx.unmask() == "device" and not intx_disable(bdf)
                for _ in range(10):
                    assert round_trip(edu, intx, bdf) == ("device", True, "device")
                # Masked at the device when the sharer leaves: the unmask after it
                # reads "line" and must unmask the device all the same.
                edu.raise_()
                assert intx.wait(2.0) == 1 and h.wait_for(lambda: intx_disable(bdf), 2.0)
            assert mask_device(gsi) == 0
            edu.ack()
            intx.unmask()
            assert not intx_disable(bdf) and "IRQS_LINE_HELD" not in irq_debug(gsi)[0]
            for _ in range(10):
                assert round_trip(edu, intx, bdf) == ("line", False, "line")
            assert intx.wait(0.1) == 0
        finally:
            edu.release()


def test_irqcontrol_without_ack_refires_once_per_write(topology) -> None:
    """A user that re-enables without servicing its device (or on purpose, many times)
    gets one interrupt per write, and the line stays held between: no storm, no hang."""
    gsi, bdf = topology.by_name("edu_alone").gsi, topology.by_name("edu_alone").address
    with uio_bound(bdf, adaptive=True) as dev, dev.intx("kernel") as intx:
        edu = Edu(dev)
        try:
            edu.raise_()
            assert intx.wait(2.0) == 1
            before = h.irq_count(gsi)
            fd = os.open(f"/dev/{dev.name}", os.O_RDWR)
            try:
                for _ in range(200):
                    os.write(fd, struct.pack("=i", 1))
            finally:
                os.close(fd)
            fired = h.irq_count(gsi) - before
            threaded = "threadirqs" in Path("/proc/cmdline").read_text().split()
            # One interrupt per write; with the handler a thread, a write may come before
            # the last one's hold (an early release: no interrupt for it).
            assert fired == 200 or (threaded and 1 <= fired <= 200), fired
            seen = [0]

            def all_reported() -> bool:  # a forced thread may report the last one later
                seen[0] += intx.wait(0.05)
                return seen[0] >= fired

            # Under threadirqs on two vCPUs the line's count and the thread's reports were
            # seen to differ by one (4 reports for 3 counted interrupts, 7.2 debug; not
            # explained yet): still at most one report per write, and no storm.
            assert h.wait_for(all_reported, 5.0)
            assert seen[0] == fired or (threaded and abs(seen[0] - fired) <= 1 and seen[0] <= 200)
            edu.ack()
            intx.unmask()
            assert intx.wait(0.2) == 0
        finally:
            edu.release()


def test_unbind_while_held_leaves_the_device_masked(topology) -> None:
    """Unbound with its line held and the device still asserting, the device must be left
    masked at the device: alone it never was, and once another driver shares the line an
    unmasked asserting device storms it with interrupts nobody handles. (The storm itself is
    not shown: edu_alone's GSI is freed with the unbind, and on a shared GSI the other
    devices' state is up to the tests before this one.)"""
    gsi, bdf = topology.by_name("edu_alone").gsi, topology.by_name("edu_alone").address
    mounted(DEBUGFS, "debugfs")
    PARAM.write_text("1")
    try:
        res = vfiokit("bind", bdf, "--driver", "uio_pci_generic")
        assert res.returncode == 0, res.stderr
        try:
            with UioDevice(bdf) as dev, dev.intx() as intx:
                edu = Edu(dev)
                try:
                    assert mask_device(gsi) == 0, Path(f"/sys/kernel/irq/{gsi}/actions").read_text()
                    edu.ack()
                    edu.raise_()
                    assert intx.wait(2.0) == 1 and held(gsi)
                    assert not intx_disable(bdf)
                finally:
                    edu.release()
        finally:
            res = vfiokit("unbind", bdf)
            assert res.returncode == 0, res.stderr
        assert h.driver_of(bdf) is None
        assert intx_disable(bdf), "left asserting an unmasked interrupt"
    finally:
        PARAM.write_text("0")
        quiet(bdf)
    # Bound again, it works.
    with uio_bound(bdf, adaptive=True) as dev, dev.intx("state") as intx:
        edu = Edu(dev)
        try:
            for _ in range(3):
                assert round_trip(edu, intx, bdf) == ("line", False, "line")
        finally:
            edu.release()


def quiet(bdf: str) -> None:
    """Ack edu without a driver (BAR0 through sysfs) and clear INTx Disable again."""
    fd = os.open(f"/sys/bus/pci/devices/{bdf}/resource0", os.O_RDWR | os.O_SYNC)
    try:
        with mmap.mmap(fd, 4096) as m:
            regs = memoryview(m).cast("I")  # edu takes 4-byte accesses only
            regs[h.EDU_IRQ_ACK // 4] = 0xFFFFFFFF
            regs.release()
    finally:
        os.close(fd)
    cfg = os.open(f"/sys/bus/pci/devices/{bdf}/config", os.O_RDWR)
    try:
        hi = os.pread(cfg, 1, 5)[0]
        os.pwrite(cfg, bytes([hi & ~0x04]), 5)
    finally:
        os.close(cfg)


def test_stock_mode_masks_at_the_device(topology) -> None:
    gsi, bdf = topology.by_name("edu_alone").gsi, topology.by_name("edu_alone").address
    with uio_bound(bdf, adaptive=False) as dev, dev.intx("state") as intx:
        edu = Edu(dev)
        try:
            assert intx.mask_device() is True and mask_device(gsi) == 1
            assert dev.adaptive is False
            for _ in range(5):
                assert round_trip(edu, intx, bdf) == ("device", True, "device")
            intx.policy = "kernel"  # the new irqcontrol unmasks the device as well
            for _ in range(5):
                assert round_trip(edu, intx, bdf) == ("device", True, "kernel")
            intx.policy = "config"  # the stock protocol: through sysfs config
            for _ in range(5):
                assert round_trip(edu, intx, bdf) == ("device", True, "device")
            assert intx.counts == {"line": 0, "device": 10, "kernel": 5}
        finally:
            edu.release()
