"""NVMe layouts (NVM Express Base Specification 2.0, the parts vfiokit's driver uses):
controller registers and their fields, opcodes, status codes, and the submission queue
entry, completion queue entry and Identify data structures as ctypes structures.

Bytes only, like vfiokit.vfio.uapi: no device access here. Everything is little-endian;
structures are built by keyword only (see `_LE`).
"""

from __future__ import annotations

import ctypes as C
from dataclasses import dataclass
from typing import Any, Self

# -- controller registers (BAR0) -------------------------------------------------------------
CAP = 0x00  # Controller Capabilities, 64-bit
VS = 0x08  # Version
CC = 0x14  # Controller Configuration
CSTS = 0x1C  # Controller Status
AQA = 0x24  # Admin Queue Attributes
ASQ = 0x28  # Admin Submission Queue Base Address, 64-bit
ACQ = 0x30  # Admin Completion Queue Base Address, 64-bit
DOORBELLS = 0x1000  # SQ y tail: 0x1000 + (2y) * (4 << CAP.DSTRD); CQ y head: (2y + 1)

CC_EN = 1 << 0
CC_CSS_NVM = 0 << 4
CC_MPS_SHIFT = 7
CC_AMS_RR = 0 << 11
CC_SHN_NORMAL = 1 << 14
CC_SHN_MASK = 3 << 14
CC_IOSQES_SHIFT = 16
CC_IOCQES_SHIFT = 20

CSTS_RDY = 1 << 0
CSTS_CFS = 1 << 1  # Controller Fatal Status
CSTS_SHST_MASK = 3 << 2
CSTS_SHST_COMPLETE = 2 << 2

SQE_SIZE_LOG2 = 6  # 64-byte submission queue entries
CQE_SIZE_LOG2 = 4  # 16-byte completion queue entries

# -- opcodes ---------------------------------------------------------------------------------
ADMIN_DELETE_SQ = 0x00
ADMIN_CREATE_SQ = 0x01
ADMIN_DELETE_CQ = 0x04
ADMIN_CREATE_CQ = 0x05
ADMIN_IDENTIFY = 0x06
IO_FLUSH = 0x00
IO_WRITE = 0x01
IO_READ = 0x02

CNS_NAMESPACE = 0x00
CNS_CONTROLLER = 0x01
QUEUE_PHYS_CONTIG = 1 << 0  # Create I/O SQ/CQ, CDW11 bit 0
CQ_IRQ_ENABLED = 1 << 1  # Create I/O CQ, CDW11 bit 1

# -- status (the upper 16 bits of completion dword 3) ----------------------------------------
SCT_GENERIC = 0
SCT_COMMAND_SPECIFIC = 1
SCT_MEDIA = 2
SC_SUCCESS = 0x00
SC_INVALID_OPCODE = 0x01
SC_INVALID_FIELD = 0x02
SC_DATA_TRANSFER_ERROR = 0x04
SC_INVALID_NAMESPACE = 0x0B
SC_PRP_OFFSET_INVALID = 0x13
SC_LBA_OUT_OF_RANGE = 0x80
# Generic command status codes that mean "the command as sent was wrong".
INVALID_COMMAND = {
    SC_INVALID_OPCODE,
    SC_INVALID_FIELD,
    SC_INVALID_NAMESPACE,
    SC_PRP_OFFSET_INVALID,
    SC_LBA_OUT_OF_RANGE,
}
STATUS_NAMES = {
    (SCT_GENERIC, SC_SUCCESS): "Successful Completion",
    (SCT_GENERIC, SC_INVALID_OPCODE): "Invalid Command Opcode",
    (SCT_GENERIC, SC_INVALID_FIELD): "Invalid Field in Command",
    (SCT_GENERIC, 0x03): "Command ID Conflict",
    (SCT_GENERIC, SC_DATA_TRANSFER_ERROR): "Data Transfer Error",
    (SCT_GENERIC, 0x06): "Internal Error",
    (SCT_GENERIC, SC_INVALID_NAMESPACE): "Invalid Namespace or Format",
    (SCT_GENERIC, SC_PRP_OFFSET_INVALID): "PRP Offset Invalid",
    (SCT_GENERIC, SC_LBA_OUT_OF_RANGE): "LBA Out of Range",
    (SCT_COMMAND_SPECIFIC, 0x00): "Completion Queue Invalid",
    (SCT_COMMAND_SPECIFIC, 0x01): "Invalid Queue Identifier",
    (SCT_COMMAND_SPECIFIC, 0x02): "Invalid Queue Size",
    (SCT_COMMAND_SPECIFIC, 0x08): "Invalid Interrupt Vector",
    (SCT_COMMAND_SPECIFIC, 0x0C): "Invalid Queue Deletion",
    (SCT_MEDIA, 0x80): "Write Fault",
    (SCT_MEDIA, 0x81): "Unrecovered Read Error",
}


