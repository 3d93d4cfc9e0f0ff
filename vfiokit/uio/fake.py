"""A fake of the uio syscalls and of the kernel behind them, for unit tests.

:class:`FakeUioDevice` models one uio_pci_generic device's INTx as the series' patch 0005
implements it: a level interrupt raised and acked by the test, INTx Disable in COMMAND, the
line held by the core (adaptive, alone), the line's IRQD_MASK_DEVICE, sharers coming and
going (with the hand-over), the event count, and irqcontrol writes. Flags model the kernels
without the patch (no irqcontrol) and without adaptive_intx.
"""

from __future__ import annotations

import errno as E
import mmap
import struct

from ..errors import NotFound, VfiokitError


class FakeUioDevice:
    def __init__(self, *, adaptive: bool = True, irqcontrol: bool = True, series: bool = True):
        self.adaptive = adaptive and irqcontrol
        self.irqcontrol = irqcontrol
        self.series = series  # /sys/kernel/irq/N/mask_device exists
        self.asserted = False
        self.intx_disable = False
        self.line_held = False
        self.shared = False
        self.events = 0
        self.irqcontrol_writes = 0
        self.config_writes = 0

    @property
    def mask_device(self) -> int:
        """0 only while the flagged handler is alone on the line."""
        return 0 if self.adaptive and not self.shared else 1

    def raise_irq(self) -> None:
        self.asserted = True
        self._deliver()

    def ack(self) -> None:
        self.asserted = False

    def set_sharer(self, present: bool) -> None:
        """A second handler joins or leaves the line; joining hands a held line over."""
        self.shared = present
        if present and self.line_held:
            self.line_held = False
        self._deliver()

    def _deliver(self) -> None:
        """The line fires if the device asserts it and neither mask is in effect."""
        if not self.asserted or self.line_held or self.intx_disable:
            return
        if self.mask_device:
            self.intx_disable = True  # the handler masks at the device
        else:
            self.line_held = True  # the core holds the line
        self.events += 1

    def irqcontrol_write(self, on: int) -> None:
        self.irqcontrol_writes += 1
        if not on:
            self.intx_disable = True
            return
        self.line_held = False  # irq_release_held_line()
        if self.intx_disable:
            if self.asserted:
                self.events += 1  # still asserted: stays masked, reported again
            else:
                self.intx_disable = False
        self._deliver()

    def config_write_command_hi(self, value: int) -> None:
        self.config_writes += 1
        self.intx_disable = bool(value & 0x04)
        self._deliver()


class FakeUioSyscalls:
    """UioSyscalls against a FakeUioDevice; paths are told apart by their names."""

    def __init__(self, dev: FakeUioDevice):
        self.dev = dev
        self._fds: dict[int, list[object]] = {}  # fd -> [kind, events seen]
        self._next = 100

    @property
    def open_fds(self) -> int:
        return len(self._fds)

    def _get(self, fd: int, kind: str | None = None) -> list[object]:
        entry = self._fds.get(fd)
        if entry is None or (kind is not None and entry[0] != kind):
            raise VfiokitError(f"fd {fd}: not open as {kind or 'anything'}", errno=E.EBADF)
        return entry

    def open(self, path: str, flags: int) -> int:
        if "/dev/uio" in path:
            kind = "uio"
        elif path.endswith("/config"):
            kind = "config"
        elif path.endswith("/mask_device") and self.dev.series:
            kind = "state"
        else:
            raise NotFound(f"open {path}: no such file or device", errno=E.ENOENT)
        fd, self._next = self._next, self._next + 1
        self._fds[fd] = [kind, self.dev.events]
        return fd

    def close(self, fd: int) -> None:
        self._get(fd)
        del self._fds[fd]

    def read(self, fd: int, size: int) -> bytes:
        entry = self._get(fd, "uio")
        if self.dev.events == entry[1]:
            raise VfiokitError("read /dev/uio: the fake would block here", errno=E.EAGAIN)
        entry[1] = self.dev.events
        return struct.pack("=I", self.dev.events)

    def write(self, fd: int, data: bytes) -> int:
        self._get(fd, "uio")
        if not self.dev.irqcontrol:
            raise VfiokitError("write /dev/uio (irqcontrol)", errno=E.ENOSYS)
        (on,) = struct.unpack("=i", data)
        self.dev.irqcontrol_write(on)
        return len(data)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        kind = self._get(fd)[0]
        if kind == "state":
            return f"{self.dev.mask_device}\n".encode()[offset : offset + size]
        if kind == "config":
            space = bytearray(256)
            space[5] = 0x04 if self.dev.intx_disable else 0
            space[6] = 0x08 if self.dev.asserted else 0  # STATUS bit 3: Interrupt Status
            return bytes(space[offset : offset + size])
        raise VfiokitError("pread", errno=E.EINVAL)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        if self._get(fd)[0] != "config":
            raise VfiokitError("pwrite", errno=E.EBADF)
        if offset <= 5 < offset + len(data):
            self.dev.config_write_command_hi(data[5 - offset])
        return len(data)

    def readable(self, fd: int, timeout: float) -> bool:
        return self.dev.events != self._get(fd, "uio")[1]

    def mmap(self, fd: int, length: int, offset: int) -> mmap.mmap:
        self._get(fd, "uio")
        return mmap.mmap(-1, length)
