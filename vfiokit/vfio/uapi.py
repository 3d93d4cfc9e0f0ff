"""VFIO and iommufd uAPI: ioctl numbers (ioctl-opt) and structures (ctypes), as in Linux
6.12's include/uapi/linux/vfio.h and iommufd.h. tests/unit/test_uapi.py compiles a C
program against the kernel's headers and checks every size and offset here.

Bytes only: no syscalls here (see sys.py).
"""

from __future__ import annotations

import ctypes as C
from typing import Any, Self

from ioctl_opt import IO

VFIO_TYPE = ord(";")
VFIO_BASE = 100
IOMMUFD_CMD_BASE = 0x80


def _vfio(n: int) -> int:
    return int(IO(VFIO_TYPE, VFIO_BASE + n))


VFIO_API_VERSION = 0
VFIO_GET_API_VERSION = _vfio(0)
VFIO_CHECK_EXTENSION = _vfio(1)
VFIO_SET_IOMMU = _vfio(2)
VFIO_GROUP_GET_STATUS = _vfio(3)
VFIO_GROUP_SET_CONTAINER = _vfio(4)
VFIO_GROUP_UNSET_CONTAINER = _vfio(5)
VFIO_GROUP_GET_DEVICE_FD = _vfio(6)
VFIO_DEVICE_GET_INFO = _vfio(7)
VFIO_DEVICE_GET_REGION_INFO = _vfio(8)
VFIO_DEVICE_GET_IRQ_INFO = _vfio(9)
VFIO_DEVICE_SET_IRQS = _vfio(10)
VFIO_DEVICE_RESET = _vfio(11)
VFIO_DEVICE_GET_PCI_HOT_RESET_INFO = _vfio(12)
VFIO_DEVICE_PCI_HOT_RESET = _vfio(13)
VFIO_IOMMU_GET_INFO = _vfio(12)  # container fd: same numbers, other meaning
VFIO_IOMMU_MAP_DMA = _vfio(13)
VFIO_IOMMU_UNMAP_DMA = _vfio(14)
VFIO_DEVICE_FEATURE = _vfio(17)
VFIO_DEVICE_BIND_IOMMUFD = _vfio(18)
VFIO_DEVICE_ATTACH_IOMMUFD_PT = _vfio(19)
VFIO_DEVICE_DETACH_IOMMUFD_PT = _vfio(20)


def _iommufd(n: int) -> int:
    return int(IO(VFIO_TYPE, IOMMUFD_CMD_BASE + n))


IOMMU_DESTROY = _iommufd(0)
IOMMU_IOAS_ALLOC = _iommufd(1)
IOMMU_IOAS_IOVA_RANGES = _iommufd(4)
IOMMU_IOAS_MAP = _iommufd(5)
IOMMU_IOAS_UNMAP = _iommufd(6)

# Extensions (VFIO_CHECK_EXTENSION) and IOMMU types (VFIO_SET_IOMMU).
VFIO_TYPE1_IOMMU = 1
VFIO_TYPE1v2_IOMMU = 3
VFIO_NOIOMMU_IOMMU = 8

VFIO_GROUP_FLAGS_VIABLE = 1 << 0
VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1

VFIO_DEVICE_FLAGS_RESET = 1 << 0
VFIO_DEVICE_FLAGS_PCI = 1 << 1
VFIO_DEVICE_FLAGS_CAPS = 1 << 7

# VFIO_DEVICE_GET_PCI_HOT_RESET_INFO (6.5+): on a device opened through its cdev the
# affected devices come by devid, and OWNED says every one of them is owned by the
# calling device's iommufd. A devid of 0 is a device owned through its group but not
# opened; the kernel's VFIO_PCI_DEVID_NOT_OWNED is the C int -1, ours has another name
# and the u32 value read from the structure.
VFIO_PCI_HOT_RESET_FLAG_DEV_ID = 1 << 0
VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED = 1 << 1
VFIO_PCI_DEVID_OWNED = 0
DEVID_NOT_OWNED = 0xFFFFFFFF

