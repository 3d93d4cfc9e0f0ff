"""A PCI device bound to uio_pci_generic: its memory BARs and its INTx, the latter with
the interface of :class:`vfiokit.vfio.Intx`.

uio_pci_generic gives the device to user space as ``/dev/uioN``: a read blocks until the
next interrupt and returns the count of interrupts so far; the kernel's handler masks the
interrupt before it signals. With the series' patch 0005 (docs/kernel-patch.md) a write
of 1 to ``/dev/uioN`` re-enables it (irqcontrol), and a device bound while the module
parameter ``uio_pci_generic.adaptive_intx`` is 1 is masked adaptively: at the line while
it is alone on it, at the device (INTx Disable) while the line is shared. Without the
patch, the interrupt is re-enabled the stock way, by clearing INTx Disable through the
device's sysfs config file.

Policies: "state" (the default, as for Intx) reads the line's
``/sys/kernel/irq/N/mask_device`` to say how the interrupt was masked ("line" or
"device") and writes 1 to ``/dev/uioN``; "kernel" only writes 1; "config" is the stock
protocol, INTx Disable cleared through sysfs config, refused for a device masked
adaptively (``/sys/bus/pci/devices/BDF/adaptive_intx`` is 1), where it would never release
a held line. Every unmask goes through the write where the kernel has it: the write undoes
both masks, which can both be in effect after a sharer came or went (a handler thread
under threadirqs masks the device, then the core holds the line too), so no user space
choice between them is safe. On a kernel without irqcontrol every policy is "config".
"""

from __future__ import annotations

import contextlib
import errno as E
import mmap
import os
import struct
import warnings
import weakref
from collections.abc import Iterator

from ..errors import Busy, InvalidArgument, NotFound, Unsupported, VfiokitError
from ..sysroot import SysRoot
from .sys import RealUioSyscalls, UioSyscalls

DRIVER = "uio_pci_generic"
POLICIES = ("state", "kernel", "config")
_COMMAND_HI = 5  # the command register's high byte: INTx Disable is its bit 2
_INTX_DISABLE_HI = 0x04
_ON = struct.pack("=i", 1)  # irqcontrol takes a native s32
_EVENT = struct.Struct("=I")  # a read returns the event count so far, a native u32


