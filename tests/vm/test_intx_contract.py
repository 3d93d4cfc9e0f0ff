"""The INTx uAPI, differentially: stock vfio-pci is the oracle for vfiokit-pci.

Every test runs one sequence of user-space actions on the same edu against vfio-pci and
against vfiokit-pci, on an exclusive line and on a shared one, and compares what user space
can observe: return codes, eventfd counts, the command register read through the VFIO config
region, the device's real STATUS (sysfs `config`), the kernel log. Any difference fails,
except the documented one (docs/vfiokit-pci.md): the masking level, i.e. whether INTx
Disable is set in the device's real command register while an interrupt is masked (vfio-pci:
always; vfiokit-pci: only on a shared line). Those observations are recorded under keys
starting with "level:" and compared only on the shared line. And one safety difference:
with INTx off, vfiokit-pci keeps INTx Disable set in the device (vfio-pci lets it follow
the user's virtual bit, so an asserting device with no handler can storm a shared line);
keys starting with "off:" record it.

Lines: edu_alone is alone on GSI 22; "shared" adds vfiokit_test_sharer's handler to it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import helpers as h
from test_adaptive import SHARER, nointxmask, sharer

DRIVERS = ("vfio-pci", "vfiokit-pci")
NONE, BOOL, EVENTFD = h.IRQ_SET_DATA_NONE, h.IRQ_SET_DATA_BOOL, h.IRQ_SET_DATA_EVENTFD
MASK, UNMASK, TRIGGER = h.IRQ_SET_ACTION_MASK, h.IRQ_SET_ACTION_UNMASK, h.IRQ_SET_ACTION_TRIGGER
BUS_MASTER, MEMORY, INTX_DISABLE = 0x4, 0x2, 0x400
STATUS_INTX = 0x08

pytestmark = [
    pytest.mark.skipif(nointxmask(), reason="this boot forces vfio_pci.nointxmask=1"),
    pytest.mark.usefixtures("vfiokit_modules"),
]

Obs = dict[str, Any]
Scenario = Callable[[h.VfioDevice, Obs], None]


@contextlib.contextmanager
def line(kind: str, gsi: int) -> Iterator[None]:
    with sharer(gsi) if kind == "shared" else contextlib.nullcontext():
        yield


def level(dev: h.VfioDevice, obs: Obs, key: str) -> None:
    """Record the masking level: INTx Disable in the device's real command register."""
    obs[f"level:{key}"] = bool(h.sysfs_config(dev.bdf, h.PCI_COMMAND, 2) & INTX_DISABLE)


def asserting(dev: h.VfioDevice) -> bool:
    return asserting_bdf(dev.bdf)


def run_both(topology, kind: str, scenario: Scenario) -> dict[str, Obs]:
    edu = topology.by_name("edu_alone")
    out: dict[str, Obs] = {}
    for driver in DRIVERS:
        obs: Obs = {}
        log_before = len(h.dmesg().splitlines())
        # The sharer joins once the device is enabled: a GSI has no IRQ before that.
        with h.bound(edu.address, driver), h.VfioDevice(edu.address) as dev, line(kind, edu.gsi):
            # Start from a quiet device: no interrupt left raised by an earlier test.
            dev.write32(h.EDU_IRQ_ACK, 0xFFFFFFFF)
            scenario(dev, obs)
            dev.write32(h.EDU_IRQ_ACK, 0xFFFFFFFF)
        new_log = h.dmesg().splitlines()[log_before:]
        obs["kernel log"] = [ln for ln in new_log if any(w in ln for w in BAD_LOG)]
        out[driver] = obs
    return out


def assert_same(out: dict[str, Obs], kind: str) -> None:
    stock, ours = out["vfio-pci"], out["vfiokit-pci"]
    assert stock.keys() == ours.keys()
    diff = {
        k: (stock[k], ours[k])
        for k in stock
        if stock[k] != ours[k]
        and (kind == "shared" or not k.startswith("level:"))
        and not k.startswith("off:")
    }
    assert not diff, f"vfio-pci vs vfiokit-pci on the {kind} line: {diff}"
    # Documented: with INTx off, vfiokit-pci keeps INTx Disable set in the device.
    assert all(v for k, v in ours.items() if k.startswith("off:"))
    assert stock["kernel log"] == []


BAD_LOG = (
    "nobody cared",
    "Disabling IRQ",
    "WARNING",
    "BUG",
    "possible circular locking",
    "possible recursive locking",
    "Unbalanced enable",
    "INFO: task",
)
KINDS = pytest.mark.parametrize("kind", ["alone", "shared"])


def round_trip(dev: h.VfioDevice, efd: int, bit: int = 1) -> int:
    dev.write32(h.EDU_IRQ_RAISE, bit)
    n = h.signalled(efd)
    dev.write32(h.EDU_IRQ_ACK, bit)
    dev.set_irqs(NONE | UNMASK)
    return n


