"""vfiokit-pci on a device that cannot mask INTx: vfio-pci's exclusive-line fallback.

QEMU's edu does support INTx masking, so this boot forces the fallback the way users force it
on stock VFIO: vfio_pci.nointxmask=1 on the kernel command line (scripts/test runs this file
in a boot of its own).
"""

from __future__ import annotations

import errno
import subprocess

import pytest

import helpers as h
from test_adaptive import EXCLUSIVE, nic_iface, nointxmask, opened, round_trip, set_link

pytestmark = [
    pytest.mark.skipif(
        not nointxmask(), reason="needs a boot with vfio_pci.nointxmask=1 (scripts/test runs one)"
    ),
    pytest.mark.usefixtures("vfiokit_modules"),
]


@pytest.mark.parametrize("unmask", ["ioctl", "config"])
def test_exclusive_line_round_trips(topology, unmask: str) -> None:
    edu = topology.by_name("edu_alone")
    with opened(edu.address) as dev:
        st = dev.intx_state()
        assert (st["mode"], st["irq"]) == (EXCLUSIVE, edu.gsi)
        assert (h.PCI / "devices" / edu.address / "vfiokit" / "intx_mode").read_text() == (
            "exclusive\n"
        )
        for i in range(20):
            st = round_trip(dev, 1 << (i % 8), unmask)
            assert (st["line_held"], st["dev_masked"]) == (1, 0)
        assert dev.wait_irq(0.1) == 0
        assert dev.intx_state()["line_count"] == 20


@pytest.mark.parametrize("driver", ["vfiokit-pci", "vfio-pci"])
def test_exclusive_on_a_shared_line_is_ebusy(topology, driver: str) -> None:
    """What doctor explains: without INTx masking a busy shared line cannot be had."""
    edu = topology.by_name("edu_a")
    iface = nic_iface(topology)
    set_link(iface, True)
    try:
        with h.bound(edu.address, driver), h.VfioDevice(edu.address) as dev:
            with pytest.raises(OSError) as info:
                dev.enable_intx()
            assert info.value.errno == errno.EBUSY
    finally:
        set_link(iface, False)
    log = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
    assert f"genirq: Flags mismatch irq {edu.gsi}" in log


def test_exclusive_same_eventfd_as_trigger_and_unmask(topology) -> None:
    """The trigger as unmask eventfd on an exclusive line while the device asserts: the
    release is left to the eventfd's worker, so the guest stays responsive. (vfio-pci's own
    exclusive INTx re-enables the line from inside its handler there; by reading the code
    that loops in hard-irq context, so it is not run against it here.)"""
    import time

    edu = topology.by_name("edu_alone")
    with opened(edu.address) as dev:
        assert dev.efd is not None
        dev.set_irqs(h.IRQ_SET_DATA_EVENTFD | h.IRQ_SET_ACTION_UNMASK, data=h.i32(dev.efd))
        dev.write32(h.EDU_IRQ_RAISE, 1)
        t0 = time.monotonic()
        time.sleep(0.3)
        assert time.monotonic() - t0 < 2.0
        dev.write32(h.EDU_IRQ_ACK, 1)
        time.sleep(0.1)
        assert dev.set_irqs(h.IRQ_SET_DATA_EVENTFD | h.IRQ_SET_ACTION_UNMASK, data=h.i32(-1)) == 0
        h.signalled(dev.efd, timeout=0.05)
        dev.unmask_intx()
        for i in range(5):
            assert round_trip(dev, 1 << i)["line_held"] == 1
        assert dev.wait_irq(0.1) == 0