class UioDevice:
    """An open uio_pci_generic device: ``/dev/uioN`` for its maps, sysfs config for its
    command register. Close it (or use ``with``); its UioIntx objects are closed first."""

    def __init__(self, address: str, *, sysroot: SysRoot | None = None,
                 sys: UioSyscalls | None = None):  # fmt: skip
        self.sysroot = sysroot or SysRoot()
        self.sys: UioSyscalls = sys or RealUioSyscalls()
        self.address = address
        base = f"/sys/bus/pci/devices/{address}"
        if not self.sysroot.exists(base):
            raise NotFound(f"no PCI device {address}", remedy="see `vfiokit list`")
        driver = self.sysroot.link_name(f"{base}/driver")
        if driver != DRIVER:
            raise NotFound(
                f"{address} is bound to {driver or 'no driver'}, not {DRIVER}",
                remedy=f"vfiokit bind --driver {DRIVER} {address}",
            )
        names = sorted(self.sysroot.listdir(f"{base}/uio"))
        if not names:
            raise NotFound(f"{address}: {DRIVER} registered no uio device", errno=E.ENODEV)
        self.name = names[0]
        self.irq = self.sysroot.read_int(f"{base}/irq", 10) or 0
        self._dev_path = str(self.sysroot.path(f"/dev/{self.name}"))
        self._config_path = str(self.sysroot.path(f"{base}/config"))
        self._maps: list[mmap.mmap] = []
        self._intxs: weakref.WeakSet[UioIntx] = weakref.WeakSet()
        self.fd = self.sys.open(self._dev_path, os.O_RDWR)
        try:
            self.config_fd = self.sys.open(self._config_path, os.O_RDWR)
        except BaseException:
            self.sys.close(self.fd)
            self.fd = -1
            raise

    def map(self, index: int) -> memoryview:
        """Map ``/sys/class/uio/uioN/maps/map<index>`` (the device's memory BARs in
        order: map0 is the first), read-write."""
        size = self.sysroot.read_int(f"/sys/class/uio/{self.name}/maps/map{index}/size")
        if size is None:
            raise InvalidArgument(f"{self.name} has no map{index}")
        m = self.sys.mmap(self.fd, size, index * mmap.PAGESIZE)
        self._maps.append(m)
        return memoryview(m)

    @property
    def adaptive(self) -> bool | None:
        """Whether the kernel masks this device adaptively (patch 0005's device attribute,
        fixed when the device was bound); None on a kernel without it."""
        value = self.sysroot.read(f"/sys/bus/pci/devices/{self.address}/adaptive_intx")
        return None if value is None else value.strip() == "1"

    def intx(self, policy: str = "state") -> UioIntx:
        intx = UioIntx(self, policy)
        self._intxs.add(intx)
        return intx

    def close(self) -> None:
        """Close the fds and drop the maps; a second close does nothing. A map whose view
        is still held stays mapped until the view goes, and close() raises Busy then."""
        if self.fd < 0:
            return
        for intx in list(self._intxs):
            intx.close()
        held = 0
        for m in self._maps:
            try:
                m.close()
            except BufferError:
                held += 1
        self._maps.clear()
        fds, self.fd, self.config_fd = (self.fd, self.config_fd), -1, -1
        try:
            self.sys.close(fds[0])
        finally:
            self.sys.close(fds[1])
        if held:
            raise Busy(f"{self.address}: {held} map(s) still have views in use",
                       remedy="release() the views before close()")  # fmt: skip

    def __del__(self) -> None:
        _warn_unclosed(self, self.sys if hasattr(self, "sys") else None,
                       [getattr(self, "fd", -1), getattr(self, "config_fd", -1)])  # fmt: skip

    def __enter__(self) -> UioDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class UioIntx:
    """The device's INTx through uio_pci_generic; enabled (unmasked) on creation."""

    def __init__(self, device: UioDevice, policy: str = "state"):
        if not device.irq:
            raise Unsupported(f"{device.address} has no INTx (no interrupt pin or line)")
        if device.fd < 0:
            raise VfiokitError(f"{device.address} is closed", errno=E.EBADF)
        self.device = device
        self.adaptive = device.adaptive
        self._policy = "state"
        self.policy = policy
        self._counts = {"line": 0, "device": 0, "kernel": 0}
        sys = device.sys
        # A listener of its own: the kernel counts events per open file.
        self.fd = sys.open(device._dev_path, os.O_RDWR)
        self._state_fd = -1
        try:
            state = device.sysroot.path(f"/sys/kernel/irq/{device.irq}/mask_device")
            with contextlib.suppress(NotFound):  # without the series: "state" acts as "kernel"
                self._state_fd = sys.open(str(state), os.O_RDONLY)
            event = device.sysroot.read_int(f"/sys/class/uio/{device.name}/event", 10)
            self._seen = event or 0
            self.irqcontrol = True
            try:
                sys.write(self.fd, _ON)  # enabled from the start, as Intx is
            except VfiokitError as exc:
                if exc.errno not in (E.ENOSYS, E.EIO):
                    raise
                self.irqcontrol = False  # a kernel without patch 0005: the stock way
                self._clear_intx_disable()
        except BaseException:
            self._close_fds()
            raise

    @property
    def policy(self) -> str:
        return self._policy

    @policy.setter
    def policy(self, value: str) -> None:
        if value not in POLICIES:
            raise InvalidArgument(f"unknown policy {value!r}",
                                  remedy=f"one of {', '.join(POLICIES)}")  # fmt: skip
        if value == "config" and self.adaptive:
            raise InvalidArgument(
                f"{self.device.address} is masked adaptively: clearing INTx Disable through "
                "config space would never release a held line",
                remedy='use policy "state" or "kernel" (the write to /dev/uioN)',
            )
        self._policy = value

    @property
    def counts(self) -> dict[str, int]:
        """Unmasks so far by how: "line", "device", "kernel" (a snapshot)."""
        return dict(self._counts)

    def mask_device(self) -> bool | None:
        """The line's IRQD_MASK_DEVICE (True: shared, masked at the device); None on a
        kernel without the series."""
        if self._state_fd < 0:
            return None
        return self.device.sys.pread(self._state_fd, 2, 0)[:1] == b"1"

    def fileno(self) -> int:
        return self.fd

    def wait(self, timeout: float | None = None) -> int:
        """Block until the interrupt fires; the number of interrupts since the last wait
        (0 on time-out)."""
        self._check_open()
        sys = self.device.sys
        if timeout is not None and not sys.readable(self.fd, timeout):
            return 0
        (count,) = _EVENT.unpack(sys.read(self.fd, 4))
        n = max((int(count) - self._seen) & 0xFFFFFFFF, 1)
        self._seen = count
        return n

    def unmask(self) -> str:
        """Re-enable the interrupt after handling the device; returns how: "line" or
        "device" (policy "state": how the line's state says it was masked; the write to
        /dev/uioN undoes either), "kernel" (the write, nothing read) or "device" through
        config space (policy "config", or a kernel without irqcontrol)."""
        self._check_open()
        if not self.irqcontrol or self._policy == "config":
            return self._unmask_config()
        how = "kernel"
        if self._policy == "state" and self._state_fd >= 0:
            how = "device" if self.mask_device() else "line"
        self.device.sys.write(self.fd, _ON)
        self._counts[how] += 1
        return how

    def interrupts(self) -> Iterator[int]:
        """As :meth:`vfiokit.vfio.Intx.interrupts`: each step waits and yields the number
        signalled; the step after it first unmasks (leaving the loop does not)."""
        while True:
            yield self.wait()
            self.unmask()

    def _unmask_config(self) -> str:
        self._clear_intx_disable()
        self._counts["device"] += 1
        return "device"

    def _clear_intx_disable(self) -> None:
        """The stock uio protocol: a read-modify-write of COMMAND's high byte (the kernel's
        handler only sets the bit while the device is unmasked, so nothing races it)."""
        sys, fd = self.device.sys, self.device.config_fd
        hi = sys.pread(fd, 1, _COMMAND_HI)[0]
        if hi & _INTX_DISABLE_HI:
            sys.pwrite(fd, bytes([hi & ~_INTX_DISABLE_HI]), _COMMAND_HI)

    def _check_open(self) -> None:
        if self.fd < 0 or self.device.fd < 0:
            raise VfiokitError(f"{self.device.address}: uio INTx used after close",
                               errno=E.EBADF)  # fmt: skip

    def _close_fds(self) -> None:
        fds, self.fd, self._state_fd = (self.fd, self._state_fd), -1, -1
        try:
            if fds[0] >= 0:
                self.device.sys.close(fds[0])
        finally:
            if fds[1] >= 0:
                self.device.sys.close(fds[1])

    def close(self) -> None:
        """Close this listener; the interrupt stays as it is. A second close does nothing."""
        self._close_fds()

    def __del__(self) -> None:
        device = getattr(self, "device", None)
        _warn_unclosed(self, device.sys if device is not None else None,
                       [getattr(self, "fd", -1), getattr(self, "_state_fd", -1)])  # fmt: skip

    def __enter__(self) -> UioIntx:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _warn_unclosed(obj: object, sys: UioSyscalls | None, fds: list[int]) -> None:
    """For __del__ of an object never closed: a ResourceWarning, then its fds closed (as
    vfiokit.vfio does)."""
    fds = [fd for fd in fds if fd >= 0]
    if not fds or sys is None:
        return
    warnings.warn(f"unclosed {type(obj).__name__}", ResourceWarning, source=obj, stacklevel=2)
    for fd in fds:
        with contextlib.suppress(BaseException):  # a finalizer has nobody to raise to
            sys.close(fd)
