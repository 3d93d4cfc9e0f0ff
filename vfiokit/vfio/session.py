"""Open PCI devices through VFIO, with the legacy container/group uAPI or iommufd + the
VFIO device cdev, and own everything that comes with them until close().

One device, with a DMA space of its own:

    with vfiokit.vfio.open_device("0000:00:04.0") as vd:
        bar0 = vd.device.bar(0).mmap().cast("I")
        intx = vd.intx()
        buf = vd.dma_buffer(4096)

Several devices in one DMA space (a GPU and its audio function, the two ports of a NIC,
or devices that DMA to each other's buffers): an IommuContext owns the container or the
iommufd IOAS, the groups and the buffers; each buffer is mapped once and every device of
the context sees it at the same IOVA.

    with vfiokit.vfio.IommuContext() as ctx:
        a, b = ctx.open_device("0000:00:04.0"), ctx.open_device("0000:00:08.0")
        buf = ctx.dma_buffer(4096)
"""

from __future__ import annotations

import errno as E
import warnings
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ..address import PciAddress
from ..errors import Busy, InvalidArgument, NotFound, PermissionDenied, Unsupported
from ..iommu import read_group
from ..sysroot import SysRoot
from . import uapi as U
from .device import AffectedDevice, Device, HotResetScope
from .dma import DmaBuffer, HugepagesUnavailable, IovaAllocator
from .iommu import Container, DmaSpace, Group, IommuFd
from .irq import Intx, Vectors
from .sys import RealSyscalls, Syscalls

BACKENDS = ("auto", "legacy", "iommufd")
HUGEPAGES = ("off", "prefer", "require")


class _Closeable(Protocol):
    def close(self) -> None: ...


_C = TypeVar("_C", bound=_Closeable)


class HotResetRefused(PermissionDenied):
    """A hot reset would hit devices this IommuContext does not own: `devices` names them
    (PCI addresses). Nothing was reset; no syscall failed, so there is no errno."""

    def __init__(self, message: str, devices: list[str], remedy: str | None = None):
        super().__init__(message, remedy=remedy)
        self.devices = devices


@dataclass(frozen=True)
class HotResetPlan:
    """What VfioDevice.hot_reset() would do: the scope the kernel reported, the group fds
    it would pass (legacy uAPI; none with iommufd), and the affected devices this context
    does not own, each with the reason (empty: the reset can go ahead)."""

    scope: HotResetScope
    group_fds: list[int]
    not_owned: list[tuple[AffectedDevice, str]]

    @property
    def allowed(self) -> bool:
        return not self.not_owned and self.scope.all_owned is not False


def _cdev_name(sysroot: SysRoot, bdf: str) -> str | None:
    names = sysroot.listdir(f"/sys/bus/pci/devices/{bdf}/vfio-dev")
    return names[0] if names else None


def choose_backend(sysroot: SysRoot, bdf: str, backend: str = "auto") -> str:
    """iommufd where the kernel has /dev/iommu and the device a VFIO cdev, else legacy."""
    if backend not in BACKENDS:
        raise InvalidArgument(
            f"unknown backend {backend!r}", remedy=f"one of {', '.join(BACKENDS)}"
        )
    cdev = _cdev_name(sysroot, bdf)
    has_iommufd = sysroot.exists("/dev/iommu") and cdev is not None
    if backend == "iommufd" and not has_iommufd:
        raise Unsupported(
            f"no iommufd path for {bdf} (/dev/iommu or its VFIO cdev missing)",
            remedy="use the legacy backend, or a kernel with CONFIG_IOMMUFD and "
            "CONFIG_VFIO_DEVICE_CDEV",
        )
    if backend == "auto":
        return "iommufd" if has_iommufd else "legacy"
    return backend


