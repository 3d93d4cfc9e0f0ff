"""The VFIO userspace-driver API: uAPI bytes (uapi) → syscalls (sys) → objects.

from vfiokit.vfio import open_device
with open_device("0000:00:04.0") as vd:
    ...
"""

from .device import AffectedDevice, ClosedError, Device, HotResetScope, IrqInfo, Region
from .dma import DmaBuffer, HugepagesUnavailable, IovaAllocator
from .iommu import Container, Group, GroupNotViable, IommuFd
from .irq import Intx, IntxState, Vectors
from .session import (
    BACKENDS,
    HotResetPlan,
    HotResetRefused,
    IommuContext,
    VfioDevice,
    choose_backend,
    open_device,
)
from .sys import (
    RealSyscalls,
    Syscalls,
    VfioBusy,
    VfioError,
    VfioNotFound,
    VfioPermissionDenied,
    VfioUnsupported,
)

__all__ = [
    "BACKENDS",
    "AffectedDevice",
    "ClosedError",
    "Container",
    "Device",
    "DmaBuffer",
    "Group",
    "GroupNotViable",
    "HotResetPlan",
    "HotResetRefused",
    "HotResetScope",
    "HugepagesUnavailable",
    "Intx",
    "IntxState",
    "IommuContext",
    "IommuFd",
    "IovaAllocator",
    "IrqInfo",
    "RealSyscalls",
    "Region",
    "Syscalls",
    "Vectors",
    "VfioBusy",
    "VfioDevice",
    "VfioError",
    "VfioNotFound",
    "VfioPermissionDenied",
    "VfioUnsupported",
    "choose_backend",
    "open_device",
]