@KINDS
def test_trigger_variants(topology, kind: str) -> None:
    def scenario(dev: h.VfioDevice, o: Obs) -> None:
        efd = h.eventfd()
        o["enable"] = dev.set_irqs(EVENTFD | TRIGGER, data=h.i32(efd))
        o["loopback none"] = (dev.set_irqs(NONE | TRIGGER), h.signalled(efd))
        o["loopback bool 1"] = (dev.set_irqs(BOOL | TRIGGER, data=b"\1"), h.signalled(efd))
        o["loopback bool 0"] = (dev.set_irqs(BOOL | TRIGGER, data=b"\0"), h.signalled(efd))
        dev.write32(h.EDU_IRQ_RAISE, 1)
        o["raised"] = h.signalled(efd)
        level(dev, o, "masked")
        o["loopback while masked"] = (dev.set_irqs(NONE | TRIGGER), h.signalled(efd))
        dev.write32(h.EDU_IRQ_ACK, 1)
        o["unmask"] = (dev.set_irqs(NONE | UNMASK), h.signalled(efd))
        level(dev, o, "unmasked")
        # fd -1 removes the eventfd only: the handler stays and keeps masking.
        o["trigger -1"] = dev.set_irqs(EVENTFD | TRIGGER, data=h.i32(-1))
        dev.write32(h.EDU_IRQ_RAISE, 2)
        o["raised without eventfd"] = h.signalled(efd)
        o["loopback without eventfd"] = dev.set_irqs(NONE | TRIGGER)
        efd2 = h.eventfd()
        o["new trigger"] = dev.set_irqs(EVENTFD | TRIGGER, data=h.i32(efd2))
        o["unmask while asserting"] = (dev.set_irqs(NONE | UNMASK), h.signalled(efd2))
        dev.write32(h.EDU_IRQ_ACK, 2)
        o["unmask after ack"] = (dev.set_irqs(NONE | UNMASK), h.signalled(efd2))
        o["count 0"] = dev.set_irqs(NONE | TRIGGER, count=0)
        o["count 0 again"] = dev.set_irqs(NONE | TRIGGER, count=0)
        o["off: loopback, mask, unmask"] = (
            dev.set_irqs(NONE | TRIGGER),
            dev.set_irqs(NONE | MASK),
            dev.set_irqs(NONE | UNMASK),
        )
        o["off: bad fd, not an eventfd"] = (
            dev.set_irqs(EVENTFD | TRIGGER, data=h.i32(9999)),
            dev.set_irqs(EVENTFD | TRIGGER, data=h.i32(dev.fd)),
        )
        # Enabling with fd -1: INTx on, without an eventfd.
        o["enable -1"] = dev.set_irqs(EVENTFD | TRIGGER, data=h.i32(-1))
        dev.write32(h.EDU_IRQ_RAISE, 4)
        time.sleep(0.05)
        o["enable -1: masked, asserting"] = asserting(dev)
        o["then a trigger"] = dev.set_irqs(EVENTFD | TRIGGER, data=h.i32(efd))
        o["then unmask"] = (dev.set_irqs(NONE | UNMASK), h.signalled(efd))
        dev.write32(h.EDU_IRQ_ACK, 4)
        o["round trip"] = round_trip(dev, efd)
        o["on: bad counts"] = (
            dev.set_irqs(NONE | TRIGGER, count=2),
            dev.set_irqs(NONE | TRIGGER, start=1),
            dev.set_irqs(EVENTFD | TRIGGER, count=0),
        )
        o["disable"] = dev.set_irqs(NONE | TRIGGER, count=0)
        for fd in (efd, efd2):
            os.close(fd)

    assert_same(run_both(topology, kind, scenario), kind)


@KINDS
def test_mask_and_unmask(topology, kind: str) -> None:
    def scenario(dev: h.VfioDevice, o: Obs) -> None:
        efd = h.eventfd()
        dev.set_irqs(EVENTFD | TRIGGER, data=h.i32(efd))
        o["mask none"] = dev.set_irqs(NONE | MASK)
        dev.write32(h.EDU_IRQ_RAISE, 1)
        o["raised while masked"] = h.signalled(efd)
        level(dev, o, "masked by MASK")
        o["mask again"] = dev.set_irqs(NONE | MASK)
        o["unmask none, asserting"] = (dev.set_irqs(NONE | UNMASK), h.signalled(efd))
        dev.write32(h.EDU_IRQ_ACK, 1)
        o["unmask after ack"] = (dev.set_irqs(NONE | UNMASK), h.signalled(efd))
        o["mask bool 0"] = dev.set_irqs(BOOL | MASK, data=b"\0")
        o["not masked"] = round_trip(dev, efd, 2)
        o["mask bool 1"] = dev.set_irqs(BOOL | MASK, data=b"\1")
        dev.write32(h.EDU_IRQ_RAISE, 4)
        o["masked by bool"] = h.signalled(efd)
        o["unmask bool 0"] = (dev.set_irqs(BOOL | UNMASK, data=b"\0"), h.signalled(efd))
        o["unmask bool 1"] = (dev.set_irqs(BOOL | UNMASK, data=b"\1"), h.signalled(efd))
        dev.write32(h.EDU_IRQ_ACK, 4)
        dev.set_irqs(NONE | UNMASK)
        o["mask eventfd"] = dev.set_irqs(EVENTFD | MASK, data=h.i32(efd))
        o["bad start/count"] = (
            dev.set_irqs(NONE | MASK, start=1),
            dev.set_irqs(NONE | UNMASK, count=0),
            dev.set_irqs(NONE | UNMASK, count=2),
        )
        # An unmask eventfd (KVM's resamplefd) used for every interrupt.
        ufd = h.eventfd()
        o["unmask eventfd"] = dev.set_irqs(EVENTFD | UNMASK, data=h.i32(ufd))
        got = 0
        for i in range(20):
            dev.write32(h.EDU_IRQ_RAISE, 1 << (i % 8))
            got += h.signalled(efd)
            dev.write32(h.EDU_IRQ_ACK, 1 << (i % 8))
            os.eventfd_write(ufd, 1)
        o["round trips through the unmask eventfd"] = got
        dev.write32(h.EDU_IRQ_RAISE, 1)
        o["raised"] = h.signalled(efd)
        os.eventfd_write(ufd, 1)  # before the ack: the device still asserts
        o["unmask eventfd while asserting"] = h.signalled(efd)
        dev.write32(h.EDU_IRQ_ACK, 1)
        os.eventfd_write(ufd, 1)
        o["unmask eventfd after ack"] = h.signalled(efd)
        o["unmask eventfd -1"] = dev.set_irqs(EVENTFD | UNMASK, data=h.i32(-1))
        dev.write32(h.EDU_IRQ_RAISE, 1)
        o["raised again"] = h.signalled(efd)
        dev.write32(h.EDU_IRQ_ACK, 1)
        os.eventfd_write(ufd, 1)
        o["unmask eventfd removed: still masked"] = round_trip(dev, efd, 2)
        o["second unmask eventfd, bad fd"] = dev.set_irqs(EVENTFD | UNMASK, data=h.i32(9999))
        o["round trip"] = round_trip(dev, efd, 8)
        for fd in (efd, ufd):
            os.close(fd)

    assert_same(run_both(topology, kind, scenario), kind)