@dataclass(frozen=True)
class Cap:
    """The fields of CAP the driver uses."""

    mqes: int  # Maximum Queue Entries Supported, 0's based
    cqr: bool  # Contiguous Queues Required
    to: int  # Timeout: worst-case time to CSTS.RDY changes, in 500 ms units
    dstrd: int  # Doorbell Stride: 4 << dstrd bytes between doorbells
    css: int  # Command Sets Supported (bit 0: the NVM command set)
    mpsmin: int  # Memory Page Size Minimum: 4096 << mpsmin bytes
    mpsmax: int

    @classmethod
    def parse(cls, value: int) -> Cap:
        return cls(
            mqes=value & 0xFFFF,
            cqr=bool(value >> 16 & 1),
            to=value >> 24 & 0xFF,
            dstrd=value >> 32 & 0xF,
            css=value >> 37 & 0xFF,
            mpsmin=value >> 48 & 0xF,
            mpsmax=value >> 52 & 0xF,
        )


def status_fields(status: int) -> tuple[int, int, bool, bool]:
    """(SCT, SC, More, Do Not Retry) of a completion's 16-bit status field (phase in bit 0)."""
    return status >> 9 & 0x7, status >> 1 & 0xFF, bool(status >> 14 & 1), bool(status >> 15 & 1)


class _LE(C.LittleEndianStructure):
    """An NVMe structure: little-endian, built by keyword only (positional values would
    follow _fields_ order, which is easy to get wrong in a 16-dword command)."""

    def __init__(self, *args: Any, **fields: Any) -> None:
        if args:
            raise TypeError(f"{type(self).__name__}: fields by keyword only")
        super().__init__(**fields)

    @classmethod
    def parse(cls, buf: bytes | bytearray | memoryview, offset: int = 0) -> Self:
        return cls.from_buffer_copy(bytes(buf[offset : offset + C.sizeof(cls)]))


class SubmissionEntry(_LE):
    """A 64-byte submission queue entry (the common command format)."""

    _fields_ = [
        ("opcode", C.c_uint8),
        ("flags", C.c_uint8),  # FUSE, PSDT (0: PRPs)
        ("cid", C.c_uint16),
        ("nsid", C.c_uint32),
        ("cdw2", C.c_uint32),
        ("cdw3", C.c_uint32),
        ("mptr", C.c_uint64),
        ("prp1", C.c_uint64),
        ("prp2", C.c_uint64),
        ("cdw10", C.c_uint32),
        ("cdw11", C.c_uint32),
        ("cdw12", C.c_uint32),
        ("cdw13", C.c_uint32),
        ("cdw14", C.c_uint32),
        ("cdw15", C.c_uint32),
    ]


class CompletionEntry(_LE):
    """A 16-byte completion queue entry."""

    _fields_ = [
        ("result", C.c_uint32),  # DW0: command specific
        ("dw1", C.c_uint32),
        ("sq_head", C.c_uint16),
        ("sq_id", C.c_uint16),
        ("cid", C.c_uint16),
        ("status", C.c_uint16),  # bit 0: phase tag; then SC, SCT, CRD, M, DNR
    ]


class IdentifyController(_LE):
    """Identify Controller (CNS 01h), 4096 bytes: the fields used here, the rest reserved."""

    _fields_ = [
        ("vid", C.c_uint16),
        ("ssvid", C.c_uint16),
        ("sn", C.c_char * 20),
        ("mn", C.c_char * 40),
        ("fr", C.c_char * 8),
        ("rab", C.c_uint8),
        ("ieee", C.c_uint8 * 3),
        ("cmic", C.c_uint8),
        ("mdts", C.c_uint8),  # Maximum Data Transfer Size: 2**mdts CAP.MPSMIN pages, 0 none
        ("cntlid", C.c_uint16),
        ("ver", C.c_uint32),
        ("rtd3r", C.c_uint32),
        ("rtd3e", C.c_uint32),  # RTD3 Entry Latency (µs): time a shutdown may take
        ("_rsvd92", C.c_uint8 * (512 - 92)),
        ("sqes", C.c_uint8),  # bits 3:0 required, 7:4 maximum entry size (log2)
        ("cqes", C.c_uint8),
        ("maxcmd", C.c_uint16),
        ("nn", C.c_uint32),  # Number of Namespaces
        ("_rsvd520", C.c_uint8 * (4096 - 520)),
    ]


class LbaFormat(_LE):
    _fields_ = [("ms", C.c_uint16), ("lbads", C.c_uint8), ("rp", C.c_uint8)]


class IdentifyNamespace(_LE):
    """Identify Namespace (CNS 00h), 4096 bytes: size, capacity and the LBA formats."""

    _fields_ = [
        ("nsze", C.c_uint64),  # Namespace Size, in logical blocks
        ("ncap", C.c_uint64),
        ("nuse", C.c_uint64),
        ("nsfeat", C.c_uint8),
        ("nlbaf", C.c_uint8),  # Number of LBA Formats, 0's based
        ("flbas", C.c_uint8),  # bits 3:0 (and 6:5, high) the format in use
        ("mc", C.c_uint8),
        ("_rsvd28", C.c_uint8 * (128 - 28)),
        ("lbaf", LbaFormat * 64),
        ("_rsvd384", C.c_uint8 * (4096 - 384)),
    ]

    @property
    def lba_format_index(self) -> int:
        return int(self.flbas & 0xF | (self.flbas >> 5 & 0x3) << 4)