VFIO_REGION_INFO_FLAG_READ = 1 << 0
VFIO_REGION_INFO_FLAG_WRITE = 1 << 1
VFIO_REGION_INFO_FLAG_MMAP = 1 << 2
VFIO_REGION_INFO_FLAG_CAPS = 1 << 3
VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1
VFIO_REGION_INFO_CAP_TYPE = 2
VFIO_REGION_INFO_CAP_MSIX_MAPPABLE = 3
# Region types (VFIO_REGION_INFO_CAP_TYPE). The kernel's VFIO_REGION_TYPE_PCI_VENDOR_TYPE
# is the C int (1 << 31), negative there: ours has another name and the u32 value.
REGION_TYPE_PCI_VENDOR = 1 << 31
VFIO_REGION_TYPE_PCI_VENDOR_MASK = 0xFFFF
VFIO_REGION_TYPE_GFX = 1
VFIO_REGION_TYPE_CCW = 2
VFIO_REGION_SUBTYPE_INTEL_IGD_OPREGION = 1

VFIO_IRQ_INFO_EVENTFD = 1 << 0
VFIO_IRQ_INFO_MASKABLE = 1 << 1
VFIO_IRQ_INFO_AUTOMASKED = 1 << 2
VFIO_IRQ_INFO_NORESIZE = 1 << 3

VFIO_IRQ_SET_DATA_NONE = 1 << 0
VFIO_IRQ_SET_DATA_BOOL = 1 << 1
VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2
VFIO_IRQ_SET_ACTION_MASK = 1 << 3
VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4
VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5

VFIO_DMA_MAP_FLAG_READ = 1 << 0
VFIO_DMA_MAP_FLAG_WRITE = 1 << 1
VFIO_IOMMU_INFO_PGSIZES = 1 << 0
VFIO_IOMMU_INFO_CAPS = 1 << 1
VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1

VFIO_DEVICE_FEATURE_MASK = 0xFFFF
VFIO_DEVICE_FEATURE_GET = 1 << 16
VFIO_DEVICE_FEATURE_SET = 1 << 17
VFIO_DEVICE_FEATURE_PROBE = 1 << 18
# vfio-pci's own features (all SET only).
VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY = 3
VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP = 4
VFIO_DEVICE_FEATURE_LOW_POWER_EXIT = 5

IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0
IOMMU_IOAS_MAP_WRITEABLE = 1 << 1
IOMMU_IOAS_MAP_READABLE = 1 << 2

# vfio-pci region and IRQ indexes.
VFIO_PCI_BAR0_REGION_INDEX = 0
VFIO_PCI_ROM_REGION_INDEX = 6
VFIO_PCI_CONFIG_REGION_INDEX = 7
VFIO_PCI_VGA_REGION_INDEX = 8
VFIO_PCI_NUM_REGIONS = 9
VFIO_PCI_INTX_IRQ_INDEX = 0
VFIO_PCI_MSI_IRQ_INDEX = 1
VFIO_PCI_MSIX_IRQ_INDEX = 2
VFIO_PCI_ERR_IRQ_INDEX = 3
VFIO_PCI_REQ_IRQ_INDEX = 4

# vfiokit-pci's private device feature (kmod/vfiokit_pci/vfiokit_pci_uapi.h).
VFIOKIT_DEVICE_FEATURE_INTX_STATE = 0xFA00
VFIOKIT_INTX_OFF, VFIOKIT_INTX_ADAPTIVE, VFIOKIT_INTX_EXCLUSIVE = 0, 1, 2
# vfiokit-pci's INTx state page: a device-specific region of this type (a PCI vendor type
# with vendor ID 0xffff, which no vendor holds), mapped read-only (struct vfiokit_intx_page).
VFIOKIT_REGION_TYPE = 0x80000000 | 0xFFFF
VFIOKIT_REGION_SUBTYPE_INTX_PAGE = 1