@KINDS
def test_same_eventfd_as_trigger_and_unmask(topology, kind: str) -> None:
    """The lock-up: the trigger is also the unmask eventfd, and the device keeps asserting."""

    def scenario(dev: h.VfioDevice, o: Obs) -> None:
        efd = h.eventfd()
        dev.set_irqs(EVENTFD | TRIGGER, data=h.i32(efd))
        o["unmask eventfd = trigger"] = dev.set_irqs(EVENTFD | UNMASK, data=h.i32(efd))
        dev.write32(h.EDU_IRQ_RAISE, 1)
        # The unmask eventfd consumes its own signals: nothing to count here. The guest
        # must stay responsive while the device asserts (this very code runs meanwhile).
        t0 = time.monotonic()
        time.sleep(0.3)
        o["responsive"] = time.monotonic() - t0 < 2.0
        dev.write32(h.EDU_IRQ_ACK, 1)
        time.sleep(0.1)
        o["unmask eventfd -1"] = dev.set_irqs(EVENTFD | UNMASK, data=h.i32(-1))
        h.signalled(efd, timeout=0.05)
        dev.set_irqs(NONE | UNMASK)
        o["quiet"] = h.signalled(efd)
        o["round trips"] = [round_trip(dev, efd, 1 << i) for i in range(5)]
        os.close(efd)

    assert_same(run_both(topology, kind, scenario), kind)


@KINDS
def test_trigger_swapped_while_interrupts_flow(topology, kind: str) -> None:
    def scenario(dev: h.VfioDevice, o: Obs) -> None:
        efds = [h.eventfd(), h.eventfd()]
        dev.set_irqs(EVENTFD | TRIGGER, data=h.i32(efds[0]))
        stop = threading.Event()
        swaps = [0]
        errors: list[int] = []

        def swapper() -> None:
            while not stop.is_set():
                for e in efds:
                    rc = dev.set_irqs(EVENTFD | TRIGGER, data=h.i32(e))
                    if rc:
                        errors.append(rc)
                    swaps[0] += 1

        t = threading.Thread(target=swapper)
        t.start()
        got = 0
        try:
            for i in range(100):
                got += round_trip_on(dev, efds, 1 << (i % 8))
        finally:
            stop.set()
            t.join()
        o["received of 100"] = got
        o["swapped"] = swaps[0] > 10
        o["swap errors"] = errors
        for fd in efds:
            os.close(fd)

    assert_same(run_both(topology, kind, scenario), kind)


def round_trip_on(dev: h.VfioDevice, efds: list[int], bit: int) -> int:
    dev.write32(h.EDU_IRQ_RAISE, bit)
    n = h.signalled(efds, timeout=2.0)
    dev.write32(h.EDU_IRQ_ACK, bit)
    dev.set_irqs(NONE | UNMASK)
    return n


