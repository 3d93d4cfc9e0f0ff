"""The syscall layer: the only place in vfiokit that opens device nodes, issues ioctls,
reads and writes device fds, maps memory and makes eventfds.

Everything above it talks to a :class:`Syscalls` object, so unit tests swap in the fake
(vfiokit.vfio.fake.FakeSyscalls) that models the kernel's side of every ioctl used here.
Errors come out as VfioError: the operation, the errno and a remedy where one is known,
as the subclass that also is the matching vfiokit error (``except Busy`` catches an EBUSY
ioctl, ``except PermissionDenied`` an EPERM or EACCES open, ...).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as E
import fcntl
import mmap
import os
import platform
import select
import warnings
from collections.abc import Callable, Iterator
from mmap import mmap as Mmap
from typing import Protocol, cast

from ..errors import Busy, NotFound, PermissionDenied, Unsupported, VfiokitError


class VfioError(VfiokitError):
    """A failed VFIO/iommufd syscall: `op` names it, `errno` is the kernel's answer."""

    def __init__(self, op: str, errno: int, remedy: str | None = None, path: str | None = None):
        where = f" on {path}" if path else ""
        super().__init__(f"{op}{where} failed: {os.strerror(errno)}", errno=errno, remedy=remedy)
        self.op = op


class VfioPermissionDenied(VfioError, PermissionDenied):
    """EPERM, EACCES."""


class VfioNotFound(VfioError, NotFound):
    """ENOENT, ENODEV (a device gone: surprise removal), ENXIO."""


class VfioBusy(VfioError, Busy):
    """EBUSY."""


class VfioUnsupported(VfioError, Unsupported):
    """ENOTTY, EOPNOTSUPP: the kernel or the device lacks the operation."""


_CLASSES: dict[int, type[VfioError]] = {
    E.EPERM: VfioPermissionDenied,
    E.EACCES: VfioPermissionDenied,
    E.ENOENT: VfioNotFound,
    E.ENODEV: VfioNotFound,
    E.ENXIO: VfioNotFound,
    E.EBUSY: VfioBusy,
    E.ENOTTY: VfioUnsupported,
    E.EOPNOTSUPP: VfioUnsupported,
}

_REMEDIES = {
    E.EACCES: "run as root, or give this user the device with `vfiokit assign BDF --user NAME`",
    E.EPERM: "run as root; for VFIO_SET_IOMMU without interrupt remapping see `vfiokit doctor`",
    E.ENOMEM: "DMA mappings are pinned and count against RLIMIT_MEMLOCK: raise it "
    "(see `vfiokit doctor`)",
    E.EBUSY: "the device or group is in use by another process or driver",
    E.ENODEV: "the device is gone or not bound to a VFIO driver (`vfiokit show BDF`)",
}


def error(op: str, exc: OSError, path: str | None = None) -> VfioError:
    """The VfioError for an OSError from `op`: the subclass that matches its errno."""
    code = exc.errno or E.EIO
    return error_for(op, code, path)


def raw_error(op: str, exc: OSError | ValueError) -> VfioError:
    """The VfioError for what a raw builtin raised (see Syscalls.raw_ioctl): an OSError by
    its errno; a ValueError is the builtin refusing a negative fd (an object already
    closed), which is EBADF."""
    if isinstance(exc, OSError):
        return error(op, exc)
    return error_for(op, E.EBADF)


def error_for(op: str, code: int, path: str | None = None) -> VfioError:
    """The VfioError subclass for `code` (VfioError itself for an errno without one)."""
    return _CLASSES.get(code, VfioError)(op, code, _REMEDIES.get(code), path)


@contextlib.contextmanager
def ioctl_named(op: str) -> Iterator[None]:
    """Name the ioctl in a VfioError raised inside: the device and container ioctls share
    numbers (VFIO_DEVICE_PCI_HOT_RESET is VFIO_IOMMU_MAP_DMA), so the syscall layer can
    only guess from the number; the caller knows which one it made."""
    try:
        yield
    except VfioError as exc:
        if exc.op == op or exc.errno is None:
            raise
        raise error_for(op, exc.errno) from exc


_new_poll, _POLLIN, _POLLNVAL = select.poll, select.POLLIN, select.POLLNVAL