class _S(C.Structure):
    """A uAPI structure: native layout (x86-64 and the other 64-bit arches agree here).

    Built by keyword only: positional values follow _fields_ order, which silently
    differs from the order callers think in (iommu_ioas_map has length before iova).
    """

    def __init__(self, *args: Any, **fields: Any) -> None:
        if args:
            raise TypeError(f"{type(self).__name__}: fields by keyword only")
        super().__init__(**fields)

    @classmethod
    def new(cls, extra: int = 0, **fields: Any) -> Self:
        """The structure by keyword, its size field (VFIO's argsz, iommufd's size) set to
        its own size plus `extra` bytes of data that follow it, unless given."""
        first = cls._fields_[0][0]
        if first in ("argsz", "size") and first not in fields:
            fields[first] = C.sizeof(cls) + extra
        return cls(**fields)

    def to_bytes(self) -> bytearray:
        return bytearray(bytes(self))

    @classmethod
    def parse(cls, buf: bytes | bytearray, offset: int = 0) -> Self:
        return cls.from_buffer_copy(bytes(buf[offset : offset + C.sizeof(cls)]))


class vfio_group_status(_S):
    _fields_ = [("argsz", C.c_uint32), ("flags", C.c_uint32)]


class vfio_device_info(_S):
    _fields_ = [
        ("argsz", C.c_uint32),
        ("flags", C.c_uint32),
        ("num_regions", C.c_uint32),
        ("num_irqs", C.c_uint32),
        ("cap_offset", C.c_uint32),
        ("pad", C.c_uint32),
    ]


class vfio_region_info(_S):
    _fields_ = [
        ("argsz", C.c_uint32),
        ("flags", C.c_uint32),
        ("index", C.c_uint32),
        ("cap_offset", C.c_uint32),
        ("size", C.c_uint64),
        ("offset", C.c_uint64),
    ]


class vfio_info_cap_header(_S):
    _fields_ = [("id", C.c_uint16), ("version", C.c_uint16), ("next", C.c_uint32)]


class vfio_region_sparse_mmap_area(_S):
    _fields_ = [("offset", C.c_uint64), ("size", C.c_uint64)]


class vfio_region_info_cap_sparse_mmap(_S):
    _fields_ = [
        ("header", vfio_info_cap_header),
        ("nr_areas", C.c_uint32),
        ("reserved", C.c_uint32),
    ]


class vfio_region_info_cap_type(_S):
    _fields_ = [
        ("header", vfio_info_cap_header),
        ("type", C.c_uint32),
        ("subtype", C.c_uint32),
    ]


class vfio_irq_info(_S):
    _fields_ = [
        ("argsz", C.c_uint32),
        ("flags", C.c_uint32),
        ("index", C.c_uint32),
        ("count", C.c_uint32),
    ]


class vfio_irq_set(_S):
    _fields_ = [
        ("argsz", C.c_uint32),
        ("flags", C.c_uint32),
        ("index", C.c_uint32),
        ("start", C.c_uint32),
        ("count", C.c_uint32),
    ]


class vfio_pci_dependent_device(_S):
    """group_id is a union with devid (by devid: VFIO_PCI_HOT_RESET_FLAG_DEV_ID)."""

    _fields_ = [
        ("group_id", C.c_uint32),
        ("segment", C.c_uint16),
        ("bus", C.c_uint8),
        ("devfn", C.c_uint8),
    ]


class vfio_pci_hot_reset_info(_S):
    _fields_ = [("argsz", C.c_uint32), ("flags", C.c_uint32), ("count", C.c_uint32)]


class vfio_pci_hot_reset(_S):
    _fields_ = [("argsz", C.c_uint32), ("flags", C.c_uint32), ("count", C.c_uint32)]


class vfio_iommu_type1_info(_S):
    _fields_ = [
        ("argsz", C.c_uint32),
        ("flags", C.c_uint32),
        ("iova_pgsizes", C.c_uint64),
        ("cap_offset", C.c_uint32),
        ("pad", C.c_uint32),
    ]


class vfio_iova_range(_S):
    _fields_ = [("start", C.c_uint64), ("end", C.c_uint64)]


