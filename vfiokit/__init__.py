"""vfiokit: PCI passthrough toolkit for Linux (VFIO binding, userspace drivers, adaptive INTx)."""

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

__version__ = "0.1.0"

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
    "read_all",
    "read_device",
]
