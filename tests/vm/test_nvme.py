"""vfiokit's NVMe driver on QEMU's NVMe controller, checked against the kernel's nvme driver.

Blocks written from Python through VFIO are read back by the kernel from its block device
(O_DIRECT), and blocks the kernel wrote (O_DIRECT, fsync) are read from Python: the data
must match both ways, so the driver's PRPs, LBAs and block size are the kernel's. Identify
must say what scripts/vm-topology.toml configured. The controller is handed back to the
kernel's nvme driver after each test, and left with it.
"""

from __future__ import annotations

import glob
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import helpers as h
from vfiokit.drivers.nvme import Nvme, NvmeInvalidCommand
from vfiokit.vfio import open_device


@pytest.fixture
def nvme_dev(topology) -> Iterator:
    """The topology's NVMe controller, bound to the kernel's nvme driver before and after."""
    dev = topology.by_name("nvme")
    h.bind(dev.address, "nvme")
    block_device(dev.address)
    yield dev
    h.bind(dev.address, "nvme")
    block_device(dev.address)


def block_device(bdf: str, timeout: float = 60.0) -> str:
    """/dev/nvmeXn1 of the controller at `bdf`, once the kernel has probed it (the nvme
    driver scans namespaces asynchronously, after the bind has returned)."""

    def find() -> str | None:
        for path in glob.glob(f"/sys/bus/pci/devices/{bdf}/nvme/nvme*/nvme*n1"):
            name = os.path.basename(path)
            if os.path.exists(f"/dev/{name}") and int(Path(path, "size").read_text()) > 0:
                return f"/dev/{name}"
        return None

    assert h.wait_for(lambda: find() is not None, timeout), f"no block device for {bdf}"
    found = find()
    assert found is not None
    return found


def stamp(tag: str, lba: int, count: int, bs: int) -> bytes:
    """Blocks that name their writer, run and LBA: a misplaced or stale block shows."""
    return b"".join(
        f"{tag} lba {lba + i:09d} ".encode().ljust(64, b".") * (bs // 64) for i in range(count)
    )


def kernel_read(dev: str, lba: int, count: int, bs: int) -> bytes:
    fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
    try:
        with mmap.mmap(-1, count * bs) as buf:  # page-aligned, as O_DIRECT wants
            assert os.preadv(fd, [buf], lba * bs) == count * bs
            return bytes(buf)
    finally:
        os.close(fd)


def kernel_write(dev: str, lba: int, data: bytes, bs: int) -> None:
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    try:
        with mmap.mmap(-1, len(data)) as buf:
            buf[:] = data
            assert os.pwritev(fd, [buf], lba * bs) == len(data)
        os.fsync(fd)
    finally:
        os.close(fd)


def extents(blocks: int) -> list[tuple[int, int]]:
    """(LBA, blocks): one block, a few, six pages (a PRP list), 1 MiB (over QEMU's 512 KiB
    MDTS: two commands), and the namespace's last blocks."""
    return [(0, 1), (1000, 3), (4096, 48), (8192, 2048), (blocks - 16, 16)]


def test_identify_says_what_the_topology_configured(nvme_dev) -> None:
    bdf = nvme_dev.address
    kernel_ctrl = Path(glob.glob(f"/sys/bus/pci/devices/{bdf}/nvme/nvme*")[0])
    kernel_serial = (kernel_ctrl / "serial").read_text().strip()
    with h.bound(bdf, "vfio-pci"), open_device(bdf) as vd, Nvme(vd) as nvme:
        c, ns = nvme.controller, nvme.namespace
        assert c.serial == nvme_dev.option["serial"] == kernel_serial
        assert c.model == "QEMU NVMe Ctrl" and c.vendor_id == 0x1B36
        assert ns.size == nvme_dev.disk_bytes and ns.block_size == 512
        assert ns.blocks == nvme_dev.disk_bytes // 512
        assert nvme.max_transfer > 0 and c.namespaces >= 1
        with pytest.raises(NvmeInvalidCommand) as info:
            nvme.read(ns.blocks, 1)  # the controller's own range check
        assert (info.value.sct, info.value.sc) == (0, 0x80)
        assert nvme.read(ns.blocks - 1, 1) is not None  # and the driver goes on


@pytest.mark.parametrize("backend", ["legacy", "iommufd"])
def test_python_writes_the_kernel_reads(nvme_dev, backend: str) -> None:
    bdf = nvme_dev.address
    tag = f"vfiokit {backend} {os.urandom(6).hex()}"
    with h.bound(bdf, "vfio-pci"), open_device(bdf, backend=backend) as vd, Nvme(vd) as nvme:
        bs, blocks = nvme.namespace.block_size, nvme.namespace.blocks
        for lba, count in extents(blocks):
            data = stamp(tag, lba, count, bs)
            nvme.write(lba, data)
            assert nvme.read(lba, count) == data
        nvme.flush()
        assert nvme.interrupts[1] > 0, "the I/O queue's MSI-X vector never fired"
    assert h.driver_of(bdf) == "nvme"
    dev = block_device(bdf)
    for lba, count in extents(blocks):
        got = kernel_read(dev, lba, count, bs)
        assert got == stamp(tag, lba, count, bs), f"kernel read of LBA {lba}+{count} differs"


@pytest.mark.parametrize("backend", ["legacy", "iommufd"])
def test_the_kernel_writes_python_reads(nvme_dev, backend: str) -> None:
    bdf = nvme_dev.address
    tag = f"kernel {backend} {os.urandom(6).hex()}"
    dev = block_device(bdf)
    bs = int(Path(f"/sys/block/{os.path.basename(dev)}/queue/logical_block_size").read_text())
    blocks = int(Path(f"/sys/block/{os.path.basename(dev)}/size").read_text()) * 512 // bs
    for lba, count in extents(blocks):  # the random tag: nothing earlier can match
        kernel_write(dev, lba, stamp(tag, lba, count, bs), bs)
    with h.bound(bdf, "vfio-pci"), open_device(bdf, backend=backend) as vd, Nvme(vd) as nvme:
        assert nvme.namespace.block_size == bs and nvme.namespace.blocks == blocks
        for lba, count in extents(blocks):
            got = nvme.read(lba, count)
            assert got == stamp(tag, lba, count, bs), f"Python read of LBA {lba}+{count} differs"
