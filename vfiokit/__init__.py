"""vfiokit: PCI passthrough toolkit for Linux (VFIO binding, userspace drivers, adaptive INTx)."""

from ._version import __version__
from .address import PciAddress
from .device import PciDevice, read_all, read_device
from .errors import (
    Busy,
    ExitCode,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unsupported,
    VfiokitError,
)
from .sysroot import SysRoot

__all__ = [
    "Busy",
    "ExitCode",
    "InvalidArgument",
    "NotFound",
    "PciAddress",
    "PciDevice",
    "PermissionDenied",
    "SysRoot",
    "Unsupported",
    "VfiokitError",
    "__version__",
    "read_all",
    "read_device",
]