@KINDS
def test_command_writes(topology, kind: str) -> None:
    """Memory, Bus Master and INTx Disable written while pending and while masked."""

    def scenario(dev: h.VfioDevice, o: Obs) -> None:
        efd = h.eventfd()
        dev.set_irqs(EVENTFD | TRIGGER, data=h.i32(efd))
        cmd = dev.read_command()
        o["command reads"] = cmd & (INTX_DISABLE | MEMORY)
        # Delivered (masked), acked, a second one raised before any unmask.
        dev.write32(h.EDU_IRQ_RAISE, 1)
        o["first"] = h.signalled(efd)
        dev.write32(h.EDU_IRQ_ACK, 1)
        dev.write32(h.EDU_IRQ_RAISE, 2)
        dev.write_command(dev.read_command() | BUS_MASTER)  # every DMA driver's RMW
        o["bus master set while masked"] = h.signalled(efd)
        dev.write_command(dev.read_command() & ~BUS_MASTER)
        o["bus master cleared while masked"] = h.signalled(efd)
        dev.config_write(h.PCI_COMMAND, bytes([dev.read_command() & 0xFF]))  # low byte only
        dev.config_write(h.PCI_COMMAND + 1, bytes([dev.read_command() >> 8]))  # high byte
        dev.config_write(h.PCI_COMMAND, dev.config_read(h.PCI_COMMAND, 4))  # with STATUS
        dev.config_write(0, dev.config_read(0, 16))  # a write spanning the header
        o["other writes while masked"] = h.signalled(efd)
        level(dev, o, "still masked")
        o["command reads while masked"] = dev.read_command() & INTX_DISABLE
        # The user sets INTx Disable: the ioctl unmask is then ignored, as on hardware.
        dev.write_command(dev.read_command() | INTX_DISABLE)
        o["user INTx Disable reads"] = dev.read_command() & INTX_DISABLE
        o["unmask ioctl while disabled"] = (dev.set_irqs(NONE | UNMASK), h.signalled(efd))
        o["loopback while disabled"] = (dev.set_irqs(NONE | TRIGGER), h.signalled(efd))
        level(dev, o, "user disabled")
        dev.write_command(dev.read_command() | BUS_MASTER)
        o["bus master with INTx Disable"] = h.signalled(efd)
        dev.write_command(dev.read_command() & ~INTX_DISABLE)
        o["user clears INTx Disable: pending fires"] = h.signalled(efd)
        dev.write32(h.EDU_IRQ_ACK, 2)
        dev.set_irqs(NONE | UNMASK)
        o["quiet"] = h.signalled(efd)
        # Unmasked and idle: set and clear INTx Disable, Memory off and on.
        dev.write_command(dev.read_command() | INTX_DISABLE)
        dev.write32(h.EDU_IRQ_RAISE, 4)
        o["raised while user-disabled"] = h.signalled(efd)
        level(dev, o, "user disabled, asserting")
        dev.write_command(dev.read_command() & ~INTX_DISABLE)
        o["delivered on clear"] = h.signalled(efd)
        dev.write32(h.EDU_IRQ_ACK, 4)
        dev.set_irqs(NONE | UNMASK)
        dev.write_command(dev.read_command() & ~MEMORY)
        dev.write_command(dev.read_command() | MEMORY)
        o["round trip after memory toggle"] = round_trip(dev, efd, 8)
        # The config-space unmask: a toggle of INTx Disable unmasks an automasked interrupt.
        dev.write32(h.EDU_IRQ_RAISE, 16)
        o["raised"] = h.signalled(efd)
        dev.write32(h.EDU_IRQ_ACK, 16)
        dev.unmask_by_config()
        dev.write32(h.EDU_IRQ_RAISE, 32)
        o["delivered after toggle"] = h.signalled(efd)
        dev.write32(h.EDU_IRQ_ACK, 32)
        dev.unmask_by_config()
        o["quiet at the end"] = h.signalled(efd)
        os.close(efd)

    assert_same(run_both(topology, kind, scenario), kind)


@KINDS
def test_intx_msi_intx(topology, kind: str) -> None:
    def scenario(dev: h.VfioDevice, o: Obs) -> None:
        efd, mfd = h.eventfd(), h.eventfd()
        dev.set_irqs(EVENTFD | TRIGGER, data=h.i32(efd))
        o["intx"] = round_trip(dev, efd)
        o["msi while intx"] = dev.set_irqs(EVENTFD | TRIGGER, index=1, data=h.i32(mfd))
        o["msi-x while intx"] = dev.set_irqs(EVENTFD | TRIGGER, index=2, data=h.i32(mfd))
        o["msi unmask action"] = dev.set_irqs(NONE | UNMASK, index=1)
        o["intx off"] = dev.set_irqs(NONE | TRIGGER, count=0)
        o["msi on"] = dev.set_irqs(EVENTFD | TRIGGER, index=1, data=h.i32(mfd))
        o["intx while msi"] = (
            dev.set_irqs(EVENTFD | TRIGGER, data=h.i32(efd)),
            dev.set_irqs(EVENTFD | TRIGGER, data=h.i32(9999)),
            dev.set_irqs(NONE | TRIGGER, count=0),
            dev.set_irqs(NONE | UNMASK),
        )
        o["off:INTx Disable while msi on"] = bool(
            h.sysfs_config(dev.bdf, h.PCI_COMMAND, 2) & INTX_DISABLE
        )
        dev.write32(h.EDU_IRQ_RAISE, 1)
        o["msi delivered"] = h.signalled(mfd)
        o["intx not"] = h.signalled(efd, timeout=0.05)
        dev.write32(h.EDU_IRQ_ACK, 1)
        o["msi off"] = dev.set_irqs(NONE | TRIGGER, index=1, count=0)
        o["intx again"] = dev.set_irqs(EVENTFD | TRIGGER, data=h.i32(efd))
        o["round trips"] = [round_trip(dev, efd, 1 << i) for i in range(3)]
        for fd in (efd, mfd):
            os.close(fd)

    assert_same(run_both(topology, kind, scenario), kind)


