"""Hot reset through the API on both backends, on edu_reset (QEMU edu behind a
pcie-root-port, bus 1 in the guest): the scope as the kernel reports it, a reset seen to
happen, and the kernel's refusals named for the ioctl made, with nothing reset by them.

What a reset provably clears, and why it is read from PCI_STATUS:

- QEMU 7.2's edu (hw/misc/edu.c) has no reset handler at all: its registers (liveness,
  factorial, irq_status, DMA) survive any reset, so they cannot show one.
- QEMU's PCI core does reset the device on a secondary bus reset (pci_do_device_reset():
  COMMAND, STATUS, BARs, Cache Line Size, MSI), but Linux's pci_reset_bus() saves the
  config header before the reset and restores it after (pci_dev_save_and_disable(),
  pci_dev_restore()): COMMAND and the BARs come back as they were, so they cannot show
  one either.
- pci_do_device_reset() first deasserts INTx (pci_device_deassert_intx()), and QEMU keeps
  PCI_STATUS's Interrupt Status bit (0x08) equal to the device's INTx state
  (pci_update_irq_status()), whatever INTx Disable says. The bit is read-only, so the
  kernel's restore cannot set it again, and the edu only asserts INTx on a raise: after a
  reset it stays 0 although the edu's irq_status register still says raised. Its
  power-on value is 0; vfio-pci passes it through (only Capabilities List is virtualized
  in PCI_STATUS).

So: INTx Disable set (a storm on GSI 20, shared with edu_a, edu_b and the e1000, is not
possible then), the edu raises without an acknowledgement, Interrupt Status reads 1
(twice: it holds), the hot reset, and it reads 0.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import pytest

import helpers as h
from test_adaptive import nointxmask
from vfiokit import NotFound
from vfiokit.drivers.edu import IRQ_ACK, IRQ_STATUS, Edu
from vfiokit.vfio import VfioDevice, VfioError, open_device

pytestmark = [
    pytest.mark.skipif(nointxmask(), reason="this boot forces vfio_pci.nointxmask=1"),
]

BACKENDS = ["legacy", "iommufd"]
PCI_COMMAND, PCI_STATUS = 0x04, 0x06
INTX_DISABLE = 0x400
STATUS_INTERRUPT = 0x08


@pytest.fixture(params=BACKENDS)
def reset_edu(request, topology) -> Iterator[tuple[VfioDevice, Edu]]:
    dev = topology.by_name("edu_reset")
    assert dev.address.split(":")[1] == "01", dev.address  # behind the root port
    fds = len(os.listdir("/proc/self/fd"))
    with h.bound(dev.address, "vfio-pci"), open_device(dev.address, backend=request.param) as vd:
        assert vd.backend == request.param
        with Edu(vd, irq=False) as edu:  # its BAR mapping would keep the device open
            yield vd, edu
            edu.write(IRQ_ACK, edu.read(IRQ_STATUS))
    assert len(os.listdir("/proc/self/fd")) == fds, "file descriptors leaked"


def interrupt_status(vd: VfioDevice) -> bool:
    """PCI_STATUS Interrupt Status, read through the API; sysfs must agree."""
    through_vfio = bool(vd.device.config.read(PCI_STATUS, 2) & STATUS_INTERRUPT)
    real = bool(h.sysfs_config(vd.address, PCI_STATUS, 2) & STATUS_INTERRUPT)
    assert through_vfio == real, (through_vfio, real)
    return through_vfio


def assert_interrupt_pending(vd: VfioDevice, edu: Edu) -> None:
    """Make the edu assert INTx with INTx Disable set: Interrupt Status reads 1."""
    cmd = vd.device.config.read(PCI_COMMAND, 2)
    vd.device.config.write(PCI_COMMAND, cmd | INTX_DISABLE, 2)
    # vfio-pci makes the real bit follow (pci_2_3): checked before anything is raised
    assert h.sysfs_config(vd.address, PCI_COMMAND, 2) & INTX_DISABLE
    assert not interrupt_status(vd), "Interrupt Status set before the raise"
    edu.raise_irq(0x1)
    assert edu.read(IRQ_STATUS) & 0x1
    assert interrupt_status(vd) and interrupt_status(vd), "the raise did not show"


def test_scope_is_the_edu_alone_and_owned(reset_edu) -> None:
    vd, _ = reset_edu
    scope = vd.device.hot_reset_scope()
    assert scope.addresses == [vd.address]
    (me,) = scope.devices
    if vd.backend == "legacy":
        assert not scope.by_devid and scope.all_owned is None
        assert me.group == int(h.group_of(vd.address)) and me.devid is None
    else:  # by devid, and owned: the flags are read, not taken for a group
        assert scope.by_devid and scope.all_owned is True
        assert me.owned is True and me.group is None and me.devid not in (None, 0xFFFFFFFF)
    plan = vd.hot_reset_plan()
    assert plan.allowed and plan.not_owned == []
    assert len(plan.group_fds) == (1 if vd.backend == "legacy" else 0)


def test_hot_reset_clears_what_a_reset_clears(reset_edu) -> None:
    vd, edu = reset_edu
    assert_interrupt_pending(vd, edu)
    plan = vd.hot_reset()  # any error fails the test
    assert plan.scope.addresses == [vd.address]
    assert not interrupt_status(vd), "Interrupt Status survived the hot reset"
    # the kernel restored the config header it saved: the device works on
    assert h.sysfs_config(vd.address, PCI_COMMAND, 2) & INTX_DISABLE
    assert edu.alive()
    print("edu irq_status after the reset (edu has no reset handler):", edu.read(IRQ_STATUS))


def test_kernel_refusals_are_named_and_reset_nothing(reset_edu) -> None:
    """The low-level call with the wrong arguments for the backend: the kernel refuses
    (EINVAL), the error names VFIO_DEVICE_PCI_HOT_RESET (not its twin
    VFIO_IOMMU_MAP_DMA), and the device was not reset: Interrupt Status still reads 1.
    (A device of the scope not owned by the context cannot be made here: bus 1 holds the
    edu alone; tests/unit/test_vfio_hot_reset.py covers that refusal.)"""
    vd, edu = reset_edu
    assert_interrupt_pending(vd, edu)
    assert vd.context.dma is not None
    other = vd.context.dma.fd  # a container or an iommufd: no group fd either way
    # legacy: no group fd (what the old VM test passed), or a non-group fd; iommufd: a
    # cdev-opened device takes a zero-length array only (the count is refused first)
    attempts = [[], [other]] if vd.backend == "legacy" else [[other]]
    for fds in attempts:
        with pytest.raises(VfioError) as err:
            vd.device.hot_reset(fds)
        assert err.value.errno == errno.EINVAL, (fds, err.value)
        assert err.value.op == "VFIO_DEVICE_PCI_HOT_RESET", err.value
        assert interrupt_status(vd), f"a refused reset ({fds}) reset the device"
    vd.hot_reset()
    assert not interrupt_status(vd)


def test_root_bus_device_has_no_hot_reset(topology) -> None:
    """edu_alone sits on q35's root bus: neither slot nor bus reset, ENODEV, named."""
    dev = topology.by_name("edu_alone")
    for backend in BACKENDS:
        with h.bound(dev.address, "vfio-pci"), open_device(dev.address, backend=backend) as vd:
            with pytest.raises(NotFound) as err:
                vd.device.hot_reset_scope()
            assert isinstance(err.value, VfioError) and err.value.errno == errno.ENODEV
            assert err.value.op == "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO"
            with pytest.raises(NotFound):
                vd.hot_reset()