def poll_readable(fds: list[int], timeout: float | None) -> list[int]:
    """The fds among `fds` that are readable within `timeout` seconds (None: no limit).

    poll(2), not select(2): any fd number works (select stops at 1023, and MSI-X has up
    to 2048 vectors). A closed or invalid fd is an EBADF VfioError, as select's was.
    """
    poller = _new_poll()
    try:
        for fd in fds:
            poller.register(fd, _POLLIN)
    except (ValueError, OverflowError, TypeError) as exc:  # a negative or huge fd number
        raise error_for("poll", E.EBADF) from exc
    # Milliseconds, rounded up by poll() itself; negative would mean "for ever".
    try:
        events = poller.poll(None if timeout is None else timeout * 1000 if timeout > 0 else 0)
    except OSError as exc:
        raise error("poll", exc) from exc
    ready = []
    for fd, ev in events:
        if ev & _POLLNVAL:
            raise error_for("poll", E.EBADF)
        ready.append(fd)
    return ready


def warn_unclosed(obj: object, sys: Syscalls, fds: list[int]) -> None:
    """For __del__ of an object that was never closed: a ResourceWarning, then its fds
    closed, and nothing else (no ioctl from a finalizer: closing the fds is what makes
    the kernel release the rest)."""
    warnings.warn(f"unclosed {type(obj).__name__}", ResourceWarning, source=obj, stacklevel=2)
    for fd in fds:
        with contextlib.suppress(BaseException):  # a finalizer has nobody to raise to
            sys.close(fd)


def _map_hugetlb(machine: str) -> int:
    """mmap(2)'s MAP_HUGETLB (Python 3.11's mmap module has no name for it): the
    asm-generic value, except on the arches whose uapi mman.h has its own."""
    if machine.startswith("alpha"):
        return 0x100000
    if machine.startswith(("mips", "parisc", "xtensa")):
        return 0x80000
    return 0x40000


MAP_HUGETLB = _map_hugetlb(platform.machine())
MAP_HUGE_SHIFT = 26  # bits 26..31: log2 of the huge page size (0: the default size)


def hugetlb_flags(page_size: int) -> int:
    """MAP_HUGETLB with `page_size` (a power of two, e.g. 2 MiB) encoded in the flags."""
    if page_size <= 0 or page_size & (page_size - 1):
        raise error_for("mmap (huge page size not a power of two)", E.EINVAL)
    return MAP_HUGETLB | (page_size.bit_length() - 1) << MAP_HUGE_SHIFT


class Syscalls(Protocol):
    """The syscalls vfiokit makes. Every method raises VfioError.

    The three ``raw_*`` attributes are the exception: for the per-interrupt path they are
    the builtins themselves on the real kernel (``fcntl.ioctl`` with the mutate flag,
    ``os.eventfd_read``, ``os.eventfd_write``), so a call costs no Python frame of this
    layer; they raise the builtin's OSError or ValueError, which the caller turns into a
    VfioError with :func:`raw_error` (a fake may raise VfioError itself: re-raise it).
    """

    def raw_ioctl(self, fd: int, request: int, arg: bytearray, mutate: bool, /) -> int: ...
    def raw_eventfd_read(self, fd: int, /) -> int: ...
    def raw_eventfd_write(self, fd: int, value: int, /) -> None: ...

    def open(self, path: str, flags: int = os.O_RDWR) -> int: ...
    def close(self, fd: int) -> None: ...
    def ioctl(self, fd: int, request: int, arg: int | bytearray = 0) -> int: ...
    def pread(self, fd: int, size: int, offset: int) -> bytes: ...
    def pwrite(self, fd: int, data: bytes, offset: int) -> int: ...
    def mmap(self, fd: int, length: int, offset: int, writable: bool = True) -> Mmap: ...
    def anon_mmap(self, length: int, page_size: int = 0) -> Mmap: ...
    def address_of(self, buf: Mmap) -> int: ...
    def eventfd(self, nonblock: bool = True) -> int: ...
    def eventfd_read(self, fd: int) -> int: ...
    def eventfd_write(self, fd: int, value: int = 1) -> None: ...
    def wait_readable(self, fds: list[int], timeout: float | None) -> list[int]: ...
    def pollable(self, fd: int) -> int: ...