def sharer_calls() -> int:
    return int((SHARER.parent / "calls").read_text())


@pytest.mark.parametrize("how", ["count 0", "close"])
@pytest.mark.parametrize("state", ["delivered", "masked by MASK", "unmasked early"])
def test_teardown_while_the_device_asserts(topology, how: str, state: str) -> None:
    """INTx torn down (or the device closed) while edu_a asserts, then a new handler on
    its line: no storm, no "nobody cared". edu_b, open through vfio-pci with INTx on,
    keeps GSI 20 allocated and is a second handler that would see a storm.

    Closing is vfiokit-pci only, a documented difference: vfio-pci's close restores the
    command register saved at open (INTx Disable clear), and an edu (no reset method) that
    still asserts then storms the line until "nobody cared" disables it (seen in this test
    bed); vfiokit-pci leaves INTx Disable set."""
    edu, keeper = topology.by_name("edu_a"), topology.by_name("edu_b")
    out: dict[str, Obs] = {}
    for driver in DRIVERS if how == "count 0" else ("vfiokit-pci",):
        o: Obs = {}
        log_before = len(h.dmesg().splitlines())
        with h.bound(keeper.address, "vfio-pci"), h.VfioDevice(keeper.address) as kdev:
            kfd = h.eventfd()
            kdev.set_irqs(EVENTFD | TRIGGER, data=h.i32(kfd))
            with h.bound(edu.address, driver):
                dev: h.VfioDevice | None = h.VfioDevice(edu.address)
                assert dev is not None
                try:
                    efd = h.eventfd()
                    dev.set_irqs(EVENTFD | TRIGGER, data=h.i32(efd))
                    if state == "masked by MASK":
                        dev.set_irqs(NONE | MASK)
                    dev.write32(h.EDU_IRQ_RAISE, 1)
                    o["signalled"] = h.signalled(efd)
                    if state == "unmasked early":
                        # unmasked while asserting: masked again, signalled again
                        dev.set_irqs(NONE | UNMASK)
                        o["again"] = h.signalled(efd)
                    if how == "count 0":
                        o["disable"] = dev.set_irqs(NONE | TRIGGER, count=0)
                    else:
                        dev.close()
                        dev = None
                    o["asserting"] = asserting_bdf(edu.address)
                    before = sharer_calls()
                    with sharer(edu.gsi):
                        time.sleep(0.3)
                        o["sharer calls < 5"] = sharer_calls() - before < 5
                    o["keeper signalled"] = h.signalled(kfd, timeout=0.05)
                    os.close(efd)
                finally:
                    if dev is not None:
                        dev.write32(h.EDU_IRQ_ACK, 0xFFFFFFFF)
                        dev.close()
            os.close(kfd)
        if how == "close":  # the edu still asserts: acknowledge it through a new open
            with h.bound(edu.address, driver), h.VfioDevice(edu.address) as d2:
                d2.write32(h.EDU_IRQ_ACK, 0xFFFFFFFF)
        o["kernel log"] = [
            ln for ln in h.dmesg().splitlines()[log_before:] if any(w in ln for w in BAD_LOG)
        ]
        out[driver] = o
    if how == "count 0":
        assert out["vfio-pci"] == out["vfiokit-pci"]
    assert out["vfiokit-pci"]["sharer calls < 5"] and out["vfiokit-pci"]["kernel log"] == []


def asserting_bdf(bdf: str) -> bool:
    return bool(h.sysfs_config(bdf, 6, 2) & STATUS_INTX)


@KINDS
def test_two_threads_hammer_unmask_and_config(topology, kind: str) -> None:
    def scenario(dev: h.VfioDevice, o: Obs) -> None:
        efd = h.eventfd()
        dev.set_irqs(EVENTFD | TRIGGER, data=h.i32(efd))
        stop = threading.Event()
        errors: list[int] = []

        def unmasker() -> None:
            while not stop.is_set():
                if rc := dev.set_irqs(NONE | UNMASK):
                    errors.append(rc)

        def configurer() -> None:
            while not stop.is_set():
                dev.write_command(dev.read_command() ^ BUS_MASTER)

        threads = [threading.Thread(target=f) for f in (unmasker, configurer)]
        for t in threads:
            t.start()
        try:
            got = 0
            for i in range(100):
                dev.write32(h.EDU_IRQ_RAISE, 1 << (i % 8))
                got += 1 if h.signalled(efd, timeout=2.0) else 0
                dev.write32(h.EDU_IRQ_ACK, 1 << (i % 8))
        finally:
            stop.set()
            for t in threads:
                t.join()
        o["delivered of 100"] = got
        o["errors"] = errors
        dev.set_irqs(NONE | UNMASK)
        h.signalled(efd, timeout=0.05)
        o["quiet"] = h.signalled(efd)
        o["round trip"] = round_trip(dev, efd)
        os.close(efd)

    assert_same(run_both(topology, kind, scenario), kind)


