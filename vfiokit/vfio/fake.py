"""A fake of every syscall vfiokit.vfio makes, modelling the kernel's side of VFIO and
iommufd for one or more scripted PCI devices. For unit tests (and for trying the API on a
machine without VFIO): no root, no /dev/vfio.

    fake = FakeSyscalls()
    dev = fake.add_device("0000:00:04.0", group="3", cdev="vfio0")
    vd = VfioDevice("0000:00:04.0", sys=fake, sysroot=fake.sysroot(tmpdir))
    fake.fire(dev, 0)            # the device raises INTx: its eventfd is signalled

Errors can be injected per ioctl: ``fake.fail(uapi.VFIO_SET_IOMMU, errno.EPERM)``.

A device model plugs in behind two hooks: a region's `on_write` sees every pwrite of it
(registers with side effects, doorbells), and `dma_read`/`dma_write` reach the memory
mapped at an IOVA, as the device's DMA through the IOMMU would (tests/unit/nvme_model.py
is a small NVMe controller built this way).
"""

from __future__ import annotations

import ctypes
import errno as E
import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from mmap import mmap as Mmap
from pathlib import Path

from ..sysroot import SysRoot
from . import uapi as U
from .sys import VfioError, _ioctl_name, error, error_for, hugetlb_flags, poll_readable

REGION_SHIFT = 40


@dataclass
class FakeRegion:
    flags: int
    size: int
    data: bytearray
    sparse: list[tuple[int, int]] | None = None
    type: tuple[int, int] | None = None  # VFIO_REGION_INFO_CAP_TYPE (type, subtype)
    # Called with (offset, bytes) after every pwrite of the region has been stored in
    # `data`: a device model's registers with side effects.
    on_write: Callable[[int, bytes], None] | None = None
    # The mappings handed out of a region the kernel writes (vfiokit-pci's state page):
    # kept so that its updates reach them, as a shared mapping of the one page would.
    live: list[mmap.mmap] | None = None


class IommuFault(Exception):
    """A device DMA to an IOVA no mapping covers: the IOMMU would block it."""


@dataclass
class FakeFeature:
    """A VFIO_DEVICE_FEATURE the device answers: GET returns `data`, SET replaces it."""

    get: bool = True
    set: bool = True
    data: bytearray = field(default_factory=bytearray)


@dataclass
class FakeDevice:
    address: str
    group: str
    cdev: str | None
    regions: dict[int, FakeRegion]
    irqs: dict[int, tuple[int, int]]  # index -> (flags, count)
    can_reset: bool = True
    vfiokit: bool = False  # answers vfiokit-pci's INTx state feature
    mask_device: int = 0
    triggers: dict[int, list[int]] = field(default_factory=dict)  # index -> eventfds
    masked: bool = False
    unmask_ioctls: int = 0
    unmask_eventfd: int = -1  # the real eventfd of ACTION_UNMASK | DATA_EVENTFD, or -1
    unmask_eventfd_writes: int = 0
    command_writes: list[bytes] = field(default_factory=list)
    resets: int = 0
    features: dict[int, FakeFeature] = field(default_factory=dict)
    bound_iommufd: int | None = None
    attached_ioas: int | None = None
    devid: int = 0  # the iommufd devid BIND_IOMMUFD gave it (0: not bound)
    # Hot reset: the devices with the same reset_bus sit behind one bus (or slot) reset;
    # None: no bus or slot reset (a root bus), ENODEV. `vfio`: bound to a VFIO driver
    # (False: to a host driver, outside the kernel's dev_set, which blocks the reset).
    reset_bus: str | None = None
    vfio: bool = True
    hot_resets: int = 0
    power_on: dict[int, bytes] = field(default_factory=dict)  # region -> its contents


class _HugeMmap(mmap.mmap):
    """The fake's huge page mapping: plain memory (so its address is aligned to a CPU
    page only, where the kernel's is aligned to the huge page), its pages back in the
    pool on close()."""

    give_back: Callable[[], None] | None = None

    def close(self) -> None:
        if not self.closed:
            super().close()  # BufferError while views are held: nothing given back yet
            if self.give_back is not None:
                self.give_back()


@dataclass
class _Fd:
    kind: str  # container, group, device, cdev, iommufd, eventfd
    obj: object = None


