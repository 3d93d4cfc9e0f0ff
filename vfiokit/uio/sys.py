"""The syscalls of the uio layer, and nothing else: os.* on real fds, errors typed.

`UioSyscalls` is what :mod:`vfiokit.uio.device` calls; :mod:`vfiokit.uio.fake` models the
kernel's side of the same calls for unit tests.
"""

from __future__ import annotations

import mmap
import os
import select
from typing import Protocol

from ..errors import VfiokitError, from_oserror


class UioSyscalls(Protocol):
    def open(self, path: str, flags: int) -> int: ...
    def close(self, fd: int) -> None: ...
    def read(self, fd: int, size: int) -> bytes: ...
    def write(self, fd: int, data: bytes) -> int: ...
    def pread(self, fd: int, size: int, offset: int) -> bytes: ...
    def pwrite(self, fd: int, data: bytes, offset: int) -> int: ...
    def readable(self, fd: int, timeout: float) -> bool: ...
    def mmap(self, fd: int, length: int, offset: int) -> mmap.mmap: ...


def _typed(what: str, exc: OSError) -> VfiokitError:
    return from_oserror(exc, what)


class RealUioSyscalls:
    """os.* with every OSError turned into the matching VfiokitError."""

    def open(self, path: str, flags: int) -> int:
        try:
            return os.open(path, flags | os.O_CLOEXEC)
        except OSError as exc:
            raise _typed(f"open {path}", exc) from exc

    def close(self, fd: int) -> None:
        try:
            os.close(fd)
        except OSError as exc:
            raise _typed("close", exc) from exc

    def read(self, fd: int, size: int) -> bytes:
        try:
            return os.read(fd, size)
        except OSError as exc:
            raise _typed("read /dev/uio", exc) from exc

    def write(self, fd: int, data: bytes) -> int:
        try:
            return os.write(fd, data)
        except OSError as exc:
            raise _typed("write /dev/uio (irqcontrol)", exc) from exc

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        try:
            return os.pread(fd, size, offset)
        except OSError as exc:
            raise _typed("pread", exc) from exc

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        try:
            return os.pwrite(fd, data, offset)
        except OSError as exc:
            raise _typed("pwrite", exc) from exc

    def readable(self, fd: int, timeout: float) -> bool:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        try:
            return bool(poller.poll(max(0, int(timeout * 1000))))
        except OSError as exc:
            raise _typed("poll /dev/uio", exc) from exc

    def mmap(self, fd: int, length: int, offset: int) -> mmap.mmap:
        try:
            return mmap.mmap(fd, length, mmap.MAP_SHARED, offset=offset)
        except OSError as exc:
            raise _typed("mmap /dev/uio", exc) from exc
