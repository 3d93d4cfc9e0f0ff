"""A VFIO device: its info, regions (BARs, config space), interrupts, reset and features."""

from __future__ import annotations

import builtins
import ctypes
import errno as E
import mmap
import struct
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import pciconfig
from ..errors import Busy, InvalidArgument, Unsupported, VfiokitError
from . import uapi as U
from .iommu import _parse_caps
from .sys import Syscalls, ioctl_named, warn_unclosed

_FMT = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}
PAGE = mmap.PAGESIZE


def _fd_array(fds: list[int]) -> bytes:
    """An array of s32 fds in native byte order, as the kernel reads it."""
    return struct.pack(f"={len(fds)}i", *fds)


def _feature(feature: int) -> int:
    if not 0 <= feature <= U.VFIO_DEVICE_FEATURE_MASK:
        raise InvalidArgument(f"device feature {feature:#x} is not a 16-bit index")
    return feature


class ClosedError(VfiokitError):
    """Use of an object after close()."""


_MmapObject = mmap.mmap  # for annotations inside Region, whose mmap() hides the module


@dataclass(frozen=True)
class AffectedDevice:
    """One device a hot reset hits, as VFIO_DEVICE_GET_PCI_HOT_RESET_INFO reports it.

    Legacy uAPI: `group` is its IOMMU group, `owned` None (the kernel judges ownership by
    the group fds given to the reset). iommufd: `devid` is its id in the calling
    iommufd (0: owned through its group, not opened; None with owned False: not owned,
    the kernel's VFIO_PCI_DEVID_NOT_OWNED), `group` None.
    """

    address: str
    group: int | None
    devid: int | None
    owned: bool | None


@dataclass(frozen=True)
class HotResetScope:
    """What a hot reset of `device` hits. `by_devid`: the kernel answered by devid (a
    device opened through its cdev); `all_owned` is then its
    VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED (None for the legacy uAPI)."""

    device: str
    by_devid: bool
    all_owned: bool | None
    devices: list[AffectedDevice]

    @property
    def addresses(self) -> list[str]:
        return [d.address for d in self.devices]

    @property
    def groups(self) -> list[int]:
        """The IOMMU groups in the scope, each once (legacy uAPI only)."""
        return sorted({d.group for d in self.devices if d.group is not None})


@dataclass
class IrqInfo:
    index: int
    flags: int
    count: int

    @property
    def eventfd(self) -> bool:
        return bool(self.flags & U.VFIO_IRQ_INFO_EVENTFD)

    @property
    def maskable(self) -> bool:
        return bool(self.flags & U.VFIO_IRQ_INFO_MASKABLE)


