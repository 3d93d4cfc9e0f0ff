"""vfiokit.vfio on the edu devices: both uAPIs (legacy container, iommufd + cdev), on stock
vfio-pci and on vfiokit-pci, exclusive and shared lines, DMA byte for byte."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import pytest

import helpers as h
from test_adaptive import SHARER, nointxmask
from vfiokit import InvalidArgument, NotFound
from vfiokit.drivers.edu import Edu, EduError
from vfiokit.vfio import ClosedError, IommuContext, VfioError, open_device

pytestmark = [
    pytest.mark.skipif(nointxmask(), reason="this boot forces vfio_pci.nointxmask=1"),
    pytest.mark.usefixtures("vfiokit_modules"),
]

COMBOS = [(b, d) for b in ("legacy", "iommufd") for d in ("vfio-pci", "vfiokit-pci")]


@pytest.fixture(params=COMBOS, ids=[f"{b}-{d}" for b, d in COMBOS])
def edu(request, topology) -> Iterator[Edu]:
    backend, driver = request.param
    dev = topology.by_name("edu_alone")
    fds = len(os.listdir("/proc/self/fd"))
    with (
        h.bound(dev.address, driver),
        open_device(dev.address, backend=backend, dma_limit=Edu.DMA_LIMIT) as vd,
    ):
        assert vd.backend == backend
        e = Edu(vd)
        yield e
        e.close()
    assert len(os.listdir("/proc/self/fd")) == fds, "file descriptors leaked"


def test_identify_and_liveness(edu: Edu) -> None:
    assert edu.identify() == (1, 0)
    assert edu.alive() and edu.alive(0x12345678)
    bar = edu.vd.device.bar(0)
    assert bar.read(0) == 0x010000ED  # pread path agrees with the mmap path
    regs = bar.mmap_array()  # ctypes view of the same registers
    assert regs[0] == 0x010000ED
    del regs
    bar.write(0x04, 0xFFFF0000)
    assert edu.read(0x04) == 0x0000FFFF


def test_factorial_with_interrupt(edu: Edu) -> None:
    assert edu.factorial(10) == 3628800
    assert edu.factorial(12) == 479001600


def test_interrupt_round_trips_and_modes(edu: Edu) -> None:
    for i in range(30):
        edu.raise_irq(1 << (i % 8))
        assert edu.wait_irq() == 1 << (i % 8)
    assert edu.intx is not None and edu.intx.wait(0.05) == 0
    counts = edu.intx.counts
    if edu.intx.vfiokit:
        assert counts == {"line": 30, "device": 0, "kernel": 0}
        st = edu.intx.state()
        assert st is not None and st.line_count == 30 and not st.masked
    else:
        assert counts == {"line": 0, "device": 0, "kernel": 30}


def test_dma_both_ways_byte_for_byte(edu: Edu) -> None:
    data = os.urandom(4095)
    edu.dma_to_device(data)
    assert edu.dma_from_device(4095) == data
    assert edu.dma_roundtrip(b"vfiokit") == b"vfiokit"
    part = edu.dma_from_device(100, offset=50)
    assert part == data[50:150]


def test_bad_input(edu: Edu) -> None:
    bar = edu.vd.device.bar(0)
    with pytest.raises(InvalidArgument):
        bar.read(bar.size, 4)
    with pytest.raises(InvalidArgument):
        bar.read(2, 4)
    with pytest.raises(InvalidArgument):
        bar.write(0x04, 1 << 40, 4)
    with pytest.raises(InvalidArgument):
        edu.vd.device.region(99)
    with pytest.raises(EduError):
        edu.dma_to_device(bytes(4096))  # would end on the last byte: refused, VM survives


def test_adaptive_modes_follow_the_sharer(topology) -> None:
    dev = topology.by_name("edu_alone")
    with h.bound(dev.address, "vfiokit-pci"), open_device(dev.address) as vd:
        edu = Edu(vd)
        assert edu.intx is not None and edu.intx.vfiokit
        edu.raise_irq(1)
        edu.wait_irq()
        SHARER.write_text(str(dev.gsi))
        try:
            for _ in range(5):
                edu.raise_irq(2)
                edu.wait_irq()
        finally:
            SHARER.write_text("0")
        edu.raise_irq(4)
        edu.wait_irq()
        assert edu.intx.counts == {"line": 2, "device": 5, "kernel": 0}
        edu.close()


def test_msi(topology) -> None:
    dev = topology.by_name("edu_a")
    with h.bound(dev.address, "vfio-pci"), open_device(dev.address) as vd:
        edu = Edu(vd, irq=False)
        vec = vd.msi(1)
        for _ in range(5):
            edu.raise_irq(1)
            assert vec.wait(2) == [0]
            edu.write(0x64, 1)
        edu.close()


def test_use_after_close_and_wrong_address(topology) -> None:
    dev = topology.by_name("edu_alone")
    with h.bound(dev.address, "vfio-pci"):
        vd = open_device(dev.address)
        region = vd.device.bar(0)
        vd.close()
        with pytest.raises(ClosedError):
            region.read(0)
        vd.close()  # twice is fine
    with pytest.raises(NotFound):
        open_device("0000:00:1e.0")


def test_no_reset_method_is_unsupported(topology) -> None:
    """edu_alone has no reset method (no FLR, no PM reset, the root bus has no bus reset):
    VFIO says so and reset() refuses with Unsupported. Hot reset, on edu_reset behind a
    root port: tests/vm/test_hot_reset.py."""
    from vfiokit import Unsupported

    dev = topology.by_name("edu_alone")
    with h.bound(dev.address, "vfio-pci"), open_device(dev.address, backend="legacy") as vd:
        assert not vd.device.can_reset
        with pytest.raises(Unsupported):
            vd.device.reset()


def test_dma_beyond_memlock_as_a_user(topology, tmp_path) -> None:
    """An unprivileged user (no CAP_IPC_LOCK) hits RLIMIT_MEMLOCK: a clear ENOMEM + remedy."""
    import subprocess
    import sys

    dev = topology.by_name("edu_alone")
    with h.bound(dev.address, "vfio-pci"):
        group = h.group_of(dev.address)
        for node in ("/dev/vfio/vfio", f"/dev/vfio/{group}"):
            os.chown(node, 65534, 65534)  # the guest's devtmpfs only
        os.chmod("/root", 0o711)  # let "nobody" reach the interpreter (guest overlay only)
        script = (
            "import errno, resource\n"
            "from vfiokit.vfio import open_device, VfioError\n"
            f"with open_device('{dev.address}', backend='legacy') as vd:\n"
            "    vd.dma_buffer(64 << 10)\n"
            "    try:\n"
            "        vd.dma_buffer(4 << 20)\n"
            "    except VfioError as exc:\n"
            "        assert exc.errno == errno.ENOMEM, exc\n"
            "        print('REMEDY', exc.remedy)\n"
        )
        res = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "prlimit",
             "--memlock=1048576", sys.executable, "-c", script],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert "RLIMIT_MEMLOCK" in res.stdout


@pytest.mark.parametrize("backend", ["legacy", "iommufd"])
def test_two_devices_one_dma_space(topology, backend: str) -> None:
    """edu A and edu B (two groups) in one IommuContext: A copies a buffer into its own
    memory and back out to a second IOVA, B copies that second IOVA through itself to a
    third; the bytes B delivers are the ones written, so both see one DMA space."""
    a_dev, b_dev = topology.by_name("edu_a"), topology.by_name("edu_b")
    assert h.group_of(a_dev.address) != h.group_of(b_dev.address)
    fds = len(os.listdir("/proc/self/fd"))
    data = os.urandom(3000)
    with (
        h.bound(a_dev.address, "vfio-pci"),
        h.bound(b_dev.address, "vfiokit-pci"),
        IommuContext(backend=backend, dma_limit=Edu.DMA_LIMIT) as ctx,
    ):
        a, b = Edu(ctx.open_device(a_dev.address)), Edu(ctx.open_device(b_dev.address))
        src, mid, dst = (ctx.dma_buffer(4096) for _ in range(3))
        src.view[: len(data)] = data
        a.dma_in(src.iova, len(data))
        a.dma_out(mid.iova, len(data))
        b.dma_in(mid.iova, len(data), offset=100)
        b.dma_out(dst.iova, len(data), offset=100)
        assert bytes(dst.view[: len(data)]) == data
        assert bytes(mid.view[: len(data)]) == data
        # Closing A leaves B and the buffers working.
        a.close()
        a.vd.close()
        b.dma_in(src.iova, 16)
        b.dma_out(dst.iova + 2048, 16)
        assert bytes(dst.view[2048:2064]) == data[:16]
        b.close()
    assert len(os.listdir("/proc/self/fd")) == fds, "file descriptors leaked"


@pytest.mark.parametrize("backend", ["legacy", "iommufd"])
def test_both_functions_of_a_group(topology, backend: str) -> None:
    """The two functions of the e1000 at 11.0 share an IOMMU group: opened alone, the second
    is refused (the group node is taken: EBUSY; the group's iommufd ownership: EPERM); in one
    IommuContext both open, and both are reset through their own fds."""
    f0, f1 = topology.by_name("nic_f0").address, topology.by_name("nic_f1").address
    assert h.group_of(f0) == h.group_of(f1)
    with h.bound(f0, "vfio-pci"), h.bound(f1, "vfio-pci"):
        with open_device(f0, backend=backend):
            with pytest.raises(VfioError) as err:
                open_device(f1, backend=backend)
            assert err.value.errno == (errno.EBUSY if backend == "legacy" else errno.EPERM)
        with IommuContext(backend=backend) as ctx:
            d0, d1 = ctx.open_device(f0), ctx.open_device(f1)
            assert d0.device.info.num_regions > 0 and d1.device.info.num_regions > 0
            buf = ctx.dma_buffer(4096)
            assert buf.iova > 0


# -- what QEMU and DPDK use (#14, item 5) ----------------------------------------------------


def test_intx_unmask_through_an_eventfd(edu: Edu) -> None:
    """Policy "eventfd" on real INTx (both uAPIs, both drivers): every unmask is one write
    of the eventfd armed with ACTION_UNMASK | DATA_EVENTFD, no ioctl; a write of the fd by
    the caller unmasks too; without one the line stays masked (the next interrupt waits
    for the unmask, then arrives: the device still asserts it). Closing the Intx (the
    fixture) disarms and closes both eventfds: no fd left open."""
    intx = edu.intx
    assert intx is not None
    intx.policy = "eventfd"
    ufd = intx.unmask_eventfd()
    assert ufd >= 0
    for i in range(20):
        edu.raise_irq(1 << (i % 8))
        assert edu.wait_irq() == 1 << (i % 8)  # ack at the device, then unmask()
    # The fd written by the caller itself, as a VMM's irqfd resampler would.
    edu.raise_irq(1)
    assert intx.wait(2) == 1
    edu.write(h.EDU_IRQ_ACK, 1)
    os.eventfd_write(ufd, 1)
    edu.raise_irq(2)
    assert intx.wait(2) == 1
    edu.write(h.EDU_IRQ_ACK, 2)
    # No unmask: masked, the next interrupt is held until the eventfd is written.
    edu.raise_irq(4)
    assert intx.wait(0.5) == 0
    assert intx.unmask() == "eventfd"
    assert intx.wait(2) == 1
    assert edu.read(h.EDU_IRQ_STATUS) == 4
    edu.write(h.EDU_IRQ_ACK, 4)
    assert intx.unmask() == "eventfd"
    assert intx.counts == {"line": 0, "device": 0, "kernel": 0, "eventfd": 22}
    assert intx.wait(0.2) == 0


@pytest.mark.parametrize("driver", ["vfio-pci", "vfiokit-pci"])
def test_device_feature_probe_and_set(topology, driver: str) -> None:
    """VFIO_DEVICE_FEATURE PROBE of vfio-pci's low-power features (SET only: a probe
    for GET is EINVAL, False), of a feature nobody has (ENOTTY, False), and a real SET:
    LOW_POWER_EXIT outside low power does nothing and succeeds. The device still works.
    No INTx is enabled (vfiokit-pci refuses low-power requests while it is)."""
    from vfiokit.vfio import uapi as U

    dev = topology.by_name("edu_alone")
    with h.bound(dev.address, driver), open_device(dev.address) as vd:
        d = vd.device
        entry = U.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY
        assert d.feature_probe(entry) and d.feature_probe(entry, set=True)
        assert not d.feature_probe(entry, get=True)
        assert d.feature_probe(U.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT, set=True)
        assert not d.feature_probe(0x7FFE)
        d.feature_set(U.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT)
        with Edu(vd, irq=False) as edu:
            assert edu.alive()


def test_region_types_of_the_edu(topology) -> None:
    """edu has no device-specific region: no region carries a type capability, the list
    is empty and find_region finds nothing (on the real GET_REGION_INFO cap chain)."""
    from vfiokit.vfio import uapi as U

    dev = topology.by_name("edu_alone")
    with h.bound(dev.address, "vfio-pci"), open_device(dev.address) as vd:
        d = vd.device
        assert d.info.num_regions == U.VFIO_PCI_NUM_REGIONS
        assert d.device_regions() == []
        assert d.find_region(U.REGION_TYPE_PCI_VENDOR | 0x8086, 1) is None
        assert d.bar(0).type is None and d.config.type is None


@pytest.mark.parametrize("backend", ["legacy", "iommufd"])
def test_dma_through_huge_pages(topology, backend: str) -> None:
    """hugepages="require" on the guest's own hugetlb: two 2 MiB pages reserved in the
    guest, a buffer of one at a 2 MiB-aligned IOVA that the edu reads and writes in its
    second half, a second buffer of the last page, a third refused (ENOMEM), "prefer"
    then CPU pages. On a guest kernel without hugetlb (CONFIG_HUGETLBFS unset) the other
    half of the contract is checked instead: "prefer" maps CPU pages that work,
    "require" is EOPNOTSUPP."""
    from vfiokit.vfio import HugepagesUnavailable

    mib2 = 2 << 20
    dev = topology.by_name("edu_alone")
    pool = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
    with (
        h.bound(dev.address, "vfio-pci"),
        open_device(dev.address, backend=backend, dma_limit=Edu.DMA_LIMIT) as vd,
    ):
        edu = Edu(vd, irq=False)
        data = os.urandom(3000)
        if not os.path.exists(pool):
            buf = vd.dma_buffer(4096, hugepages="prefer")
            assert not buf.hugepages and buf.page_size == 4096
            buf.view[: len(data)] = data
            edu.dma_in(buf.iova, len(data))
            assert edu.dma_from_device(len(data)) == data
            with pytest.raises(HugepagesUnavailable) as info:
                vd.dma_buffer(4096, hugepages="require")
            assert info.value.errno == errno.EOPNOTSUPP
            return
        with open(pool) as f:
            before = f.read().strip()
        try:
            with open(pool, "w") as f:
                f.write("2")
            with open(pool) as f:
                if int(f.read()) < 2:
                    pytest.skip("the guest could not reserve two 2 MiB pages")
            buf = vd.dma_buffer(4096, hugepages="require")
            assert buf.hugepages and buf.page_size == mib2 and buf.size == mib2
            assert buf.iova % mib2 == 0 and buf.vaddr % mib2 == 0
            mid = mib2 // 2 + 4096  # far beyond the 4 KiB asked for: the whole page is mapped
            buf.view[mid : mid + len(data)] = data
            edu.dma_in(buf.iova + mid, len(data))
            edu.dma_out(buf.iova + mib2 - 4096, len(data))
            assert bytes(buf.view[mib2 - 4096 : mib2 - 4096 + len(data)]) == data
            second = vd.dma_buffer(mib2, hugepages="require")
            assert second.hugepages and second.iova % mib2 == 0
            with pytest.raises(HugepagesUnavailable) as info:
                vd.dma_buffer(4096, hugepages="require")
            assert info.value.errno == errno.ENOMEM and "nr_hugepages" in (info.value.remedy or "")
            assert not vd.dma_buffer(4096, hugepages="prefer").hugepages
            buf.close()
            second.close()
        finally:
            edu.close()  # its BAR mapping would keep the device open
            vd.close()  # the pages go back to the pool before the pool is shrunk
            with open(pool, "w") as f:
                f.write(before)
