"""DMA address spaces: the legacy VFIO container (type1v2) and iommufd (an IOAS).

Both offer the same small interface (`map`, `unmap`, `iova_ranges`, `close`), so a device
and its DMA buffers do not care which uAPI the kernel offers.
"""

from __future__ import annotations

import ctypes
import errno as E
import mmap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..errors import Busy, Unsupported, VfiokitError
from . import uapi as U
from .sys import Syscalls, VfioError, ioctl_named, warn_unclosed

# IOVA ranges are inclusive: (first, last).
IovaRange = tuple[int, int]
PAGE = mmap.PAGESIZE


def _check_unmapped(iova: int, size: int, unmapped: int) -> None:
    """The kernel says how much it unmapped: anything but all of it means our idea of
    what is mapped is wrong (type1 unmaps nothing, successfully, where nothing is)."""
    if unmapped != size:
        raise VfiokitError(
            f"DMA unmap of {size:#x} bytes at IOVA {iova:#x} unmapped {unmapped:#x}",
            errno=E.EIO,
        )


class DmaSpace(Protocol):
    kind: str

    def map(
        self, vaddr: int, iova: int, size: int, *, readable: bool = True, writable: bool = True
    ) -> None: ...
    def unmap(self, iova: int, size: int) -> None: ...
    def iova_ranges(self) -> list[IovaRange]: ...
    def iova_alignment(self) -> int: ...
    def close(self) -> None: ...


def _parse_caps(buf: bytearray, first: int) -> dict[int, int]:
    """VFIO info capability chain: {cap id: offset}; bounded against loops."""
    caps: dict[int, int] = {}
    off = first
    while off and off + ctypes.sizeof(U.vfio_info_cap_header) <= len(buf) and len(caps) < 32:
        hdr = U.vfio_info_cap_header.parse(buf, off)
        if hdr.id in caps:
            break
        caps[hdr.id] = off
        off = hdr.next
    return caps