class RealSyscalls:
    """The real kernel. Every method raises VfioError (never a bare OSError); the raw_*
    builtins raise what they raise (see Syscalls)."""

    # typeshed types fcntl.ioctl as overloads; this is the one for a mutable buffer.
    raw_ioctl = staticmethod(cast("Callable[[int, int, bytearray, bool], int]", fcntl.ioctl))
    raw_eventfd_read = staticmethod(os.eventfd_read)
    raw_eventfd_write = staticmethod(os.eventfd_write)

    def open(self, path: str, flags: int = os.O_RDWR) -> int:
        try:
            return os.open(path, flags | os.O_CLOEXEC)
        except OSError as exc:
            raise error("open", exc, path) from exc

    def close(self, fd: int) -> None:
        try:
            os.close(fd)
        except OSError as exc:
            raise error("close", exc) from exc

    def ioctl(self, fd: int, request: int, arg: int | bytearray = 0) -> int:
        """An ioctl with an integer (by value) or a buffer (in place, read back).

        A bytearray is passed by pointer and filled in by the kernel; the ioctl's return
        value comes back either way (fcntl.ioctl with bytes would lose it).
        """
        try:
            if isinstance(arg, bytearray):
                if len(arg) == 0:
                    arg = bytearray(1)
                rc: int = fcntl.ioctl(fd, request, arg, True)
                return rc
            return fcntl.ioctl(fd, request, arg)
        except OSError as exc:
            raise error(_ioctl_name(request), exc) from exc
        except ValueError as exc:  # fd -1: a device already closed (fcntl refuses it)
            raise error_for(_ioctl_name(request), E.EBADF) from exc

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        try:
            return os.pread(fd, size, offset)
        except OSError as exc:
            raise error("pread", exc) from exc

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        try:
            return os.pwrite(fd, data, offset)
        except OSError as exc:
            raise error("pwrite", exc) from exc

    def mmap(self, fd: int, length: int, offset: int, writable: bool = True) -> Mmap:
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        try:
            return mmap.mmap(fd, length, mmap.MAP_SHARED, prot, offset=offset)
        except OSError as exc:
            raise error("mmap", exc) from exc

    def anon_mmap(self, length: int, page_size: int = 0) -> Mmap:
        """Private anonymous memory; of huge pages of `page_size` bytes if given
        (MAP_HUGETLB with the size's log2 in the flags: the kernel rounds the length up
        to whole huge pages and aligns the address to one; ENOMEM when its pool has too
        few free, EINVAL for a size it does not have)."""
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        if page_size:
            flags |= hugetlb_flags(page_size)
        try:
            return mmap.mmap(-1, length, flags)
        except OSError as exc:
            raise error("mmap", exc) from exc

    def address_of(self, buf: Mmap) -> int:
        return ctypes.addressof(ctypes.c_char.from_buffer(buf))

    def eventfd(self, nonblock: bool = True) -> int:
        flags = os.EFD_CLOEXEC | (os.EFD_NONBLOCK if nonblock else 0)
        try:
            return os.eventfd(0, flags)
        except OSError as exc:  # EMFILE, ENFILE, ENOMEM
            raise error("eventfd", exc) from exc

    def eventfd_read(self, fd: int) -> int:
        try:
            return os.eventfd_read(fd)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise error("read eventfd", exc) from exc
        except ValueError as exc:  # a negative fd (an object already closed)
            raise error_for("read eventfd", E.EBADF) from exc

    def eventfd_write(self, fd: int, value: int = 1) -> None:
        try:
            os.eventfd_write(fd, value)
        except OSError as exc:
            raise error("write eventfd", exc) from exc
        except ValueError as exc:
            raise error_for("write eventfd", E.EBADF) from exc

    def wait_readable(self, fds: list[int], timeout: float | None) -> list[int]:
        return poll_readable(fds, timeout)

    def pollable(self, fd: int) -> int:
        """The fd to hand to selectors/asyncio for an eventfd made here."""
        return fd


def _ioctl_name(request: int) -> str:
    from . import uapi

    names = [n for n, v in vars(uapi).items() if n.isupper() and v == request and "_" in n]
    if not names:
        return f"ioctl {request:#x}"
    return "/".join(sorted(names))
