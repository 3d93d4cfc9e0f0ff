"""vfiokit-pci's INTx state page (kmod/vfiokit_pci/intx_page.c): a device-specific region,
one page, readable and mappable shared and read-only, whose mask_device says how the last
interrupt was masked. What user space can do with it, a hostile user included; stock
vfio-pci has no such region, and the Python API then reads the state feature instead."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct

import pytest

import helpers as h
from test_adaptive import SHARER, nointxmask
from vfiokit.drivers.edu import Edu
from vfiokit.vfio import open_device
from vfiokit.vfio import uapi as U

pytestmark = [
    pytest.mark.skipif(nointxmask(), reason="this boot forces vfio_pci.nointxmask=1"),
    pytest.mark.usefixtures("vfiokit_modules"),
]

PAGE = mmap.PAGESIZE
TYPE = (U.VFIOKIT_REGION_TYPE, U.VFIOKIT_REGION_SUBTYPE_INTX_PAGE)
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.mmap.restype = ctypes.c_void_p
LIBC.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]  # fmt: skip
LIBC.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
LIBC.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
LIBC.mremap.restype = ctypes.c_void_p
LIBC.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int]
MREMAP_MAYMOVE = 1
MAP_FAILED = ctypes.c_void_p(-1).value


def page_fields(buf: bytes | memoryview) -> tuple[int, int, int]:
    """(version, mode, mask_device)"""
    return struct.unpack_from("=III", buf)


def test_stock_vfio_pci_has_no_page(topology) -> None:
    dev = topology.by_name("edu_alone")
    with h.bound(dev.address, "vfio-pci"), open_device(dev.address) as vd:
        assert vd.device.find_region(*TYPE) is None
        with Edu(vd) as edu:
            assert edu.intx is not None and not edu.intx.vfiokit
            assert not edu.intx.page_mapped


def test_region_and_what_it_says(topology) -> None:
    """The region's info, then the page following the masks: OFF before INTx, line
    while alone, device once a sharer came, line again once it left; pread() and the
    mapping say the same."""
    dev = topology.by_name("edu_alone")
    with h.bound(dev.address, "vfiokit-pci"), open_device(dev.address) as vd:
        region = vd.device.find_region(*TYPE)
        assert region is not None
        assert (region.size, region.readable, region.writable, region.mappable) == (
            PAGE, True, False, True,
        )  # fmt: skip
        view = region.mmap()
        try:
            assert page_fields(view) == (1, U.VFIOKIT_INTX_OFF, 0)
            with Edu(vd) as edu:
                assert edu.intx is not None and edu.intx.page_mapped
                assert page_fields(view) == (1, U.VFIOKIT_INTX_ADAPTIVE, 0)
                edu.raise_irq(1)
                assert edu.intx.wait(2) == 1
                assert page_fields(view)[2] == 0
                edu.write(0x64, 1)  # ack
                assert edu.intx.unmask() == "line"
                SHARER.write_text(str(dev.gsi))
                try:
                    edu.raise_irq(2)
                    assert edu.intx.wait(2) == 1
                    assert page_fields(view)[2] == 1
                    raw = vd.device.sys.pread(vd.device.fd, 16, region.offset)
                    assert page_fields(raw) == page_fields(view) == (1, 1, 1)
                    edu.write(0x64, 2)
                    assert edu.intx.unmask() == "device"
                finally:
                    SHARER.write_text("0")
                edu.raise_irq(4)
                assert edu.intx.wait(2) == 1
                assert page_fields(view)[2] == 0
                edu.write(0x64, 4)
                assert edu.intx.unmask() == "line"
                assert edu.intx.wait(0.1) == 0
                assert edu.intx.counts == {"line": 2, "device": 1, "kernel": 0}
                edu.intx.close()  # disarms: INTx off
                assert not edu.intx.page_mapped
            assert page_fields(view) == (1, U.VFIOKIT_INTX_OFF, 0)
        finally:
            view.release()


def _mmap_errno(fd: int, length: int, offset: int, prot: int, flags: int) -> int:
    try:
        m = mmap.mmap(fd, length, flags, prot, offset=offset)
    except OSError as exc:
        return exc.errno or -1
    m.close()
    return 0


def test_a_hostile_user_cannot_write_it(topology) -> None:
    """Writable, executable, private, oversized or offset mappings, mprotect() to
    writable or executable, mremap() growth, pwrite() and reads past the page are
    refused; a mapping outlives the device fd safely; the next open starts afresh."""
    dev = topology.by_name("edu_alone")
    with h.bound(dev.address, "vfiokit-pci"):
        with open_device(dev.address) as vd:
            region = vd.device.find_region(*TYPE)
            assert region is not None
            fd, base = vd.device.fd, region.offset
            shared, private = mmap.MAP_SHARED, mmap.MAP_PRIVATE
            rd, rw = mmap.PROT_READ, mmap.PROT_READ | mmap.PROT_WRITE
            assert _mmap_errno(fd, PAGE, base, rw, shared) == errno.EPERM
            assert _mmap_errno(fd, PAGE, base, rd | mmap.PROT_EXEC, shared) == errno.EPERM
            assert _mmap_errno(fd, PAGE, base, rd, private) == errno.EINVAL
            assert _mmap_errno(fd, 2 * PAGE, base, rd, shared) == errno.EINVAL
            assert _mmap_errno(fd, PAGE, base + PAGE, rd, shared) == errno.EINVAL
            assert _mmap_errno(fd, PAGE, base, rd, shared) == 0
            for off, data in ((0, b"\x00"), (8, b"\x01\x00\x00\x00")):
                with pytest.raises(OSError) as info:
                    os.pwrite(fd, data, base + off)
                assert info.value.errno == errno.EINVAL
            with pytest.raises(OSError) as info:
                os.pread(fd, 4, base + PAGE)
            assert info.value.errno == errno.EINVAL
            assert len(os.pread(fd, 64, base + PAGE - 8)) == 8  # cut at the page's end

            addr = LIBC.mmap(None, PAGE, rd, shared, fd, base)
            assert addr not in (None, MAP_FAILED), os.strerror(ctypes.get_errno())
            keep = -1
            try:
                assert LIBC.mprotect(addr, PAGE, rw) == -1
                assert ctypes.get_errno() == errno.EACCES
                exe = mmap.PROT_READ | mmap.PROT_EXEC
                assert LIBC.mprotect(addr, PAGE, exe) == -1
                assert ctypes.get_errno() == errno.EACCES
                assert LIBC.mremap(addr, PAGE, 2 * PAGE, MREMAP_MAYMOVE) == MAP_FAILED
                assert ctypes.get_errno() == errno.EFAULT  # VM_DONTEXPAND
                with Edu(vd) as edu:
                    edu.raise_irq(1)
                    assert edu.intx is not None and edu.intx.wait(2) == 1
                    edu.write(0x64, 1)
                    edu.intx.unmask()
                    fields = page_fields(ctypes.string_at(addr, 12))
                    assert fields[:2] == (1, U.VFIOKIT_INTX_ADAPTIVE)
                    edu.intx.close()
                keep = os.dup(fd)
            except BaseException:
                LIBC.munmap(addr, PAGE)  # or the unbind below would wait for it forever
                raise
        # The library closed the device; our dup and the mapping keep it open. Reading the
        # page after every fd is closed stays safe: the mapping holds a reference to the
        # page and to the device file. Unbinding waits for the unmap.
        try:
            os.close(keep)
            assert page_fields(ctypes.string_at(addr, 12)) == (1, U.VFIOKIT_INTX_OFF, 0)
        finally:
            assert LIBC.munmap(addr, PAGE) == 0
        # A new open starts from a page that says INTx is off.
        with open_device(dev.address) as vd:
            region = vd.device.find_region(*TYPE)
            assert region is not None
            raw = vd.device.sys.pread(vd.device.fd, 12, region.offset)
            assert page_fields(raw) == (1, U.VFIOKIT_INTX_OFF, 0)