@dataclass
class Region:
    """One region of a device (BAR i, ROM, config space), read and written through the
    device fd or, where the kernel allows, through an mmap of its mappable areas."""

    device: Device
    index: int
    flags: int
    size: int
    offset: int
    sparse: list[tuple[int, int]] | None = None  # mmap-able (offset, size) areas
    type: tuple[int, int] | None = None  # (type, subtype) of VFIO_REGION_INFO_CAP_TYPE
    _maps: list[mmap.mmap] = field(default_factory=list)

    @property
    def readable(self) -> bool:
        return bool(self.flags & U.VFIO_REGION_INFO_FLAG_READ)

    @property
    def writable(self) -> bool:
        return bool(self.flags & U.VFIO_REGION_INFO_FLAG_WRITE)

    @property
    def mappable(self) -> bool:
        return bool(self.flags & U.VFIO_REGION_INFO_FLAG_MMAP)

    def _check(self, off: int, width: int) -> None:
        self.device._live()
        if width not in _FMT:
            raise InvalidArgument(f"access width {width} is not 1, 2, 4 or 8 bytes")
        if off < 0 or off + width > self.size:
            raise InvalidArgument(
                f"region {self.index}: access at {off:#x}+{width} is outside its "
                f"{self.size:#x} bytes"
            )
        if off % width:
            raise InvalidArgument(f"region {self.index}: unaligned {width}-byte access at {off:#x}")

    def read(self, off: int, width: int = 4) -> int:
        self._check(off, width)
        if not self.readable:
            raise Unsupported(f"region {self.index} is not readable")
        data = self.device.sys.pread(self.device.fd, width, self.offset + off)
        if len(data) != width:
            raise VfiokitError(f"region {self.index}: short read at {off:#x}")
        value: int = struct.unpack(_FMT[width], data)[0]
        return value

    def write(self, off: int, value: int, width: int = 4) -> None:
        self._check(off, width)
        if not self.writable:
            raise Unsupported(f"region {self.index} is not writable")
        if not 0 <= value < 1 << (8 * width):
            raise InvalidArgument(f"value {value:#x} does not fit in {width} bytes")
        self.device.sys.pwrite(self.device.fd, struct.pack(_FMT[width], value), self.offset + off)

    def read_bytes(self, off: int, size: int) -> bytes:
        self.device._live()
        if off < 0 or size < 0 or off + size > self.size:
            raise InvalidArgument(f"region {self.index}: {off:#x}+{size} is outside the region")
        return self.device.sys.pread(self.device.fd, size, self.offset + off)

    def write_bytes(self, off: int, data: bytes) -> None:
        self.device._live()
        if off < 0 or off + len(data) > self.size:
            raise InvalidArgument(f"region {self.index}: {off:#x}+{len(data)} is outside")
        self.device.sys.pwrite(self.device.fd, data, self.offset + off)

    def areas(self) -> list[tuple[int, int]]:
        """The mmap-able (offset, size) areas: sparse areas if the kernel lists them (they
        leave out the MSI-X table), else the whole region."""
        if not self.mappable:
            return []
        return self.sparse if self.sparse is not None else [(0, self.size)]

    def mmap(self, area: int = 0) -> memoryview:
        """Map one mmap-able area; a memoryview of it (cast it, e.g. ``.cast("I")``)."""
        self.device._live()
        areas = self.areas()
        if not areas:
            raise Unsupported(f"region {self.index} cannot be mmapped")
        if not 0 <= area < len(areas):
            raise InvalidArgument(f"region {self.index} has {len(areas)} mmap-able areas")
        off, size = areas[area]
        m = self.device.sys.mmap(self.device.fd, size, self.offset + off, self.writable)
        self._maps.append(m)
        return memoryview(m)

    def unmap(self, view: memoryview | _MmapObject) -> None:
        """Unmap the one mapping behind `view` (from :meth:`mmap`, or its mmap object),
        leaving the region's other mappings alone. Release every cast of the view first;
        while one is still in use the mapping cannot go and this raises Busy."""
        if isinstance(view, memoryview):
            m = view.obj
            view.release()
        else:
            m = view
        if m not in self._maps:  # let go by close() already: gone with its last view
            return
        try:
            m.close()
        except BufferError as exc:
            raise Busy(
                f"region {self.index}: the mapping still has views in use",
                remedy="release() the views of it before unmap()",
            ) from exc
        self._maps.remove(m)

    def mmap_array(
        self, ctype: builtins.type[Any] = ctypes.c_uint32, area: int = 0
    ) -> ctypes.Array[Any]:
        """Map one mmap-able area as a ctypes array of `ctype` (registers as fields).

        A ctypes structure type works too: ``region.mmap_array(MyRegs)[0].status``.
        """
        view = self.mmap(area)
        count = len(view) // ctypes.sizeof(ctype)
        array: ctypes.Array[Any] = (ctype * count).from_buffer(self._maps[-1])
        return array

    def close(self) -> None:
        """Drop every mmap of the region. One still exported (a memoryview or ctypes array
        of it alive) cannot be unmapped now: it is let go all the same, unmapped when its
        last view goes, and close() raises Busy after it has dropped them all."""
        held = 0
        for m in self._maps:
            try:
                m.close()
            except BufferError:
                held += 1
        self._maps.clear()
        if held:
            raise Busy(
                f"region {self.index}: {held} mmap(s) still have views in use; each stays "
                "mapped until its last view goes",
                remedy="release() the views (or let them go out of scope) before close()",
            )


