"""Open a PCI device through VFIO, with the legacy container/group uAPI or iommufd + the
VFIO device cdev, and own everything that comes with it until close().

    with vfiokit.vfio.open_device("0000:00:04.0") as vd:
        bar0 = vd.device.bar(0).mmap().cast("I")
        intx = vd.intx()
        buf = vd.dma_buffer(4096)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from ..address import PciAddress
from ..errors import InvalidArgument, NotFound, Unsupported
from ..iommu import read_group
from ..sysroot import SysRoot
from . import uapi as U
from .device import Device
from .dma import DmaBuffer, IovaAllocator
from .iommu import Container, DmaSpace, Group, IommuFd
from .irq import Intx, Vectors
from .sys import RealSyscalls, Syscalls

BACKENDS = ("auto", "legacy", "iommufd")


class _Closeable(Protocol):
    def close(self) -> None: ...


_C = TypeVar("_C", bound=_Closeable)


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


class VfioDevice:
    """A device opened through VFIO, with its DMA space and the objects made from it."""

    def __init__(
        self,
        address: str,
        *,
        backend: str = "auto",
        sysroot: SysRoot | None = None,
        sys: Syscalls | None = None,
        dma_limit: int = (1 << 64) - 1,
    ):
        self.address = str(PciAddress.parse(address))
        self.sysroot = sysroot or SysRoot()
        self.sys = sys or RealSyscalls()
        base = f"/sys/bus/pci/devices/{self.address}"
        if not self.sysroot.exists(base):
            raise NotFound(f"no PCI device {self.address}", remedy="see `vfiokit list`")
        self.backend = choose_backend(self.sysroot, self.address, backend)
        self._undo: list[Callable[[], None]] = []
        self._owned: dict[int, _Closeable] = {}  # id -> object, in order of creation
        try:
            self.dma, self.device = self._open_backend(base)
            align = self.dma.iova_alignment()
            self.allocator = IovaAllocator(
                self.dma.iova_ranges(), limit=dma_limit, align=align, reserve_low=align
            )
        except BaseException:
            self.close()
            raise

    def _open_backend(self, base: str) -> tuple[DmaSpace, Device]:
        sys = self.sys
        if self.backend == "legacy":
            group = self.sysroot.link_name(f"{base}/iommu_group")
            if group is None:
                raise Unsupported(f"{self.address} has no IOMMU group", remedy="`vfiokit doctor`")
            container = Container.open(sys)
            self._undo.append(container.close)
            grp = Group.open(sys, group, container, lambda: self._blockers(group))
            self._undo.append(grp.close)
            fd = grp.device_fd(self.address)
            device = Device(sys, fd, self.address)
            self._undo.append(device.close)
            return container, device
        iommufd = IommuFd.open(sys)
        self._undo.append(iommufd.close)
        cdev = _cdev_name(self.sysroot, self.address)
        fd = sys.open(f"/dev/vfio/devices/{cdev}")
        try:  # until a Device owns the fd (it does from its constructor on)
            bind = U.vfio_device_bind_iommufd.new(iommufd=iommufd.fd)
            sys.ioctl(fd, U.VFIO_DEVICE_BIND_IOMMUFD, bind.to_bytes())
            attach = U.vfio_device_attach_iommufd_pt.new(pt_id=iommufd.ioas)
            sys.ioctl(fd, U.VFIO_DEVICE_ATTACH_IOMMUFD_PT, attach.to_bytes())
        except BaseException:
            sys.close(fd)
            raise
        device = Device(sys, fd, self.address)
        self._undo.append(device.close)
        return iommufd, device

    def _blockers(self, group: str) -> list[str]:
        return [f"{m.address} is {why}" for m, why in read_group(self.sysroot, group).blockers()]

    # -- things made from the device, closed with it ----------------------------------------
    def _own(self, obj: _C) -> _C:
        self._owned[id(obj)] = obj
        return obj

    def _forget(self, obj: object) -> None:
        """A buffer closed before the session: the session no longer needs to keep it."""
        self._owned.pop(id(obj), None)

    def intx(self, policy: str = "state") -> Intx:
        return self._own(Intx(self.device, policy))

    def msi(self, count: int = 1) -> Vectors:
        return self._own(Vectors(self.device, U.VFIO_PCI_MSI_IRQ_INDEX, count))

    def msix(self, count: int = 1) -> Vectors:
        return self._own(Vectors(self.device, U.VFIO_PCI_MSIX_IRQ_INDEX, count))

    def dma_buffer(self, size: int, *, readable: bool = True, writable: bool = True) -> DmaBuffer:
        return self._own(
            DmaBuffer(
                self.dma,
                self.sys,
                self.allocator,
                size,
                readable=readable,
                writable=writable,
                on_close=self._forget,
            )
        )

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close everything in reverse order of creation; safe to call twice."""
        errors: list[BaseException] = []
        for obj in reversed(list(self._owned.values())):
            try:
                obj.close()
            except BaseException as exc:  # keep closing the rest
                errors.append(exc)
        self._owned.clear()
        while self._undo:
            try:
                self._undo.pop()()
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def __del__(self) -> None:
        if getattr(self, "_undo", None) or getattr(self, "_owned", None):
            # Its parts close their own fds as they go; no ioctl from a finalizer.
            warnings.warn(
                f"unclosed VfioDevice {self.address}", ResourceWarning, source=self, stacklevel=2
            )

    def __enter__(self) -> VfioDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_device(address: str, **kwargs: Any) -> VfioDevice:
    return VfioDevice(address, **kwargs)


__all__ = ["BACKENDS", "VfioDevice", "choose_backend", "open_device"]