@dataclass
class Container:
    """/dev/vfio/vfio with the type1v2 IOMMU; groups join it (see Group)."""

    sys: Syscalls
    fd: int
    kind: str = "legacy"
    iommu_set: bool = False

    @classmethod
    def open(cls, sys: Syscalls) -> Container:
        fd = sys.open("/dev/vfio/vfio")
        try:
            version = sys.ioctl(fd, U.VFIO_GET_API_VERSION)
            if version != U.VFIO_API_VERSION:
                raise Unsupported(f"unknown VFIO API version {version}")
            if sys.ioctl(fd, U.VFIO_CHECK_EXTENSION, U.VFIO_TYPE1v2_IOMMU) <= 0:
                raise Unsupported(
                    "the VFIO container does not support the type1v2 IOMMU",
                    remedy="load vfio_iommu_type1, or use the iommufd backend",
                )
        except BaseException:
            sys.close(fd)
            raise
        return cls(sys, fd)

    def set_iommu(self) -> None:
        """After the first group joined: choose the IOMMU model (once)."""
        if not self.iommu_set:
            self.sys.ioctl(self.fd, U.VFIO_SET_IOMMU, U.VFIO_TYPE1v2_IOMMU)
            self.iommu_set = True

    def map(
        self, vaddr: int, iova: int, size: int, *, readable: bool = True, writable: bool = True
    ) -> None:
        flags = (U.VFIO_DMA_MAP_FLAG_READ if readable else 0) | (
            U.VFIO_DMA_MAP_FLAG_WRITE if writable else 0
        )
        arg = U.vfio_iommu_type1_dma_map.new(flags=flags, vaddr=vaddr, iova=iova, size=size)
        with ioctl_named("VFIO_IOMMU_MAP_DMA"):
            self.sys.ioctl(self.fd, U.VFIO_IOMMU_MAP_DMA, arg.to_bytes())

    def unmap(self, iova: int, size: int) -> None:
        buf = U.vfio_iommu_type1_dma_unmap.new(iova=iova, size=size).to_bytes()
        self.sys.ioctl(self.fd, U.VFIO_IOMMU_UNMAP_DMA, buf)
        _check_unmapped(iova, size, U.vfio_iommu_type1_dma_unmap.parse(buf).size)

    def iova_alignment(self) -> int:
        """The smallest IOMMU page size (iova_pgsizes' lowest bit), at least a CPU page:
        the IOVA, size and address of every mapping are multiples of it."""
        info, _ = self._info()
        if not info.flags & U.VFIO_IOMMU_INFO_PGSIZES or not info.iova_pgsizes:
            return PAGE
        return max(PAGE, int(info.iova_pgsizes & -info.iova_pgsizes))

    def _info(self) -> tuple[U.vfio_iommu_type1_info, bytearray]:
        info = U.vfio_iommu_type1_info.new()
        buf = info.to_bytes()
        with ioctl_named("VFIO_IOMMU_GET_INFO"):
            self.sys.ioctl(self.fd, U.VFIO_IOMMU_GET_INFO, buf)
        info = U.vfio_iommu_type1_info.parse(buf)
        if info.argsz > len(buf):  # capabilities follow: ask again with room for them
            buf = bytearray(info.argsz)
            buf[: ctypes.sizeof(info)] = bytes(U.vfio_iommu_type1_info(argsz=info.argsz))
            with ioctl_named("VFIO_IOMMU_GET_INFO"):
                self.sys.ioctl(self.fd, U.VFIO_IOMMU_GET_INFO, buf)
            info = U.vfio_iommu_type1_info.parse(buf)
        return info, buf

    def iova_ranges(self) -> list[IovaRange]:
        info, buf = self._info()
        caps = _parse_caps(buf, info.cap_offset if info.flags & U.VFIO_IOMMU_INFO_CAPS else 0)
        off = caps.get(U.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE)
        if off is None:
            return [(0, (1 << 64) - 1)]
        cap = U.vfio_iommu_type1_info_cap_iova_range.parse(buf, off)
        base = off + ctypes.sizeof(cap)
        size = ctypes.sizeof(U.vfio_iova_range)
        ranges = [U.vfio_iova_range.parse(buf, base + i * size) for i in range(cap.nr_iovas)]
        return [(r.start, r.end) for r in ranges]

    def close(self) -> None:
        if self.fd >= 0:
            self.sys.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            fd, self.fd = self.fd, -1
            warn_unclosed(self, self.sys, [fd])