def test_reset_while_command_writes_keep_a_sharer_served(topology) -> None:
    """A reset loop in one thread, COMMAND writes in another, on the device under test; a
    second device on the same line (edu_b through vfio-pci) must keep getting its
    interrupts meanwhile. vfiokit-pci used to disable the line across a config write, which
    sleeps on memory_lock while the reset holds it: with resets back to back the sharer
    then starves. The sharer's served rate is compared with stock vfio-pci's.

    Under multi-threaded TCG the sharer's interrupt was sometimes lost, with either driver;
    the test bed runs its vCPUs round-robin since, and no loss is allowed (docs/testbed.md,
    "TCG threads")."""
    dut, other = topology.by_name("edu_reset"), topology.by_name("edu_b")
    assert dut.gsi == other.gsi
    # Each driver twice, in the order stock, ours, ours, stock, and the rates compared by
    # their best run: scripts/test builds the next kernel while these run, and a ratio of
    # two single runs measured one after the other took that load for starvation once
    # (0.41x, the build's last minutes over the vfiokit-pci run; 1.07x-1.09x unloaded).
    runs: dict[str, list[Obs]] = {d: [] for d in DRIVERS}
    for driver in (*DRIVERS, *reversed(DRIVERS)):
        runs[driver].append(reset_with_writes(dut.address, other.address, driver))
    print("reset + COMMAND writes:", runs)
    for o in runs["vfio-pci"] + runs["vfiokit-pci"]:
        assert o["errors"] == [] and o["resets"] >= 10, o
        assert o["lost"] == 0, o
        assert o["recovered of 5"] == 5, o
        assert o["after: INTx Disable, round trip"] == (False, True), o
    best = {d: max(o["peer per s"] for o in runs[d]) for d in DRIVERS}
    assert best["vfiokit-pci"] >= 0.5 * best["vfio-pci"], runs