class vfio_iommu_type1_info_cap_iova_range(_S):
    _fields_ = [
        ("header", vfio_info_cap_header),
        ("nr_iovas", C.c_uint32),
        ("reserved", C.c_uint32),
    ]


class vfio_iommu_type1_dma_map(_S):
    _fields_ = [
        ("argsz", C.c_uint32),
        ("flags", C.c_uint32),
        ("vaddr", C.c_uint64),
        ("iova", C.c_uint64),
        ("size", C.c_uint64),
    ]


class vfio_iommu_type1_dma_unmap(_S):
    _fields_ = [
        ("argsz", C.c_uint32),
        ("flags", C.c_uint32),
        ("iova", C.c_uint64),
        ("size", C.c_uint64),
    ]


class vfio_device_feature(_S):
    _fields_ = [("argsz", C.c_uint32), ("flags", C.c_uint32)]


class vfio_device_bind_iommufd(_S):
    _fields_ = [
        ("argsz", C.c_uint32),
        ("flags", C.c_uint32),
        ("iommufd", C.c_int32),
        ("out_devid", C.c_uint32),
    ]


class vfio_device_attach_iommufd_pt(_S):
    _fields_ = [("argsz", C.c_uint32), ("flags", C.c_uint32), ("pt_id", C.c_uint32)]


class vfio_device_detach_iommufd_pt(_S):
    _fields_ = [("argsz", C.c_uint32), ("flags", C.c_uint32)]


class iommu_destroy(_S):
    _fields_ = [("size", C.c_uint32), ("id", C.c_uint32)]


class iommu_ioas_alloc(_S):
    _fields_ = [("size", C.c_uint32), ("flags", C.c_uint32), ("out_ioas_id", C.c_uint32)]


class iommu_iova_range(_S):
    _fields_ = [("start", C.c_uint64), ("last", C.c_uint64)]


class iommu_ioas_iova_ranges(_S):
    _fields_ = [
        ("size", C.c_uint32),
        ("ioas_id", C.c_uint32),
        ("num_iovas", C.c_uint32),
        ("reserved", C.c_uint32),
        ("allowed_iovas", C.c_uint64),
        ("out_iova_alignment", C.c_uint64),
    ]


class iommu_ioas_map(_S):
    _fields_ = [
        ("size", C.c_uint32),
        ("flags", C.c_uint32),
        ("ioas_id", C.c_uint32),
        ("reserved", C.c_uint32),
        ("user_va", C.c_uint64),
        ("length", C.c_uint64),
        ("iova", C.c_uint64),
    ]


class iommu_ioas_unmap(_S):
    _fields_ = [
        ("size", C.c_uint32),
        ("ioas_id", C.c_uint32),
        ("iova", C.c_uint64),
        ("length", C.c_uint64),
    ]


class vfiokit_intx_state(_S):
    _fields_ = [
        ("version", C.c_uint32),
        ("mode", C.c_uint32),
        ("irq", C.c_uint32),
        ("mask_device", C.c_uint32),
        ("line_held", C.c_uint32),
        ("dev_masked", C.c_uint32),
        ("masked", C.c_uint32),
        ("reserved", C.c_uint32),
        ("line_count", C.c_uint64),
        ("device_count", C.c_uint64),
    ]


class vfiokit_intx_page(_S):
    _fields_ = [
        ("version", C.c_uint32),
        ("mode", C.c_uint32),
        ("mask_device", C.c_uint32),
        ("reserved", C.c_uint32),
    ]


# Every structure, for the layout test: name -> class.
STRUCTS: dict[str, type[_S]] = {
    name: obj
    for name, obj in dict(globals()).items()
    if isinstance(obj, type) and issubclass(obj, _S) and obj is not _S
}
# The kernel's names where ours differ (a union member, a reserved field).
FIELD_ALIASES = {
    ("iommu_ioas_iova_ranges", "reserved"): "__reserved",
    ("iommu_ioas_map", "reserved"): "__reserved",
}