class _FdUser(Protocol):
    def device_closing(self) -> None:
        """The device fd closes next: stop using its number."""


class Device:
    """An open VFIO device fd (from a group or a cdev).

    The Device owns `fd` from the call on: if reading the device's info fails, the fd is
    closed before the error propagates.
    """

    def __init__(self, sys: Syscalls, fd: int, address: str):
        self.sys = sys
        self.fd = fd
        self.address = address
        self._regions: dict[int, Region] = {}
        # Objects holding this fd's number for a fast path (an Intx's interrupts() loop):
        # told before the fd closes, so they never use the number once it can be reused.
        self._fd_users: weakref.WeakSet[_FdUser] = weakref.WeakSet()
        try:
            info = U.vfio_device_info.new().to_bytes()
            sys.ioctl(fd, U.VFIO_DEVICE_GET_INFO, info)
        except BaseException:
            self.fd = -1
            sys.close(fd)
            raise
        self.info = U.vfio_device_info.parse(info)

    # -- state ------------------------------------------------------------------------------
    def _live(self) -> None:
        if self.fd < 0:
            raise ClosedError(f"device {self.address} is closed")

    @property
    def is_pci(self) -> bool:
        return bool(self.info.flags & U.VFIO_DEVICE_FLAGS_PCI)

    @property
    def can_reset(self) -> bool:
        return bool(self.info.flags & U.VFIO_DEVICE_FLAGS_RESET)

    # -- regions ----------------------------------------------------------------------------
    def region(self, index: int) -> Region:
        self._live()
        if index in self._regions:
            return self._regions[index]
        if not 0 <= index < self.info.num_regions:
            raise InvalidArgument(f"no region {index} (the device has {self.info.num_regions})")
        hdr = U.vfio_region_info.new(index=index)
        buf = hdr.to_bytes()
        self.sys.ioctl(self.fd, U.VFIO_DEVICE_GET_REGION_INFO, buf)
        info = U.vfio_region_info.parse(buf)
        if info.argsz > len(buf):
            buf = bytearray(info.argsz)
            buf[: ctypes.sizeof(hdr)] = bytes(U.vfio_region_info(argsz=info.argsz, index=index))
            self.sys.ioctl(self.fd, U.VFIO_DEVICE_GET_REGION_INFO, buf)
            info = U.vfio_region_info.parse(buf)
        sparse = None
        rtype = None
        if info.flags & U.VFIO_REGION_INFO_FLAG_CAPS:
            caps = _parse_caps(buf, info.cap_offset)
            toff = caps.get(U.VFIO_REGION_INFO_CAP_TYPE)
            if toff is not None:
                t = U.vfio_region_info_cap_type.parse(buf, toff)
                rtype = (t.type, t.subtype)
            off = caps.get(U.VFIO_REGION_INFO_CAP_SPARSE_MMAP)
            if off is not None:
                cap = U.vfio_region_info_cap_sparse_mmap.parse(buf, off)
                base = off + ctypes.sizeof(cap)
                step = ctypes.sizeof(U.vfio_region_sparse_mmap_area)
                sparse = []
                for i in range(cap.nr_areas):
                    a = U.vfio_region_sparse_mmap_area.parse(buf, base + i * step)
                    sparse.append((a.offset, a.size))
        region = Region(self, index, info.flags, info.size, info.offset, sparse, rtype)
        self._regions[index] = region
        return region

    def device_regions(self) -> list[Region]:
        """The device-specific regions (index VFIO_PCI_NUM_REGIONS and up), each with its
        `type` (type, subtype) from VFIO_REGION_INFO_CAP_TYPE; empty for most devices."""
        return [self.region(i) for i in range(U.VFIO_PCI_NUM_REGIONS, self.info.num_regions)]

    def find_region(self, type: int, subtype: int) -> Region | None:
        """The device-specific region of that type (VFIO_REGION_INFO_CAP_TYPE): e.g.
        (REGION_TYPE_PCI_VENDOR | 0x8086, VFIO_REGION_SUBTYPE_INTEL_IGD_OPREGION); None
        if the device has none."""
        for region in self.device_regions():
            if region.type == (type, subtype):
                return region
        return None

    def bar(self, n: int) -> Region:
        if not 0 <= n <= 5:
            raise InvalidArgument(f"BAR {n} does not exist (0..5)")
        return self.region(U.VFIO_PCI_BAR0_REGION_INDEX + n)

    @property
    def config(self) -> Region:
        return self.region(U.VFIO_PCI_CONFIG_REGION_INDEX)

    def capabilities(self) -> list[tuple[str, int]]:
        """The standard PCI capability list as (name, offset), read through VFIO."""
        cfg = self.config.read_bytes(0, 256)
        return [(pciconfig.cap_name(cid), off) for cid, off in pciconfig.capabilities(cfg) or []]

    # -- interrupts -------------------------------------------------------------------------
    def irq_info(self, index: int) -> IrqInfo:
        self._live()
        buf = U.vfio_irq_info.new(index=index).to_bytes()
        self.sys.ioctl(self.fd, U.VFIO_DEVICE_GET_IRQ_INFO, buf)
        info = U.vfio_irq_info.parse(buf)
        return IrqInfo(index, info.flags, info.count)

    def set_irqs(
        self,
        index: int,
        flags: int,
        start: int = 0,
        count: int = 0,
        eventfds: list[int] | None = None,
        bools: list[bool] | None = None,
    ) -> None:
        """VFIO_DEVICE_SET_IRQS with eventfd (s32 each) or bool (u8 each) data, or none.

        The eventfds are packed in the CPU's byte order: the kernel reads them as native
        integers (s390x, a big VFIO platform, is big-endian).
        """
        self._live()
        if eventfds is not None:
            data = _fd_array(eventfds)
        elif bools is not None:
            data = bytes(int(bool(b)) for b in bools)
        else:
            data = b""
        hdr = U.vfio_irq_set.new(len(data), flags=flags, index=index, start=start, count=count)
        self.sys.ioctl(self.fd, U.VFIO_DEVICE_SET_IRQS, hdr.to_bytes() + data)

    # -- reset and features -----------------------------------------------------------------
    def reset(self) -> None:
        self._live()
        if not self.can_reset:
            raise Unsupported(f"{self.address} has no reset method VFIO can use")
        self.sys.ioctl(self.fd, U.VFIO_DEVICE_RESET)

    def hot_reset_scope(self) -> HotResetScope:
        """Which devices a bus (or slot) reset of this device would hit, and, opened
        through its cdev, which of them the calling iommufd owns
        (VFIO_DEVICE_GET_PCI_HOT_RESET_INFO). NotFound (ENODEV) where the device has
        neither a slot nor a bus reset."""
        self._live()
        size = ctypes.sizeof(U.vfio_pci_hot_reset_info)
        step = ctypes.sizeof(U.vfio_pci_dependent_device)
        count = 0
        for _ in range(4):  # a device can appear between the two calls: ENOSPC again
            buf = U.vfio_pci_hot_reset_info.new(count * step).to_bytes() + bytearray(count * step)
            try:
                with ioctl_named("VFIO_DEVICE_GET_PCI_HOT_RESET_INFO"):
                    self.sys.ioctl(self.fd, U.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, buf)
            except VfiokitError as exc:
                if exc.errno != E.ENOSPC:
                    raise
                # Only the count is written back with ENOSPC (flags are 0 there).
                count = U.vfio_pci_hot_reset_info.parse(buf).count
                continue
            hdr = U.vfio_pci_hot_reset_info.parse(buf)
            by_devid = bool(hdr.flags & U.VFIO_PCI_HOT_RESET_FLAG_DEV_ID)
            out = []
            for i in range(min(hdr.count, count)):
                d = U.vfio_pci_dependent_device.parse(buf, size + i * step)
                addr = f"{d.segment:04x}:{d.bus:02x}:{d.devfn >> 3:02x}.{d.devfn & 7:x}"
                if by_devid:
                    owned = d.group_id != U.DEVID_NOT_OWNED
                    devid = d.group_id if owned else None
                    out.append(AffectedDevice(addr, group=None, devid=devid, owned=owned))
                else:
                    out.append(AffectedDevice(addr, group=d.group_id, devid=None, owned=None))
            all_owned = bool(hdr.flags & U.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED)
            return HotResetScope(self.address, by_devid, all_owned if by_devid else None, out)
        raise Busy(
            f"{self.address}: the devices behind its bus reset kept changing",
            remedy="try again once devices stop being added or removed",
        )

    def hot_reset(self, group_fds: Sequence[int] = ()) -> None:
        """VFIO_DEVICE_PCI_HOT_RESET: reset the device's bus (or slot), hitting every
        device hot_reset_scope() lists. The low-level call: VfioDevice.hot_reset() plans
        the arguments and refuses what the kernel would.

        Legacy uAPI (a device from a group fd): pass the fd of every group in the scope,
        which the kernel takes as proof of owning them (EINVAL if one is missing).
        iommufd (a device from its cdev): pass none; the kernel checks that this
        iommufd owns every affected device (EINVAL if not).
        """
        self._live()
        fds = list(group_fds)
        data = _fd_array(fds)
        arg = U.vfio_pci_hot_reset.new(len(data), count=len(fds)).to_bytes() + data
        with ioctl_named("VFIO_DEVICE_PCI_HOT_RESET"):
            self.sys.ioctl(self.fd, U.VFIO_DEVICE_PCI_HOT_RESET, arg)

    def feature_get(self, feature: int, size: int) -> bytes:
        """VFIO_DEVICE_FEATURE GET of `size` bytes of payload."""
        self._live()
        hdr = U.vfio_device_feature.new(size, flags=_feature(feature) | U.VFIO_DEVICE_FEATURE_GET)
        buf = hdr.to_bytes() + bytearray(size)
        self.sys.ioctl(self.fd, U.VFIO_DEVICE_FEATURE, buf)
        return bytes(buf[ctypes.sizeof(hdr) :])

    def feature_set(self, feature: int, data: bytes = b"") -> None:
        """VFIO_DEVICE_FEATURE SET with `data` as the payload."""
        self._live()
        hdr = U.vfio_device_feature.new(
            len(data), flags=_feature(feature) | U.VFIO_DEVICE_FEATURE_SET
        )
        self.sys.ioctl(self.fd, U.VFIO_DEVICE_FEATURE, hdr.to_bytes() + data)

    def feature_probe(self, feature: int, *, get: bool = False, set: bool = False) -> bool:
        """VFIO_DEVICE_FEATURE PROBE: does the device have `feature`, with GET and/or SET
        where asked? False for an unknown feature (ENOTTY) or an unsupported operation
        (EINVAL); other errors are raised."""
        self._live()
        flags = _feature(feature) | U.VFIO_DEVICE_FEATURE_PROBE
        flags |= (U.VFIO_DEVICE_FEATURE_GET if get else 0) | (
            U.VFIO_DEVICE_FEATURE_SET if set else 0
        )
        try:
            self.sys.ioctl(
                self.fd, U.VFIO_DEVICE_FEATURE, U.vfio_device_feature.new(flags=flags).to_bytes()
            )
        except VfiokitError as exc:
            if exc.errno in (E.ENOTTY, E.EINVAL, E.EOPNOTSUPP):
                return False
            raise
        return True

    def __del__(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            fd, self.fd = self.fd, -1
            warn_unclosed(self, self.sys, [fd])

    def close(self) -> None:
        """Close the device fd and drop the regions' mmaps; a second close does nothing.

        The fd is closed on every path. If a view of a region's mmap is still held, that
        mapping lives on until the view goes (it keeps the device open through its own
        reference), and close() raises Busy once everything else is closed.
        """
        if self.fd < 0:
            return
        for user in list(self._fd_users):
            user.device_closing()
        fd, self.fd = self.fd, -1
        first: BaseException | None = None
        for r in self._regions.values():
            try:
                r.close()
            except BaseException as exc:
                first = first or exc
        self._regions.clear()
        try:
            self.sys.close(fd)
        except BaseException as exc:
            first = first or exc
        if first is not None:
            raise first