def default_hugepage_size(sysroot: SysRoot) -> int | None:
    """The kernel's default huge page size in bytes (/proc/meminfo's Hugepagesize, else
    the smallest pool in /sys/kernel/mm/hugepages); None without hugetlb."""
    for line in (sysroot.read("/proc/meminfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key == "Hugepagesize" and value.split() and value.split()[0].isdigit():
            return int(value.split()[0]) << 10
    sizes = [
        int(name[len("hugepages-") : -len("kB")]) << 10
        for name in sysroot.listdir("/sys/kernel/mm/hugepages")
        if name.startswith("hugepages-") and name.endswith("kB") and name[10:-2].isdigit()
    ]
    return min(sizes) if sizes else None


def _close_all(objs: list[Any], errors: list[BaseException], how: str = "close") -> None:
    """Call `how` on each object in reverse order, collecting errors, and empty the list."""
    while objs:
        try:
            getattr(objs.pop(), how)()
        except BaseException as exc:  # keep closing the rest
            errors.append(exc)


class IommuContext:
    """One DMA address space (a type1v2 container, or an iommufd IOAS) with any number of
    devices opened in it; libvfn's iommu context, the VFIO selftests' iommu.

    The backend is decided by the first device ("auto": iommufd where it has a VFIO cdev)
    and kept for the others. With the legacy uAPI the group of each device joins the one
    container, and a group is opened once for all its devices; with iommufd every device
    binds to the one iommufd and attaches to its IOAS (the kernel lets the devices of a
    group be owned by one iommufd only). DMA buffers are mapped once, visible to all.
    `dma_limit` is the highest IOVA any of the devices can address.
    """

    def __init__(
        self,
        *,
        backend: str = "auto",
        sysroot: SysRoot | None = None,
        sys: Syscalls | None = None,
        dma_limit: int = (1 << 64) - 1,
    ):
        if backend not in BACKENDS:
            raise InvalidArgument(
                f"unknown backend {backend!r}", remedy=f"one of {', '.join(BACKENDS)}"
            )
        self.sysroot = sysroot or SysRoot()
        self.sys = sys or RealSyscalls()
        self.requested_backend = backend
        self.backend: str | None = None  # decided by the first device
        self.dma_limit = dma_limit
        self.dma: DmaSpace | None = None
        self.allocator: IovaAllocator | None = None
        self._groups: dict[str, Group] = {}
        self._devices: dict[str, VfioDevice] = {}
        self._buffers: dict[int, DmaBuffer] = {}  # id -> buffer, in order of creation
        self._closed = False
        self._private = False  # made by a lone VfioDevice, which warns for both

    # -- devices ----------------------------------------------------------------------------
    def open_device(self, address: str) -> VfioDevice:
        """Open a device in this context; it is closed with the context, or before by its
        own close()."""
        return VfioDevice(address, context=self)

    @property
    def devices(self) -> list[VfioDevice]:
        return list(self._devices.values())

    def _attach(self, address: str) -> Device:
        """The device fd of `address`, in this DMA space (for VfioDevice)."""
        if self._closed:
            raise InvalidArgument("the IommuContext is closed")
        if address in self._devices:
            raise Busy(f"{address} is already open in this context", remedy="use that object")
        base = f"/sys/bus/pci/devices/{address}"
        if not self.sysroot.exists(base):
            raise NotFound(f"no PCI device {address}", remedy="see `vfiokit list`")
        want = self.backend or self.requested_backend
        backend = choose_backend(self.sysroot, address, want)
        first = self.dma is None
        device = self._attach_legacy(address, base) if backend == "legacy" else None
        if device is None:
            device = self._attach_iommufd(address)
        self.backend = backend
        if first:
            try:
                assert self.dma is not None
                align = self.dma.iova_alignment()
                self.allocator = IovaAllocator(
                    self.dma.iova_ranges(), limit=self.dma_limit, align=align, reserve_low=align
                )
            except BaseException:
                device.close()
                raise
        return device

    def _attach_legacy(self, address: str, base: str) -> Device:
        sys = self.sys
        number = self.sysroot.link_name(f"{base}/iommu_group")
        if number is None:
            raise Unsupported(f"{address} has no IOMMU group", remedy="`vfiokit doctor`")
        if self.dma is None:
            self.dma = Container.open(sys)
        assert isinstance(self.dma, Container)
        group = self._groups.get(number)
        new_group = group is None
        if group is None:
            group = Group.open(sys, number, self.dma, lambda: self._blockers(number))
            self._groups[number] = group
        try:
            return Device(sys, group.device_fd(address), address)
        except BaseException:
            if new_group:  # no other device holds it
                del self._groups[number]
                group.close()
            raise

    def _attach_iommufd(self, address: str) -> Device:
        sys = self.sys
        if self.dma is None:
            self.dma = IommuFd.open(sys)
        assert isinstance(self.dma, IommuFd)
        cdev = _cdev_name(self.sysroot, address)
        fd = sys.open(f"/dev/vfio/devices/{cdev}")
        try:  # until a Device owns the fd (it does from its constructor on)
            bind = U.vfio_device_bind_iommufd.new(iommufd=self.dma.fd)
            sys.ioctl(fd, U.VFIO_DEVICE_BIND_IOMMUFD, bind.to_bytes())
            attach = U.vfio_device_attach_iommufd_pt.new(pt_id=self.dma.ioas)
            sys.ioctl(fd, U.VFIO_DEVICE_ATTACH_IOMMUFD_PT, attach.to_bytes())
        except BaseException:
            sys.close(fd)
            raise
        return Device(sys, fd, address)

    def _blockers(self, group: str) -> list[str]:
        return [f"{m.address} is {why}" for m, why in read_group(self.sysroot, group).blockers()]

    def _register(self, vd: VfioDevice) -> None:
        self._devices[vd.address] = vd

    def _unregister(self, vd: VfioDevice) -> None:
        self._devices.pop(vd.address, None)

    # -- hot reset --------------------------------------------------------------------------
    def hot_reset_plan(self, address: str) -> HotResetPlan:
        """Plan a hot reset (bus or slot) of the device at `address`, open in this
        context: which devices it hits, and whether this context owns them all.

        Legacy uAPI: the kernel reports each affected device's IOMMU group, and takes the
        fds of those groups as proof of ownership; a device is owned here when this
        context holds its group (a group opened for one device covers its others). iommufd:
        the kernel reports each device's devid in this context's iommufd, or that it is
        not owned (VFIO_PCI_DEVID_NOT_OWNED, VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED clear):
        not opened in this iommufd, and its group not owned by it either.
        """
        vd = self._devices.get(str(PciAddress.parse(address)))
        if vd is None:
            raise InvalidArgument(
                f"{address} is not open in this IommuContext",
                remedy="open it with ctx.open_device(address) first",
            )
        scope = vd.device.hot_reset_scope()
        not_owned: list[tuple[AffectedDevice, str]] = []
        group_fds: list[int] = []
        if scope.by_devid:
            for d in scope.devices:
                if not d.owned:
                    not_owned.append(
                        (d, "not owned by this IommuContext's iommufd: not opened in it, its "
                         "IOMMU group not owned by it, or not bound to a VFIO driver")
                    )  # fmt: skip
        else:
            for d in scope.devices:
                group = self._groups.get(str(d.group))
                if group is None:
                    not_owned.append((d, f"IOMMU group {d.group}, not open in this IommuContext"))
                elif group.fd not in group_fds:
                    group_fds.append(group.fd)
        return HotResetPlan(scope, group_fds, not_owned)

    def hot_reset(self, address: str) -> HotResetPlan:
        """Reset the bus (or slot) of the device at `address` with the arguments its backend
        needs (legacy: the fds of every group in the scope, which this context holds;
        iommufd: none, the kernel checks the iommufd). HotResetRefused, naming the
        devices, if the reset would hit a device this context does not own: nothing is
        reset then. Every device of the scope is reset, its registers and state lost;
        the kernel restores each one's saved config space. The plan carried out is
        returned."""
        plan = self.hot_reset_plan(address)
        if not plan.allowed:
            named = [d.address for d, _ in plan.not_owned]
            why = "; ".join(f"{d.address} ({reason})" for d, reason in plan.not_owned)
            raise HotResetRefused(
                f"hot reset of {address} refused: it would also reset "
                + (why or "devices the kernel says this iommufd does not own"),
                named,
                remedy="bind every device of the scope to vfio-pci and open it in the same "
                "IommuContext (ctx.open_device(BDF)); VfioDevice.hot_reset_plan() shows "
                "the scope",
            )
        self._devices[str(PciAddress.parse(address))].device.hot_reset(plan.group_fds)
        return plan

    # -- DMA --------------------------------------------------------------------------------
    def dma_buffer(
        self,
        size: int,
        *,
        readable: bool = True,
        writable: bool = True,
        hugepages: str = "off",
        hugepage_size: int | None = None,
    ) -> DmaBuffer:
        """A buffer mapped once into this context's DMA space: every device sees it at
        `buffer.iova`.

        `hugepages`: "off" (CPU pages), "prefer" (huge pages where the kernel has free
        ones, else CPU pages) or "require" (HugepagesUnavailable if it has none); of
        `hugepage_size` bytes, by default the kernel's default size. A huge page buffer
        is a whole number of huge pages at an IOVA aligned to one (`buf.hugepages`,
        `buf.page_size` say what it got)."""
        if self.dma is None or self.allocator is None:
            raise InvalidArgument(
                "no DMA space yet: open a device in the context first",
                remedy="IommuContext.open_device(address), then dma_buffer()",
            )
        if hugepages not in HUGEPAGES:
            raise InvalidArgument(
                f"hugepages={hugepages!r}", remedy=f"one of {', '.join(HUGEPAGES)}"
            )
        if hugepage_size is not None and (
            hugepage_size <= 0 or hugepage_size & (hugepage_size - 1)
        ):
            raise InvalidArgument(f"huge page size {hugepage_size:#x} is not a power of two")
        page_size = 0
        if hugepages != "off":
            page_size = hugepage_size or default_hugepage_size(self.sysroot) or 0
            if not page_size and hugepages == "require":
                raise HugepagesUnavailable(0, 0, E.EOPNOTSUPP)
        dma, allocator = self.dma, self.allocator

        def make(page_size: int) -> DmaBuffer:
            return DmaBuffer(
                dma,
                self.sys,
                allocator,
                size,
                readable=readable,
                writable=writable,
                on_close=self._forget,
                page_size=page_size,
            )

        try:
            buf = make(page_size)
        except HugepagesUnavailable:
            if hugepages != "prefer":
                raise
            buf = make(0)
        self._buffers[id(buf)] = buf
        return buf

    def _forget(self, obj: object) -> None:
        """A buffer closed before the context: the context no longer needs to keep it."""
        self._buffers.pop(id(obj), None)

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close everything in reverse order: the devices' interrupts, the buffers, the
        devices, the groups, the DMA space. Safe to call twice; the first error is raised
        once all of it is closed."""
        self._closed = True
        errors: list[BaseException] = []
        devices = list(self._devices.values())
        for vd in reversed(devices):
            vd._close_irqs(errors)
        _close_all(list(self._buffers.values()), errors)
        self._buffers.clear()
        for vd in reversed(devices):
            vd._close_device(errors)
        self._devices.clear()
        _close_all(list(self._groups.values()), errors)
        self._groups.clear()
        if self.dma is not None:
            dma, self.dma = self.dma, None
            try:
                dma.close()
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def __del__(self) -> None:
        if getattr(self, "dma", None) is not None and not getattr(self, "_private", False):
            # Its parts close their own fds as they go; no ioctl from a finalizer.
            warnings.warn("unclosed IommuContext", ResourceWarning, source=self, stacklevel=2)

    def __enter__(self) -> IommuContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VfioDevice:
    """A device opened through VFIO, with the objects made from it.

    Alone (`VfioDevice(address)`, or `open_device()`), it has a DMA space of its own and
    closes it with itself. Opened in an IommuContext (`ctx.open_device(address)`), it
    shares the context's DMA space and buffers; its close() then closes only its own
    interrupts and device fd.
    """

    def __init__(
        self,
        address: str,
        *,
        context: IommuContext | None = None,
        backend: str = "auto",
        sysroot: SysRoot | None = None,
        sys: Syscalls | None = None,
        dma_limit: int = (1 << 64) - 1,
    ):
        self.address = str(PciAddress.parse(address))
        self._own_context = context is None
        if context is None:
            context = IommuContext(backend=backend, sysroot=sysroot, sys=sys, dma_limit=dma_limit)
            context._private = True
        self.context = context
        self._owned: dict[int, _Closeable] = {}  # interrupts, in order of creation
        self._open = False
        try:
            self.device: Device = context._attach(self.address)
        except BaseException:
            if self._own_context:
                context.close()
            raise
        self._open = True
        context._register(self)

    @property
    def sysroot(self) -> SysRoot:
        return self.context.sysroot

    @property
    def sys(self) -> Syscalls:
        return self.context.sys

    @property
    def backend(self) -> str:
        assert self.context.backend is not None
        return self.context.backend

    @property
    def dma(self) -> DmaSpace:
        assert self.context.dma is not None
        return self.context.dma

    @property
    def allocator(self) -> IovaAllocator:
        assert self.context.allocator is not None
        return self.context.allocator

    # -- things made from the device, closed with it ----------------------------------------
    def _own(self, obj: _C) -> _C:
        self._owned[id(obj)] = obj
        return obj

    def intx(self, policy: str = "state") -> Intx:
        return self._own(Intx(self.device, policy))

    def msi(self, count: int = 1) -> Vectors:
        return self._own(Vectors(self.device, U.VFIO_PCI_MSI_IRQ_INDEX, count))

    def msix(self, count: int = 1) -> Vectors:
        return self._own(Vectors(self.device, U.VFIO_PCI_MSIX_IRQ_INDEX, count))

    def hot_reset_plan(self) -> HotResetPlan:
        """What hot_reset() would do: the devices it hits and which are not owned here."""
        return self.context.hot_reset_plan(self.address)

    def hot_reset(self) -> HotResetPlan:
        """Reset the device's bus or slot, and with it every device in its scope; refused
        (HotResetRefused, naming them) unless this device's context owns them all. See
        IommuContext.hot_reset()."""
        return self.context.hot_reset(self.address)

    def dma_buffer(
        self,
        size: int,
        *,
        readable: bool = True,
        writable: bool = True,
        hugepages: str = "off",
        hugepage_size: int | None = None,
    ) -> DmaBuffer:
        """A buffer in the device's DMA space (the context's, shared with its devices);
        `hugepages` as for IommuContext.dma_buffer."""
        return self.context.dma_buffer(
            size,
            readable=readable,
            writable=writable,
            hugepages=hugepages,
            hugepage_size=hugepage_size,
        )

    # -- lifetime ---------------------------------------------------------------------------
    def _close_irqs(self, errors: list[BaseException]) -> None:
        _close_all(list(self._owned.values()), errors)
        self._owned.clear()

    def _close_device(self, errors: list[BaseException]) -> None:
        if self._open:
            self._open = False
            try:
                self.device.close()
            except BaseException as exc:
                errors.append(exc)

    def close(self) -> None:
        """Close everything in reverse order of creation; safe to call twice. Alone, the
        device's buffers and DMA space go with it."""
        if self._own_context:
            self.context.close()
            return
        errors: list[BaseException] = []
        self._close_irqs(errors)
        self._close_device(errors)
        self.context._unregister(self)
        if errors:
            raise errors[0]

    def __del__(self) -> None:
        if getattr(self, "_open", False):
            # Its parts close their own fds as they go; no ioctl from a finalizer.
            warnings.warn(
                f"unclosed VfioDevice {self.address}", ResourceWarning, source=self, stacklevel=2
            )

    def __enter__(self) -> VfioDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_device(address: str, **kwargs: Any) -> VfioDevice:
    """One device with a DMA space of its own (see IommuContext for several)."""
    return VfioDevice(address, **kwargs)


__all__ = [
    "BACKENDS",
    "HUGEPAGES",
    "HotResetPlan",
    "HotResetRefused",
    "IommuContext",
    "VfioDevice",
    "choose_backend",
    "default_hugepage_size",
    "open_device",
]
