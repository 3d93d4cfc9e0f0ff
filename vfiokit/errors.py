"""The one exception hierarchy of vfiokit, and the CLI's exit codes.

Every error carries an errno (where the kernel gave one) and a remedy: the one thing a
user can do about it. The CLI prints ``error: <message>`` and ``  remedy: <remedy>`` and
exits with :attr:`VfiokitError.exit_code`.
"""

from __future__ import annotations

import errno as _errno
from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of the ``vfiokit`` command (stable; documented in docs/cli.md)."""

    OK = 0
    ERROR = 1  # an unexpected failure (a bug, or an error without a better code)
    USAGE = 2  # bad command line or bad input (an invalid PCI address, ...)
    NOT_FOUND = 3  # the named device, group or file does not exist
    PERMISSION = 4  # needs privileges the caller does not have
    UNSUPPORTED = 5  # the kernel or the device lacks what is needed
    BUSY = 6  # the device is in use
    CHECK_FAILED = 10  # `vfiokit doctor`: at least one check failed
    CHECK_WARNED = 11  # `vfiokit doctor`: no failure, at least one warning


class VfiokitError(Exception):
    """Base class: a message, an optional errno and an optional remedy."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, *, errno: int | None = None, remedy: str | None = None):
        super().__init__(message)
        self.message = message
        self.errno = errno
        self.remedy = remedy

    def __str__(self) -> str:
        if self.errno is not None:
            return f"{self.message} ({_errno.errorcode.get(self.errno, self.errno)})"
        return self.message

    def to_dict(self) -> dict[str, object]:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "errno": self.errno,
            "errno_name": _errno.errorcode.get(self.errno) if self.errno is not None else None,
            "remedy": self.remedy,
            "exit_code": int(self.exit_code),
        }


class InvalidArgument(VfiokitError, ValueError):
    """Bad input: a malformed address, an out-of-range value. Also a ValueError."""

    exit_code = ExitCode.USAGE


class NotFound(VfiokitError, LookupError):
    """A device, group or kernel interface that is not there. Also a LookupError."""

    exit_code = ExitCode.NOT_FOUND


class PermissionDenied(VfiokitError, PermissionError):
    """Needs privileges the caller lacks. Also a PermissionError (so an OSError: its
    errno is the kernel's, EPERM or EACCES, where there was one)."""

    exit_code = ExitCode.PERMISSION


class Unsupported(VfiokitError):
    exit_code = ExitCode.UNSUPPORTED


class Busy(VfiokitError):
    exit_code = ExitCode.BUSY


def from_oserror(exc: OSError, what: str) -> VfiokitError:
    """Turn an OSError met while doing `what` into the matching vfiokit error."""
    code = exc.errno
    where = f": {exc.filename}" if exc.filename else ""
    if code in (_errno.ENOENT, _errno.ENODEV, _errno.ENXIO):
        return NotFound(f"{what}{where}: no such file or device", errno=code)
    if code in (_errno.EACCES, _errno.EPERM):
        return PermissionDenied(
            f"{what}{where}: permission denied",
            errno=code,
            remedy="run as root, or let this user in with `vfiokit assign`",
        )
    if code == _errno.EBUSY:
        return Busy(f"{what}{where}: device or resource busy", errno=code)
    return VfiokitError(f"{what}{where}: {exc.strerror or exc}", errno=code)