class FakeSyscalls:
    def __init__(
        self,
        *,
        memlock: int = 64 << 20,
        iova_ranges: list[tuple[int, int]] | None = None,
        pgsizes: int = 0x1000,
        hugepages: dict[int, int] | None = None,
    ):
        self.devices: dict[str, FakeDevice] = {}
        self.fds: dict[int, _Fd] = {}
        self._next_fd = 1000
        self.memlock = memlock
        self.iova_ranges = iova_ranges or [(0, 0xFEDFFFFF), (0xFEF00000, (1 << 48) - 1)]
        self.pgsizes = pgsizes  # type1's iova_pgsizes; iommufd's alignment is its lowest bit
        self.mappings: dict[int, tuple[int, int]] = {}  # iova -> (vaddr, size)
        self.failures: dict[int, list[int]] = {}
        self.container_groups: list[str] = []
        self.iommu_set = False
        self.ioas_next = 1
        self.devid_next = 1
        self.calls: list[str] = []
        # The hugetlb pools: huge page size -> free pages; None: a kernel without hugetlb.
        # The first size is the default one (/proc/meminfo's Hugepagesize).
        self.hugepages = hugepages

    # -- scripting --------------------------------------------------------------------------
    def add_device(
        self,
        address: str,
        *,
        group: str = "1",
        cdev: str | None = "vfio0",
        bar0_size: int = 0x100000,
        intx: bool = True,
        msi: int = 1,
        msix: int = 0,
        vfiokit: bool = False,
        state_page: bool = True,
        sparse: list[tuple[int, int]] | None = None,
        can_reset: bool = True,
        reset_bus: str | None = None,
    ) -> FakeDevice:
        rw = U.VFIO_REGION_INFO_FLAG_READ | U.VFIO_REGION_INFO_FLAG_WRITE
        regions = {
            0: FakeRegion(
                rw | U.VFIO_REGION_INFO_FLAG_MMAP, bar0_size, bytearray(bar0_size), sparse
            ),
            U.VFIO_PCI_CONFIG_REGION_INDEX: FakeRegion(rw, 256, bytearray(256)),
        }
        if vfiokit and state_page:  # vfiokit-pci's INTx state page (read-only, mappable)
            page = bytearray(mmap.PAGESIZE)
            page[:4] = struct.pack("=I", 1)
            regions[U.VFIO_PCI_NUM_REGIONS] = FakeRegion(
                U.VFIO_REGION_INFO_FLAG_READ | U.VFIO_REGION_INFO_FLAG_MMAP, len(page), page,
                type=(U.VFIOKIT_REGION_TYPE, U.VFIOKIT_REGION_SUBTYPE_INTX_PAGE), live=[],
            )  # fmt: skip
        cfg = regions[U.VFIO_PCI_CONFIG_REGION_INDEX].data
        cfg[0:4] = struct.pack("<HH", 0x1234, 0x11E8)
        cfg[4:6] = struct.pack("<H", 0x0006)  # memory + bus master
        cfg[0x3D] = 1 if intx else 0
        eventfd = U.VFIO_IRQ_INFO_EVENTFD
        irqs = {
            U.VFIO_PCI_INTX_IRQ_INDEX: (
                eventfd | U.VFIO_IRQ_INFO_MASKABLE | U.VFIO_IRQ_INFO_AUTOMASKED,
                int(intx),
            ),
            U.VFIO_PCI_MSI_IRQ_INDEX: (eventfd | U.VFIO_IRQ_INFO_NORESIZE, msi),
            U.VFIO_PCI_MSIX_IRQ_INDEX: (eventfd | U.VFIO_IRQ_INFO_NORESIZE, msix),
        }
        dev = FakeDevice(address, group, cdev, regions, irqs, can_reset, vfiokit)
        dev.reset_bus = reset_bus
        dev.power_on = {i: bytes(r.data) for i, r in regions.items()}
        for low_power in (  # vfio-pci-core's own features, SET only
            U.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY,
            U.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP,
            U.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT,
        ):
            dev.features[low_power] = FakeFeature(get=False, set=True)
        self.devices[address] = dev
        return dev

    def fail(self, request: int, err: int, times: int = 1) -> None:
        self.failures.setdefault(request, []).extend([err] * times)

    def fire(self, dev: FakeDevice, index: int, vector: int = 0) -> None:
        """The device raises interrupt `vector` of `index` (INTx is then masked)."""
        if index == U.VFIO_PCI_INTX_IRQ_INDEX:
            if dev.masked:
                return
            dev.masked = True
            self._publish_page(dev)  # the handler writes how it masked
        fds = dev.triggers.get(index, [])
        if vector < len(fds) and fds[vector] >= 0:
            os.eventfd_write(fds[vector], 1)

    @staticmethod
    def _publish_page(dev: FakeDevice) -> None:
        """vfiokit-pci's state page: mode and mask_device as the driver writes them."""
        r = dev.regions.get(U.VFIO_PCI_NUM_REGIONS)
        if r is None or r.live is None:
            return
        on = bool(dev.triggers.get(U.VFIO_PCI_INTX_IRQ_INDEX))
        fields = struct.pack("=II", U.VFIOKIT_INTX_ADAPTIVE if on else U.VFIOKIT_INTX_OFF,
                             dev.mask_device if on else 0)  # fmt: skip
        r.data[4:12] = fields
        r.live[:] = [m for m in r.live if not m.closed]
        for m in r.live:
            m[4:12] = fields

    def sysroot(self, root: str | os.PathLike[str]) -> SysRoot:
        """The least sysfs and /dev the session needs for the devices added so far, laid
        out under `root` as the kernel lays them out (a richer fake host for the CLI and
        the host model: tests/fakesys.py)."""
        top = Path(root)
        for dev in self.devices.values():
            d = top / "sys/devices/pci0000:00" / dev.address
            d.mkdir(parents=True, exist_ok=True)
            if dev.cdev is not None:
                (d / "vfio-dev" / dev.cdev).mkdir(parents=True, exist_ok=True)
            g = top / "sys/kernel/iommu_groups" / dev.group / "devices"
            g.mkdir(parents=True, exist_ok=True)
            for link, target in (
                (top / "sys/bus/pci/devices" / dev.address, d),
                (d / "iommu_group", g.parent),
                (g / dev.address, d),
            ):
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.is_symlink():
                    link.symlink_to(os.path.relpath(target, link.parent))
        (top / "dev").mkdir(parents=True, exist_ok=True)
        (top / "dev/iommu").touch()
        if self.hugepages:
            for size in self.hugepages:
                (top / f"sys/kernel/mm/hugepages/hugepages-{size >> 10}kB").mkdir(
                    parents=True, exist_ok=True
                )
            (top / "proc").mkdir(exist_ok=True)
            default = next(iter(self.hugepages)) >> 10
            (top / "proc/meminfo").write_text(f"Hugepagesize:    {default} kB\n")
        return SysRoot(top)

    @property
    def open_fds(self) -> int:
        return len(self.fds)

    # -- helpers ----------------------------------------------------------------------------
    def _new(self, kind: str, obj: object = None) -> int:
        fd = self._next_fd
        self._next_fd += 1
        self.fds[fd] = _Fd(kind, obj)
        return fd

    def _get(self, fd: int, *kinds: str) -> _Fd:
        f = self.fds.get(fd)
        if f is None:
            raise error_for("fake", E.EBADF)
        if kinds and f.kind not in kinds:
            raise error_for("fake", E.ENOTTY)
        return f

    @staticmethod
    def _oserror(op: str, code: int) -> VfioError:
        return error(op, OSError(code, os.strerror(code)))

    # -- Syscalls ---------------------------------------------------------------------------
    def open(self, path: str, flags: int = os.O_RDWR) -> int:
        self.calls.append(f"open {path}")
        if path == "/dev/vfio/vfio":
            return self._new("container")
        if path == "/dev/iommu":
            return self._new("iommufd")
        if path.startswith("/dev/vfio/devices/"):
            name = path.rsplit("/", 1)[1]
            for dev in self.devices.values():
                if dev.cdev == name:
                    return self._new("cdev", dev)
        elif path.startswith("/dev/vfio/"):
            group = path.rsplit("/", 1)[1]
            if any(d.group == group for d in self.devices.values()):
                # As vfio_group_fops_open(): one open file per group node.
                if any(f.kind == "group" and f.obj == group for f in self.fds.values()):
                    raise self._oserror("open", E.EBUSY)
                return self._new("group", group)
        raise self._oserror("open", E.ENOENT)

    def close(self, fd: int) -> None:
        f = self.fds.pop(fd, None)
        if f is None:
            raise self._oserror("close", E.EBADF)
        if f.kind == "eventfd":
            os.close(f.obj)  # type: ignore[arg-type]
        if f.kind in ("device", "cdev") and isinstance(f.obj, FakeDevice):
            f.obj.triggers.clear()
            f.obj.unmask_eventfd = -1
        if f.kind == "cdev" and isinstance(f.obj, FakeDevice):
            f.obj.bound_iommufd = f.obj.attached_ioas = None
            f.obj.devid = 0

    def ioctl(self, fd: int, request: int, arg: int | bytearray = 0) -> int:
        pending = self.failures.get(request)
        if pending:
            raise self._oserror(_ioctl_name(request), pending.pop(0))
        f = self._get(fd)
        handler = getattr(self, f"_ioctl_{f.kind}")
        rc: int = handler(f, request, arg)
        return rc

    def _ioctl_container(self, f: _Fd, req: int, arg: int | bytearray) -> int:
        if req == U.VFIO_GET_API_VERSION:
            return U.VFIO_API_VERSION
        if req == U.VFIO_CHECK_EXTENSION:
            return 1 if arg in (U.VFIO_TYPE1_IOMMU, U.VFIO_TYPE1v2_IOMMU) else 0
        if req == U.VFIO_SET_IOMMU:
            if not self.container_groups:
                raise self._oserror("VFIO_SET_IOMMU", E.EINVAL)
            self.iommu_set = True
            return 0
        if req == U.VFIO_IOMMU_GET_INFO:
            return self._iommu_info(arg)  # type: ignore[arg-type]
        if req in (U.VFIO_IOMMU_MAP_DMA, U.VFIO_IOMMU_UNMAP_DMA):
            if not self.iommu_set:
                raise self._oserror("DMA", E.EINVAL)
            if req == U.VFIO_IOMMU_MAP_DMA:
                m = U.vfio_iommu_type1_dma_map.parse(arg)  # type: ignore[arg-type]
                return self._map(m.vaddr, m.iova, m.size)
            u = U.vfio_iommu_type1_dma_unmap.parse(arg)  # type: ignore[arg-type]
            u.size = self._unmap(u.iova, u.size, nothing_is_ok=True)
            arg[: ctypes.sizeof(u)] = bytes(u)  # type: ignore[index]
            return 0
        raise self._oserror(f"ioctl {req:#x}", E.ENOTTY)

    def _iommu_info(self, buf: bytearray) -> int:
        base = ctypes.sizeof(U.vfio_iommu_type1_info)
        cap = ctypes.sizeof(U.vfio_iommu_type1_info_cap_iova_range)
        step = ctypes.sizeof(U.vfio_iova_range)
        need = base + cap + step * len(self.iova_ranges)
        argsz = U.vfio_iommu_type1_info.parse(buf).argsz
        flags = U.VFIO_IOMMU_INFO_PGSIZES | U.VFIO_IOMMU_INFO_CAPS
        if argsz < need:
            buf[:base] = bytes(
                U.vfio_iommu_type1_info(argsz=need, flags=flags, iova_pgsizes=self.pgsizes)
            )
            return 0
        buf[:base] = bytes(
            U.vfio_iommu_type1_info(
                argsz=need, flags=flags, iova_pgsizes=self.pgsizes, cap_offset=base
            )
        )
        hdr = U.vfio_info_cap_header(id=U.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, version=1)
        buf[base : base + cap] = bytes(
            U.vfio_iommu_type1_info_cap_iova_range(header=hdr, nr_iovas=len(self.iova_ranges))
        )
        for i, (a, b) in enumerate(self.iova_ranges):
            buf[base + cap + i * step : base + cap + (i + 1) * step] = bytes(
                U.vfio_iova_range(start=a, end=b)
            )
        return 0

    @property
    def alignment(self) -> int:
        """The smallest IOMMU page (type1's check; iommufd's out_iova_alignment)."""
        return max(mmap.PAGESIZE, self.pgsizes & -self.pgsizes)

    def _map(self, vaddr: int, iova: int, size: int) -> int:
        align = self.alignment
        if size == 0 or iova % align or size % align or vaddr % align:
            raise self._oserror("DMA map", E.EINVAL)
        if not any(a <= iova and iova + size - 1 <= b for a, b in self.iova_ranges):
            raise self._oserror("DMA map", E.EINVAL)
        for start, (_, length) in self.mappings.items():
            if start < iova + size and iova < start + length:
                raise self._oserror("DMA map", E.EEXIST)
        if sum(s for _, s in self.mappings.values()) + size > self.memlock:
            raise self._oserror("DMA map", E.ENOMEM)
        self.mappings[iova] = (vaddr, size)
        return 0

    def _translate(self, iova: int, size: int) -> int:
        """The host address of [iova, iova + size), which one mapping must cover."""
        for start, (vaddr, length) in self.mappings.items():
            if start <= iova and iova + size <= start + length:
                return vaddr + iova - start
        raise IommuFault(f"DMA of {size} bytes at IOVA {iova:#x}: not mapped")

    def dma_read(self, iova: int, size: int) -> bytes:
        """What a device reads at `iova` (IommuFault where nothing is mapped)."""
        return ctypes.string_at(self._translate(iova, size), size)

    def dma_write(self, iova: int, data: bytes) -> None:
        """A device's write of `data` at `iova` (IommuFault where nothing is mapped)."""
        ctypes.memmove(self._translate(iova, len(data)), data, len(data))

    def _unmap(self, iova: int, size: int, nothing_is_ok: bool = False) -> int:
        """Unmap the mappings within [iova, iova + size): the bytes unmapped. One only
        partly inside is EINVAL; none at all is success with 0 bytes for type1
        (`nothing_is_ok`), ENOENT for iommufd."""
        if size == 0 or iova % self.alignment or size % self.alignment:
            raise self._oserror("DMA unmap", E.EINVAL)
        hit = []
        for start, (_, length) in self.mappings.items():
            if start < iova + size and iova < start + length:
                if start < iova or start + length > iova + size:
                    raise self._oserror("DMA unmap", E.EINVAL)
                hit.append(start)
        if not hit and not nothing_is_ok:
            raise self._oserror("DMA unmap", E.ENOENT)
        return sum(self.mappings.pop(start)[1] for start in hit)

    def _ioctl_group(self, f: _Fd, req: int, arg: int | bytearray) -> int:
        group = f.obj
        if req == U.VFIO_GROUP_GET_STATUS:
            flags = U.VFIO_GROUP_FLAGS_VIABLE
            if group in self.container_groups:
                flags |= U.VFIO_GROUP_FLAGS_CONTAINER_SET
            arg[:8] = bytes(U.vfio_group_status(argsz=8, flags=flags))  # type: ignore[index]
            return 0
        if req == U.VFIO_GROUP_SET_CONTAINER:
            cfd = struct.unpack("=i", bytes(arg[:4]))[0]  # type: ignore[index]
            self._get(cfd, "container")
            self.container_groups.append(group)  # type: ignore[arg-type]
            return 0
        if req == U.VFIO_GROUP_GET_DEVICE_FD:
            if group not in self.container_groups or not self.iommu_set:
                raise self._oserror("VFIO_GROUP_GET_DEVICE_FD", E.EINVAL)
            name = bytes(arg).split(b"\0", 1)[0].decode()
            dev = self.devices.get(name)
            if dev is None or dev.group != group:
                raise self._oserror("VFIO_GROUP_GET_DEVICE_FD", E.ENODEV)
            return self._new("device", dev)
        raise self._oserror(f"ioctl {req:#x}", E.ENOTTY)

    def _ioctl_iommufd(self, f: _Fd, req: int, arg: bytearray) -> int:
        if req == U.IOMMU_IOAS_ALLOC:
            a = U.iommu_ioas_alloc.parse(arg)
            a.out_ioas_id = self.ioas_next
            self.ioas_next += 1
            arg[: ctypes.sizeof(a)] = bytes(a)
            return 0
        if req == U.IOMMU_IOAS_IOVA_RANGES:
            r = U.iommu_ioas_iova_ranges.parse(arg)
            n = len(self.iova_ranges)
            r.out_iova_alignment = self.alignment
            if r.num_iovas < n:
                r.num_iovas = n
                arg[: ctypes.sizeof(r)] = bytes(r)
                raise self._oserror("IOMMU_IOAS_IOVA_RANGES", E.EMSGSIZE)
            out = (U.iommu_iova_range * n).from_address(r.allowed_iovas)
            for i, (first, last) in enumerate(self.iova_ranges):
                out[i].start, out[i].last = first, last
            r.num_iovas = n
            arg[: ctypes.sizeof(r)] = bytes(r)
            return 0
        if req == U.IOMMU_IOAS_MAP:
            m = U.iommu_ioas_map.parse(arg)
            if not m.flags & U.IOMMU_IOAS_MAP_FIXED_IOVA:
                raise self._oserror("IOMMU_IOAS_MAP", E.EINVAL)
            return self._map(m.user_va, m.iova, m.length)
        if req == U.IOMMU_IOAS_UNMAP:
            u = U.iommu_ioas_unmap.parse(arg)
            u.length = self._unmap(u.iova, u.length)
            arg[: ctypes.sizeof(u)] = bytes(u)
            return 0
        raise self._oserror(f"ioctl {req:#x}", E.ENOTTY)

    def _ioctl_cdev(self, f: _Fd, req: int, arg: int | bytearray) -> int:
        dev: FakeDevice = f.obj  # type: ignore[assignment]
        if req == U.VFIO_DEVICE_BIND_IOMMUFD:
            b = U.vfio_device_bind_iommufd.parse(arg)  # type: ignore[arg-type]
            self._get(b.iommufd, "iommufd")
            # The group's DMA ownership: one iommufd for all devices of a group (the
            # kernel says EPERM, seen on 6.12).
            for other in self.devices.values():
                if (
                    other is not dev
                    and other.group == dev.group
                    and other.bound_iommufd not in (None, b.iommufd)
                    and other.bound_iommufd in self.fds
                ):
                    raise self._oserror("VFIO_DEVICE_BIND_IOMMUFD", E.EPERM)
            dev.bound_iommufd = b.iommufd
            dev.devid = self.devid_next
            self.devid_next += 1
            b.out_devid = dev.devid
            arg[: ctypes.sizeof(b)] = bytes(b)  # type: ignore[index]
            return 0
        if req == U.VFIO_DEVICE_ATTACH_IOMMUFD_PT:
            if dev.bound_iommufd is None:
                raise self._oserror("VFIO_DEVICE_ATTACH_IOMMUFD_PT", E.EINVAL)
            dev.attached_ioas = U.vfio_device_attach_iommufd_pt.parse(arg).pt_id  # type: ignore[arg-type]
            return 0
        if dev.attached_ioas is None:
            raise self._oserror(f"ioctl {req:#x}", E.EINVAL)
        return self._ioctl_device(f, req, arg)

    def _ioctl_device(self, f: _Fd, req: int, arg: int | bytearray) -> int:
        dev: FakeDevice = f.obj  # type: ignore[assignment]
        buf: bytearray = arg  # type: ignore[assignment]
        if req == U.VFIO_DEVICE_GET_INFO:
            flags = U.VFIO_DEVICE_FLAGS_PCI | (U.VFIO_DEVICE_FLAGS_RESET if dev.can_reset else 0)
            buf[:24] = bytes(
                U.vfio_device_info(
                    argsz=24, flags=flags, num_regions=self._num_regions(dev), num_irqs=5
                )
            )
            return 0
        if req == U.VFIO_DEVICE_GET_REGION_INFO:
            return self._region_info(dev, buf)
        if req == U.VFIO_DEVICE_GET_IRQ_INFO:
            info = U.vfio_irq_info.parse(buf)
            if info.index > 4:
                raise self._oserror("VFIO_DEVICE_GET_IRQ_INFO", E.EINVAL)
            flags, count = dev.irqs.get(info.index, (U.VFIO_IRQ_INFO_EVENTFD, 0))
            buf[:16] = bytes(U.vfio_irq_info(argsz=16, flags=flags, index=info.index, count=count))
            return 0
        if req == U.VFIO_DEVICE_SET_IRQS:
            return self._set_irqs(dev, bytes(buf))
        if req == U.VFIO_DEVICE_RESET:
            if not dev.can_reset:
                raise self._oserror("VFIO_DEVICE_RESET", E.EINVAL)
            dev.resets += 1
            return 0
        if req == U.VFIO_DEVICE_FEATURE:
            return self._feature(dev, buf)
        if req == U.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO:
            return self._hot_reset_info(dev, f.kind == "cdev", buf)
        if req == U.VFIO_DEVICE_PCI_HOT_RESET:
            return self._hot_reset(dev, f.kind == "cdev", buf)
        raise self._oserror(f"ioctl {req:#x}", E.ENOTTY)

    # -- hot reset: vfio_pci_core.c's rules (Linux 6.12) ------------------------------------
    def _reset_scope(self, dev: FakeDevice, op: str) -> list[FakeDevice]:
        """The devices behind dev's bus or slot reset (vfio_pci_for_each_slot_or_bus);
        ENODEV where it has neither (pci_probe_reset_slot/bus fail)."""
        if dev.reset_bus is None:
            raise self._oserror(op, E.ENODEV)
        return sorted(
            (d for d in self.devices.values() if d.reset_bus == dev.reset_bus),
            key=lambda d: d.address,
        )

    def _iommufd_owns(self, iommufd: int | None, d: FakeDevice) -> int | None:
        """vfio_iommufd_get_dev_id(): the devid where `d` is bound to this iommufd, 0
        (-ENOENT: VFIO_PCI_DEVID_OWNED) where its group is (another device of the group
        bound to it), None where it is not owned."""
        if iommufd is None or not d.vfio:
            return None
        if d.bound_iommufd == iommufd:
            return d.devid
        if any(o.group == d.group and o.bound_iommufd == iommufd for o in self.devices.values()):
            return U.VFIO_PCI_DEVID_OWNED
        return None

    def _hot_reset_info(self, dev: FakeDevice, cdev: bool, buf: bytearray) -> int:
        op = "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO"
        hsize = ctypes.sizeof(U.vfio_pci_hot_reset_info)
        step = ctypes.sizeof(U.vfio_pci_dependent_device)
        hdr = U.vfio_pci_hot_reset_info.parse(buf)
        if hdr.argsz < hsize:
            raise self._oserror(op, E.EINVAL)
        scope = self._reset_scope(dev, op)
        if len(scope) > (hdr.argsz - hsize) // step:
            # only the header goes back: the count, flags 0
            buf[:hsize] = bytes(U.vfio_pci_hot_reset_info(argsz=hdr.argsz, count=len(scope)))
            raise self._oserror(op, E.ENOSPC)
        flags = 0
        if cdev:
            flags = U.VFIO_PCI_HOT_RESET_FLAG_DEV_ID | U.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED
        for i, d in enumerate(scope):
            bus, slot, fn = d.address[5:7], d.address[8:10], d.address[11]
            if cdev:
                devid = self._iommufd_owns(dev.bound_iommufd, d)
                if devid is None:
                    devid = U.DEVID_NOT_OWNED
                    flags &= ~U.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED
                ident = devid
            else:
                ident = int(d.group)
            entry = U.vfio_pci_dependent_device(
                group_id=ident,
                segment=int(d.address[:4], 16),
                bus=int(bus, 16),
                devfn=int(slot, 16) << 3 | int(fn, 16),
            )
            buf[hsize + i * step : hsize + (i + 1) * step] = bytes(entry)
        buf[:hsize] = bytes(
            U.vfio_pci_hot_reset_info(argsz=hdr.argsz, flags=flags, count=len(scope))
        )
        return 0

    def _hot_reset(self, dev: FakeDevice, cdev: bool, buf: bytearray) -> int:
        op = "VFIO_DEVICE_PCI_HOT_RESET"
        hsize = ctypes.sizeof(U.vfio_pci_hot_reset)
        hdr = U.vfio_pci_hot_reset.parse(buf)
        if hdr.argsz < hsize or hdr.flags:
            raise self._oserror(op, E.EINVAL)
        # A zero-length array is for a cdev-opened device only, and only it.
        if bool(hdr.count) == cdev:
            raise self._oserror(op, E.EINVAL)
        scope = self._reset_scope(dev, op)
        groups: set[str] = set()
        if hdr.count:
            if hdr.count > len(scope):  # one group per device at most
                raise self._oserror(op, E.EINVAL)
            fds = struct.unpack(f"={hdr.count}i", bytes(buf[hsize : hsize + 4 * hdr.count]))
            for fd in fds:
                f = self.fds.get(fd)
                if f is None:
                    raise self._oserror(op, E.EBADF)
                if f.kind != "group":  # vfio_file_is_group()
                    raise self._oserror(op, E.EINVAL)
                groups.add(f.obj)  # type: ignore[arg-type]
        # vfio_pci_dev_set_resettable(): every device behind the reset in the dev_set
        if not all(d.vfio for d in scope):
            raise self._oserror(op, E.EINVAL)
        for d in scope:  # each must be owned: its group given, or by the iommufd
            owned = (
                self._iommufd_owns(dev.bound_iommufd, d) is not None if cdev else d.group in groups
            )
            if not owned:
                raise self._oserror(op, E.EINVAL)
        for d in scope:
            self._power_on_reset(d)
        return 0

    @staticmethod
    def _power_on_reset(dev: FakeDevice) -> None:
        """A bus reset: the device's registers (its BARs) go back to their power-on
        contents; its config space is what the kernel saved before the reset and restores
        after it, but for Interrupt Status, which no device asserts after a reset."""
        dev.hot_resets += 1
        for index, data in dev.power_on.items():
            if index < U.VFIO_PCI_ROM_REGION_INDEX:
                dev.regions[index].data[:] = data
        cfg = dev.regions[U.VFIO_PCI_CONFIG_REGION_INDEX].data
        cfg[6] &= ~0x08 & 0xFF  # PCI_STATUS_INTERRUPT

    def add_region(
        self, dev: FakeDevice, index: int, size: int, type: tuple[int, int] | None = None
    ) -> FakeRegion:
        """A device-specific region (index >= VFIO_PCI_NUM_REGIONS), readable."""
        r = FakeRegion(U.VFIO_REGION_INFO_FLAG_READ, size, bytearray(size), type=type)
        dev.regions[index] = r
        return r

    def _feature(self, dev: FakeDevice, buf: bytearray) -> int:
        """vfio_check_feature()'s rules: GET or SET (PROBE: either or none), argsz
        covering the payload, ENOTTY for a feature the device lacks, EINVAL for an
        operation it lacks."""
        hdr = U.vfio_device_feature.parse(buf)
        feature = hdr.flags & U.VFIO_DEVICE_FEATURE_MASK
        get = bool(hdr.flags & U.VFIO_DEVICE_FEATURE_GET)
        set_ = bool(hdr.flags & U.VFIO_DEVICE_FEATURE_SET)
        probe = bool(hdr.flags & U.VFIO_DEVICE_FEATURE_PROBE)
        if hdr.argsz < 8 or (get and set_ and not probe):
            raise self._oserror("VFIO_DEVICE_FEATURE", E.EINVAL)
        if feature == U.VFIOKIT_DEVICE_FEATURE_INTX_STATE and dev.vfiokit:
            if set_:
                raise self._oserror("VFIO_DEVICE_FEATURE", E.EINVAL)
            if probe:
                return 0
            st = U.vfiokit_intx_state(
                version=1,
                mode=U.VFIOKIT_INTX_ADAPTIVE,
                irq=20,
                mask_device=dev.mask_device,
                masked=int(dev.masked),
            )
            buf[8 : 8 + ctypes.sizeof(st)] = bytes(st)
            return 0
        f = dev.features.get(feature)
        if f is None:
            raise self._oserror("VFIO_DEVICE_FEATURE", E.ENOTTY)
        if (get and not f.get) or (set_ and not f.set) or not (get or set_ or probe):
            raise self._oserror("VFIO_DEVICE_FEATURE", E.EINVAL)
        if probe:
            return 0
        if get:
            if hdr.argsz < 8 + len(f.data):
                raise self._oserror("VFIO_DEVICE_FEATURE", E.EINVAL)
            buf[8 : 8 + len(f.data)] = f.data
        else:
            f.data[:] = buf[8 : hdr.argsz]
        return 0

    def _region_info(self, dev: FakeDevice, buf: bytearray) -> int:
        info = U.vfio_region_info.parse(buf)
        if info.index >= self._num_regions(dev):
            raise self._oserror("VFIO_DEVICE_GET_REGION_INFO", E.EINVAL)
        r = dev.regions.get(info.index)
        size, flags = (r.size, r.flags) if r else (0, 0)
        base = ctypes.sizeof(U.vfio_region_info)
        hsize = ctypes.sizeof(U.vfio_info_cap_header)
        caps: list[tuple[int, bytes]] = []  # (cap id, its body after the header)
        if r and r.sparse is not None:
            body = bytes(U.vfio_region_info_cap_sparse_mmap(nr_areas=len(r.sparse)))[hsize:]
            for o, sz in r.sparse:
                body += bytes(U.vfio_region_sparse_mmap_area(offset=o, size=sz))
            caps.append((U.VFIO_REGION_INFO_CAP_SPARSE_MMAP, body))
        if r and r.type is not None:
            caps.append((U.VFIO_REGION_INFO_CAP_TYPE, struct.pack("=II", *r.type)))
        need = base + sum(hsize + len(body) for _, body in caps)
        if caps:
            flags |= U.VFIO_REGION_INFO_FLAG_CAPS
        fits = info.argsz >= need
        buf[:base] = bytes(
            U.vfio_region_info(
                argsz=need,
                flags=flags,
                index=info.index,
                cap_offset=base if caps and fits else 0,
                size=size,
                offset=info.index << REGION_SHIFT,
            )
        )
        if fits:
            pos = base
            for i, (cap_id, body) in enumerate(caps):
                end = pos + hsize + len(body)
                hdr = U.vfio_info_cap_header(
                    id=cap_id, version=1, next=end if i + 1 < len(caps) else 0
                )
                buf[pos:end] = bytes(hdr) + body
                pos = end
        return 0

    @staticmethod
    def _num_regions(dev: FakeDevice) -> int:
        return max(U.VFIO_PCI_NUM_REGIONS, max(dev.regions) + 1)

    def _set_irqs(self, dev: FakeDevice, data: bytes) -> int:
        hdr = U.vfio_irq_set.parse(data)
        action = hdr.flags & (
            U.VFIO_IRQ_SET_ACTION_MASK
            | U.VFIO_IRQ_SET_ACTION_UNMASK
            | U.VFIO_IRQ_SET_ACTION_TRIGGER
        )
        dtype = hdr.flags & 7
        _flags, count = dev.irqs.get(hdr.index, (0, 0))
        if (
            hdr.argsz < 20
            or dtype not in (1, 2, 4)
            or bin(action).count("1") != 1
            or (hdr.start + hdr.count > count and not (hdr.count == 0 and dtype == 1))
        ):
            raise self._oserror("VFIO_DEVICE_SET_IRQS", E.EINVAL)
        payload = data[20:]
        if action == U.VFIO_IRQ_SET_ACTION_TRIGGER:
            if dtype == U.VFIO_IRQ_SET_DATA_EVENTFD:
                fds = list(struct.unpack(f"={hdr.count}i", payload[: 4 * hdr.count]))
                for efd in fds:
                    if efd >= 0:
                        self._get(efd, "eventfd")
                dev.triggers[hdr.index] = [self.fds[e].obj if e >= 0 else -1 for e in fds]  # type: ignore[misc]
                if hdr.index == U.VFIO_PCI_INTX_IRQ_INDEX:
                    dev.masked = False
                    self._publish_page(dev)
            elif hdr.count == 0:
                dev.triggers.pop(hdr.index, None)
                if hdr.index == U.VFIO_PCI_INTX_IRQ_INDEX:
                    dev.unmask_eventfd = -1  # vfio_intx_disable ends the virqfd too
                    self._publish_page(dev)
            else:
                for i in range(hdr.start, hdr.start + hdr.count):
                    fds = dev.triggers.get(hdr.index, [])
                    if i < len(fds) and fds[i] >= 0:
                        os.eventfd_write(fds[i], 1)
        elif action == U.VFIO_IRQ_SET_ACTION_UNMASK and dtype == U.VFIO_IRQ_SET_DATA_EVENTFD:
            if hdr.index != U.VFIO_PCI_INTX_IRQ_INDEX or not dev.triggers.get(hdr.index):
                raise self._oserror("VFIO_DEVICE_SET_IRQS", E.EINVAL)  # INTx not enabled
            (efd,) = struct.unpack("=i", payload[:4])
            dev.unmask_eventfd = self._real(efd) if efd >= 0 else -1
        elif action == U.VFIO_IRQ_SET_ACTION_UNMASK:
            dev.unmask_ioctls += 1
            dev.masked = False
        elif action == U.VFIO_IRQ_SET_ACTION_MASK:
            dev.masked = True
        return 0

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        dev: FakeDevice = self._get(fd, "device", "cdev").obj  # type: ignore[assignment]
        r = dev.regions.get(offset >> REGION_SHIFT)
        off = offset & ((1 << REGION_SHIFT) - 1)
        if r is None or off >= r.size:
            raise self._oserror("pread", E.EINVAL)
        return bytes(r.data[off : off + size])

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        dev: FakeDevice = self._get(fd, "device", "cdev").obj  # type: ignore[assignment]
        index = offset >> REGION_SHIFT
        r = dev.regions.get(index)
        off = offset & ((1 << REGION_SHIFT) - 1)
        if r is None or off + len(data) > r.size or not r.flags & U.VFIO_REGION_INFO_FLAG_WRITE:
            raise self._oserror("pwrite", E.EINVAL)
        was_disabled = bool(r.data[5] & 0x04)
        r.data[off : off + len(data)] = data
        if index == U.VFIO_PCI_CONFIG_REGION_INDEX and off <= 5 and off + len(data) > 4:
            dev.command_writes.append(bytes(data))
            # vfio-pci and vfiokit-pci alike: only a change of INTx Disable masks (0->1)
            # or unmasks (1->0); any other write leaves the interrupt as it is.
            disabled = bool(r.data[5] & 0x04)
            if disabled != was_disabled:
                dev.masked = disabled
        if r.on_write is not None:
            r.on_write(off, bytes(data))
        return len(data)

    def mmap(self, fd: int, length: int, offset: int, writable: bool = True) -> Mmap:
        dev: FakeDevice = self._get(fd, "device", "cdev").obj  # type: ignore[assignment]
        r = dev.regions.get(offset >> REGION_SHIFT)
        off = offset & ((1 << REGION_SHIFT) - 1)
        if (
            r is None
            or not r.flags & U.VFIO_REGION_INFO_FLAG_MMAP
            or off % mmap.PAGESIZE
            or off + length > r.size
        ):
            raise self._oserror("mmap", E.EINVAL)
        if writable and not r.flags & U.VFIO_REGION_INFO_FLAG_WRITE:
            raise self._oserror("mmap", E.EPERM)  # vfiokit-pci's page: PROT_WRITE refused
        m = mmap.mmap(-1, length)
        m[:] = bytes(r.data[off : off + length])
        if r.live is not None:
            r.live.append(m)
        return m

    def anon_mmap(self, length: int, page_size: int = 0) -> Mmap:
        if not page_size:
            return mmap.mmap(-1, length, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        # As ksys_mmap_pgoff(): EINVAL for a size the kernel has no pool of, the length
        # rounded up to whole huge pages, ENOMEM when the pool cannot reserve them.
        hugetlb_flags(page_size)
        if self.hugepages is None or page_size not in self.hugepages:
            raise self._oserror("mmap", E.EINVAL)
        n = -(-length // page_size)
        if self.hugepages[page_size] < n:
            raise self._oserror("mmap", E.ENOMEM)
        self.hugepages[page_size] -= n
        m = _HugeMmap(-1, n * page_size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        m.give_back = lambda: self._hugepages_freed(page_size, n)
        return m

    def _hugepages_freed(self, page_size: int, n: int) -> None:
        assert self.hugepages is not None
        self.hugepages[page_size] += n

    def address_of(self, buf: Mmap) -> int:
        return ctypes.addressof(ctypes.c_char.from_buffer(buf))

    def eventfd(self, nonblock: bool = True) -> int:
        real = os.eventfd(0, os.EFD_CLOEXEC | (os.EFD_NONBLOCK if nonblock else 0))
        return self._new("eventfd", real)

    def _real(self, fd: int) -> int:
        return self._get(fd, "eventfd").obj  # type: ignore[return-value]

    def eventfd_read(self, fd: int) -> int:
        try:
            return os.eventfd_read(self._real(fd))
        except BlockingIOError:
            return 0

    # The raw builtins of the per-interrupt path (see Syscalls): the same models, with the
    # builtins' signatures; a closed fd raises what the builtin would.
    def raw_ioctl(self, fd: int, request: int, arg: bytearray, mutate: bool = True, /) -> int:
        self._raw_check(fd)
        return self.ioctl(fd, request, arg)

    def raw_eventfd_read(self, fd: int, /) -> int:
        self._raw_check(fd)
        return os.eventfd_read(self._real(fd))

    def raw_eventfd_write(self, fd: int, value: int, /) -> None:
        self._raw_check(fd)
        self.eventfd_write(fd, value)

    def _raw_check(self, fd: int) -> None:
        if fd < 0:
            raise ValueError("negative file descriptor")  # what os.eventfd_read says
        if fd not in self.fds:
            raise OSError(E.EBADF, os.strerror(E.EBADF))

    def eventfd_write(self, fd: int, value: int = 1) -> None:
        real = self._real(fd)
        for dev in self.devices.values():
            if dev.unmask_eventfd == real:  # the kernel's virqfd consumes it and unmasks
                dev.unmask_eventfd_writes += 1
                dev.masked = False
                return
        os.eventfd_write(real, value)

    def pollable(self, fd: int) -> int:
        return self._real(fd)

    def wait_readable(self, fds: list[int], timeout: float | None) -> list[int]:
        real = {self._real(fd): fd for fd in fds}
        return [real[r] for r in poll_readable(list(real), timeout)]