@dataclass
class IommuFd:
    """/dev/iommu with one IO address space (IOAS) that devices attach to."""

    sys: Syscalls
    fd: int
    ioas: int
    kind: str = "iommufd"

    @classmethod
    def open(cls, sys: Syscalls) -> IommuFd:
        fd = sys.open("/dev/iommu")
        try:
            arg = U.iommu_ioas_alloc.new().to_bytes()
            sys.ioctl(fd, U.IOMMU_IOAS_ALLOC, arg)
            ioas = U.iommu_ioas_alloc.parse(arg).out_ioas_id
        except BaseException:
            sys.close(fd)
            raise
        return cls(sys, fd, ioas)

    def map(
        self, vaddr: int, iova: int, size: int, *, readable: bool = True, writable: bool = True
    ) -> None:
        flags = U.IOMMU_IOAS_MAP_FIXED_IOVA
        flags |= (U.IOMMU_IOAS_MAP_READABLE if readable else 0) | (
            U.IOMMU_IOAS_MAP_WRITEABLE if writable else 0
        )
        arg = U.iommu_ioas_map.new(
            flags=flags, ioas_id=self.ioas, user_va=vaddr, iova=iova, length=size
        )
        self.sys.ioctl(self.fd, U.IOMMU_IOAS_MAP, arg.to_bytes())

    def unmap(self, iova: int, size: int) -> None:
        buf = U.iommu_ioas_unmap.new(ioas_id=self.ioas, iova=iova, length=size).to_bytes()
        self.sys.ioctl(self.fd, U.IOMMU_IOAS_UNMAP, buf)
        _check_unmapped(iova, size, U.iommu_ioas_unmap.parse(buf).length)

    def _count(self) -> U.iommu_ioas_iova_ranges:
        """IOMMU_IOAS_IOVA_RANGES with no room: how many ranges, and the alignment."""
        buf = U.iommu_ioas_iova_ranges.new(ioas_id=self.ioas).to_bytes()
        try:
            self.sys.ioctl(self.fd, U.IOMMU_IOAS_IOVA_RANGES, buf)
        except VfioError as exc:  # EMSGSIZE: tells how many ranges there are
            if exc.errno != E.EMSGSIZE:
                raise
        return U.iommu_ioas_iova_ranges.parse(buf)

    def iova_alignment(self) -> int:
        """out_iova_alignment (at least a CPU page): every mapping's IOVA and size are
        multiples of it. It can grow as devices attach: ask after attaching them."""
        return max(PAGE, int(self._count().out_iova_alignment))

    def iova_ranges(self) -> list[IovaRange]:
        count = self._count().num_iovas
        ranges = (U.iommu_iova_range * count)()
        hdr = U.iommu_ioas_iova_ranges.new(
            ioas_id=self.ioas, num_iovas=count, allowed_iovas=ctypes.addressof(ranges)
        )
        buf = hdr.to_bytes()
        self.sys.ioctl(self.fd, U.IOMMU_IOAS_IOVA_RANGES, buf)
        return [(r.start, r.last) for r in ranges]

    def close(self) -> None:
        if self.fd >= 0:
            self.sys.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            fd, self.fd = self.fd, -1
            warn_unclosed(self, self.sys, [fd])


class GroupNotViable(Busy):
    """VFIO_GROUP_GET_STATUS says the group is not viable: a member is bound to a host
    driver. No syscall failed, so there is no errno; the message names the members that
    block the group where the caller could tell (see vfiokit.iommu.read_group)."""


@dataclass
class Group:
    """/dev/vfio/<N>, joined to a container."""

    sys: Syscalls
    fd: int
    number: str

    @classmethod
    def open(
        cls,
        sys: Syscalls,
        number: str,
        container: Container,
        blockers: Callable[[], list[str]] | None = None,
    ) -> Group:
        """Open /dev/vfio/<number> and join `container`. `blockers`, if given, names the
        members that keep the group from being viable (for the error, only then called)."""
        fd = sys.open(f"/dev/vfio/{number}")
        try:
            status = U.vfio_group_status.new().to_bytes()
            sys.ioctl(fd, U.VFIO_GROUP_GET_STATUS, status)
            if not U.vfio_group_status.parse(status).flags & U.VFIO_GROUP_FLAGS_VIABLE:
                named = blockers() if blockers is not None else []
                why = "; ".join(named) if named else "a member is bound to a host driver"
                raise GroupNotViable(
                    f"IOMMU group {number} is not viable: {why}",
                    remedy="bind every device of the group to vfio-pci (`vfiokit doctor BDF` "
                    "names the one that blocks it)",
                )
            sys.ioctl(fd, U.VFIO_GROUP_SET_CONTAINER, bytearray(ctypes.c_int32(container.fd)))
            container.set_iommu()
        except BaseException:
            sys.close(fd)
            raise
        return cls(sys, fd, number)

    def device_fd(self, bdf: str) -> int:
        return self.sys.ioctl(self.fd, U.VFIO_GROUP_GET_DEVICE_FD, bytearray(bdf.encode() + b"\0"))

    def close(self) -> None:
        if self.fd >= 0:
            self.sys.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            fd, self.fd = self.fd, -1
            warn_unclosed(self, self.sys, [fd])