def reset_with_writes(bdf: str, peer_bdf: str, driver: str) -> Obs:
    import fcntl

    with (
        h.bound(bdf, driver),
        h.VfioDevice(bdf) as dev,
        h.bound(peer_bdf, "vfio-pci"),
        h.VfioDevice(peer_bdf) as peer,
    ):
        assert "bus" in (h.PCI / "devices" / bdf / "reset_method").read_text()
        efd, pfd = h.eventfd(), h.eventfd()
        assert dev.set_irqs(EVENTFD | TRIGGER, data=h.i32(efd)) == 0
        assert peer.set_irqs(EVENTFD | TRIGGER, data=h.i32(pfd)) == 0
        stop = threading.Event()
        resets: list[float] = []
        errors: list[object] = []

        def resetter() -> None:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    fcntl.ioctl(dev.fd, 0x3B6F)  # VFIO_DEVICE_RESET
                except OSError as exc:
                    errors.append(exc.errno)
                resets.append(time.monotonic() - t0)

        def writer() -> None:
            while not stop.is_set():
                try:
                    dev.write_command(dev.read_command() ^ BUS_MASTER)
                except OSError as exc:
                    errors.append(exc.errno)

        threads = [threading.Thread(target=f) for f in (resetter, writer)]
        for t in threads:
            t.start()
        gaps = []
        lost = 0
        try:
            # 3 s of round trips; a lost interrupt's 5 s wait does not count against them,
            # so a second loss is seen. The attempt cap bounds the loop if the clock stalls.
            end = time.monotonic() + 3.0
            for _ in range(20000):
                if time.monotonic() >= end or lost > 2:
                    break
                t0 = time.monotonic()
                peer.write32(h.EDU_IRQ_RAISE, 1)
                served = h.signalled(pfd, timeout=5.0, settle=0)
                peer.write32(h.EDU_IRQ_ACK, 1)
                peer.set_irqs(NONE | UNMASK)
                if served:
                    gaps.append(time.monotonic() - t0)
                else:
                    lost += 1
                    end += 5.0
        finally:
            stop.set()
            for t in threads:
                t.join()
        # Whatever was lost, the sharer's line must work once the storm is over.
        recovered = sum(round_trip_on(peer, [pfd], 1) > 0 for _ in range(5))
        # and the device under test, reset hundreds of times under COMMAND writes, ends
        # with INTx Disable clear (unmasked) and its interrupt working
        after = (
            bool(h.sysfs_config(bdf, h.PCI_COMMAND, 2) & INTX_DISABLE),
            round_trip_on(dev, [efd], 1) > 0,
        )
        assert dev.set_irqs(NONE | TRIGGER, count=0) == 0
        for fd in (efd, pfd):
            os.close(fd)
    return {
        "errors": errors,
        "resets": len(resets),
        "reset ms (median)": round(sorted(resets)[len(resets) // 2] * 1e3, 1),
        "peer round trips": len(gaps),
        "peer max ms": round(max(gaps, default=0) * 1e3, 1),
        # served round trips per second of the time they took: the rate a starved
        # sharer loses, independent of a lost interrupt's 5 s wait
        "peer per s": round(len(gaps) / sum(gaps), 1) if gaps else 0.0,
        "lost": lost,
        "recovered of 5": recovered,
        "after: INTx Disable, round trip": after,
    }


VFIO_DEVICE_RESET = 0x3B6F


def reset_ms(dev: h.VfioDevice) -> float:
    """How long VFIO_DEVICE_RESET takes on this device: the fastest of three."""
    import fcntl

    times = []
    for _ in range(3):
        t0 = time.monotonic()
        fcntl.ioctl(dev.fd, VFIO_DEVICE_RESET)
        times.append(time.monotonic() - t0)
    return min(times) * 1e3


def during_reset(dev: h.VfioDevice, op: Callable[[], object], delay: float) -> bool:
    """Run `op` while VFIO_DEVICE_RESET runs in another thread, `delay` s after the reset
    started: after the PCI core saved the config space, before it restores it. True if
    `op` returned before the reset did (else the run proves nothing)."""
    import fcntl

    done = threading.Event()
    errors: list[int | None] = []

    def reset() -> None:
        try:
            fcntl.ioctl(dev.fd, VFIO_DEVICE_RESET)
        except OSError as exc:
            errors.append(exc.errno)
        done.set()

    t = threading.Thread(target=reset)
    t.start()
    time.sleep(delay)
    op()
    inside = not done.is_set()
    t.join()
    assert errors == []
    return inside


def test_reset_keeps_intx_disable_as_the_mask_state_says(topology) -> None:
    """A reset restores the command register the PCI core saved when it began: a MASK or
    UNMASK that wrote INTx Disable while the reset ran is undone, and the device is then
    unmasked while user space was told it is masked (a storm on a shared line), or masked
    while it was told it is unmasked (a lost interrupt). Stock vfio-pci has that race (its
    mask and unmask do not wait for memory_lock), so it is the one place where the oracle is
    not copied: vfiokit-pci puts the bit back after every reset (its .reset_done). Stock is
    run too, to show the race is real in this test bed; vfiokit-pci must show none, also
    for INTx turned off and on while the reset runs."""
    dut = topology.by_name("edu_reset")
    # Each driver is raced until enough operations landed inside a reset (a thread's start
    # and a reset's length vary under TCG), stock until it also showed the race.
    seen = {
        "vfio-pci": reset_race(dut.address, "vfio-pci", min_inside=4, until_wrong=True),
        "vfiokit-pci": reset_race(dut.address, "vfiokit-pci", min_inside=12),
    }
    print("INTx Disable after a reset:", seen)
    stock, ours = seen["vfio-pci"], seen["vfiokit-pci"]
    assert stock["inside"] >= 4 and ours["inside"] >= 12, seen
    assert stock["wrong"], f"the race did not show on stock vfio-pci: {seen}"
    assert ours["wrong"] == [] and ours["round trip"] and stock["round trip"], seen


def intx_ops(driver: str, efd: int) -> list[tuple[str, int, int, bytes, bool]]:
    """The operations that write INTx Disable, as (name, SET_IRQS flags, count, data,
    INTx Disable wanted after it): mask and unmask, and for vfiokit-pci INTx off and on
    (INTx off keeps INTx Disable set there, docs/vfiokit-pci.md; stock lets it follow the
    user's virtual bit)."""
    ops = [("mask", NONE | MASK, 1, b"", True), ("unmask", NONE | UNMASK, 1, b"", False)]
    if driver == "vfiokit-pci":
        ops += [
            ("off", NONE | TRIGGER, 0, b"", True),
            ("on", EVENTFD | TRIGGER, 1, h.i32(efd), False),
        ]
    return ops


# where in a reset an operation is started, as fractions of the reset's length
RESET_FRACTIONS = (0.33, 0.2, 0.5)


def reset_race(
    bdf: str, driver: str, *, min_inside: int, until_wrong: bool = False, max_rounds: int = 16
) -> Obs:
    """Each operation while a reset runs, round after round until `min_inside` of them
    landed inside a reset (and, with `until_wrong`, one came out wrong), at most
    `max_rounds` rounds; "wrong" lists those after which the device's real INTx Disable is
    not what the operation made it."""
    with h.bound(bdf, driver), h.VfioDevice(bdf) as dev:
        assert "bus" in (h.PCI / "devices" / bdf / "reset_method").read_text()
        length = reset_ms(dev) / 1e3
        efd = h.eventfd()
        assert dev.set_irqs(EVENTFD | TRIGGER, data=h.i32(efd)) == 0
        ops = intx_ops(driver, efd)
        o: Obs = {"reset ms": round(length * 1e3, 1), "rounds": 0, "inside": 0, "wrong": []}
        for n in range(max_rounds):
            if o["inside"] >= min_inside and (o["wrong"] or not until_wrong):
                break
            o["rounds"] = n + 1
            delay = length * RESET_FRACTIONS[n % len(RESET_FRACTIONS)]
            for name, flags, count, data, want in ops:
                if name == "unmask":
                    dev.set_irqs(NONE | MASK)  # so that the reset saves it masked

                def op(flags: int = flags, count: int = count, data: bytes = data) -> None:
                    assert dev.set_irqs(flags, count=count, data=data) == 0

                if during_reset(dev, op, delay):
                    o["inside"] += 1
                    if bool(h.sysfs_config(bdf, h.PCI_COMMAND, 2) & INTX_DISABLE) != want:
                        o["wrong"].append(name)
        # and after a mask and an unmask (which put stock's bit right again) the
        # interrupt works
        dev.set_irqs(NONE | MASK)
        dev.set_irqs(NONE | UNMASK)
        o["round trip"] = round_trip_on(dev, [efd], 1) > 0
        assert dev.set_irqs(NONE | TRIGGER, count=0) == 0
        os.close(efd)
    return o


PM_CAP_ID, PM_CTRL, PM_STATE_MASK, PM_NO_SOFT_RESET = 0x01, 4, 0x3, 0x8
D0, D3HOT = 0, 3


def pm_capability(bdf: str) -> int:
    """The offset of the device's power-management capability, from sysfs config."""
    raw = (h.PCI / "devices" / bdf / "config").read_bytes()
    pos, seen = raw[0x34] & ~3, set()
    while pos and pos not in seen:
        seen.add(pos)
        if raw[pos] == PM_CAP_ID:
            return pos
        pos = raw[pos + 1] & ~3
    raise AssertionError(f"{bdf} has no power-management capability")


def test_power_state_round_trip_keeps_intx_disable_as_the_mask_state_says(topology) -> None:
    """D3hot, then D0, written into PM_CTRL through the config region: on a device without
    No_Soft_Reset the core restores the config space it saved on entering D3hot, so a MASK
    or UNMASK (or INTx off or on) between the two writes is undone in the device's real
    INTx Disable, as by a reset. Stock vfio-pci has that flaw (deterministically: no race
    needed), and is run to show the test bed reaches it; vfiokit-pci puts the bit back
    after the PM_CTRL write, as after a reset."""
    dut = topology.by_name("pm_dev")
    seen = {driver: pm_round_trip(dut.address, driver) for driver in DRIVERS}
    print("INTx Disable after D3hot -> D0:", seen)
    stock, ours = seen["vfio-pci"], seen["vfiokit-pci"]
    assert stock["wrong"] == ["mask", "unmask"], f"stock vfio-pci did not show the restore: {seen}"
    assert ours["wrong"] == [] and len(ours["ops"]) == 4, seen
    assert stock["kernel log"] == ours["kernel log"] == [], seen


def pm_round_trip(bdf: str, driver: str) -> Obs:
    """Each operation between a D3hot and a D0 write; "wrong" lists those after which
    the device's real INTx Disable is not what the operation made it."""
    pm = pm_capability(bdf)
    log_before = len(h.dmesg().splitlines())
    with h.bound(bdf, driver), h.VfioDevice(bdf) as dev:

        def power(state: int) -> None:
            ctrl = int.from_bytes(dev.config_read(pm + PM_CTRL, 2), "little")
            dev.config_write(pm + PM_CTRL, ((ctrl & ~PM_STATE_MASK) | state).to_bytes(2, "little"))
            real = h.sysfs_config(bdf, pm + PM_CTRL, 2)
            assert real & PM_STATE_MASK == state, f"PM_CTRL {real:#x} after writing D{state}"

        ctrl = h.sysfs_config(bdf, pm + PM_CTRL, 2)
        assert not ctrl & PM_NO_SOFT_RESET, f"{bdf} has No_Soft_Reset: nothing is restored"
        efd = h.eventfd()
        assert dev.set_irqs(EVENTFD | TRIGGER, data=h.i32(efd)) == 0
        ops = intx_ops(driver, efd)
        o: Obs = {"ops": [], "wrong": []}
        for name, flags, count, data, want in ops:
            if name == "unmask":
                # so that D3hot entry saves it masked: stock's MASK does nothing while
                # its own view is still masked from the step before (the restore undid
                # only the device's bit), so unmask first
                assert dev.set_irqs(NONE | UNMASK) == 0 and dev.set_irqs(NONE | MASK) == 0
            # the state D3hot entry saves must differ from what the operation makes it,
            # or the restore could not show
            before = bool(h.sysfs_config(bdf, h.PCI_COMMAND, 2) & INTX_DISABLE)
            assert before != want, f"{driver} {name}: INTx Disable already {before}"
            power(D3HOT)
            assert dev.set_irqs(flags, count=count, data=data) == 0
            power(D0)
            o["ops"].append(name)
            if bool(h.sysfs_config(bdf, h.PCI_COMMAND, 2) & INTX_DISABLE) != want:
                o["wrong"].append(name)
        assert dev.set_irqs(NONE | TRIGGER, count=0) == 0
        os.close(efd)
    new_log = h.dmesg().splitlines()[log_before:]
    o["kernel log"] = [ln for ln in new_log if any(w in ln for w in BAD_LOG)]
    return o


def test_close_and_unmask_errno_parity(topology) -> None:
    """UNMASK and MASK on a device whose INTx was never enabled, and after MSI: errnos."""

    def scenario(dev: h.VfioDevice, o: Obs) -> None:
        o["never enabled"] = (
            dev.set_irqs(NONE | UNMASK),
            dev.set_irqs(NONE | MASK),
            dev.set_irqs(EVENTFD | UNMASK, data=h.i32(-1)),
            dev.set_irqs(NONE | TRIGGER),
            dev.set_irqs(NONE | TRIGGER, count=0),
        )
        o["flags"] = (
            dev.set_irqs(NONE | BOOL | UNMASK),
            dev.set_irqs(NONE | UNMASK | MASK),
            dev.set_irqs(NONE),
            dev.set_irqs(0x40 | NONE | UNMASK),
        )
        o["indexes"] = tuple(dev.set_irqs(NONE | TRIGGER, index=i, count=0) for i in range(6))
        assert errno.EINVAL in o["never enabled"]

    assert_same(run_both(topology, "alone", scenario), "alone")
