"""Parsing of PCI configuration space bytes: header fields and the capability list.

Pure functions over ``bytes``: they never raise on short or garbage input (a truncated
read, as an unprivileged user gets 64 bytes of sysfs ``config``), they report what they
could not see as ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass

COMMAND = 0x04
STATUS = 0x06
CAP_PTR = 0x34
INTERRUPT_PIN = 0x3D

COMMAND_INTX_DISABLE = 0x400
STATUS_INTERRUPT = 0x08
STATUS_CAP_LIST = 0x10

CAP_ID_PM = 0x01
CAP_ID_MSI = 0x05
CAP_ID_PCIE = 0x10
CAP_ID_MSIX = 0x11

_CAP_NAMES = {
    0x01: "pm",
    0x05: "msi",
    0x09: "vendor",
    0x10: "pcie",
    0x11: "msix",
    0x12: "sata",
    0x13: "af",
    0x0D: "ssvid",
}


def _u8(cfg: bytes, off: int) -> int | None:
    return cfg[off] if 0 <= off < len(cfg) else None


def _u16(cfg: bytes, off: int) -> int | None:
    return (
        int.from_bytes(cfg[off : off + 2], "little") if off >= 0 and off + 2 <= len(cfg) else None
    )


def _u32(cfg: bytes, off: int) -> int | None:
    return (
        int.from_bytes(cfg[off : off + 4], "little") if off >= 0 and off + 4 <= len(cfg) else None
    )


def capabilities(cfg: bytes) -> list[tuple[int, int]] | None:
    """The standard capability list as ``[(cap_id, offset), ...]``.

    None when the list cannot be read (config space shorter than 256 bytes, as it is for an
    unprivileged reader); ``[]`` when the device has none. Loops and bad pointers stop the walk.
    """
    status = _u16(cfg, STATUS)
    if status is None or not status & STATUS_CAP_LIST:
        return [] if status is not None else None
    if len(cfg) < 256:
        return None
    caps: list[tuple[int, int]] = []
    seen: set[int] = set()
    ptr = (_u8(cfg, CAP_PTR) or 0) & 0xFC
    while ptr >= 0x40 and ptr not in seen and len(seen) < 48:
        seen.add(ptr)
        cap_id, nxt = _u8(cfg, ptr), _u8(cfg, ptr + 1)
        if cap_id is None or nxt is None:
            break
        caps.append((cap_id, ptr))
        ptr = nxt & 0xFC
    return caps


def cap_name(cap_id: int) -> str:
    return _CAP_NAMES.get(cap_id, f"cap-{cap_id:#04x}")


@dataclass(frozen=True)
class MsiCap:
    offset: int
    vectors: int  # multiple message capable: how many vectors the device can ask for
    is_64bit: bool
    per_vector_mask: bool
    enabled: bool


@dataclass(frozen=True)
class MsixCap:
    offset: int
    table_size: int
    table_bar: int
    table_offset: int
    pba_bar: int
    pba_offset: int
    enabled: bool


def msi(cfg: bytes) -> MsiCap | None:
    for cap_id, off in capabilities(cfg) or []:
        ctrl = _u16(cfg, off + 2)
        if cap_id == CAP_ID_MSI and ctrl is not None:
            return MsiCap(
                offset=off,
                vectors=1 << min((ctrl >> 1) & 7, 5),
                is_64bit=bool(ctrl & 0x80),
                per_vector_mask=bool(ctrl & 0x100),
                enabled=bool(ctrl & 1),
            )
    return None


def msix(cfg: bytes) -> MsixCap | None:
    for cap_id, off in capabilities(cfg) or []:
        ctrl, table, pba = _u16(cfg, off + 2), _u32(cfg, off + 4), _u32(cfg, off + 8)
        if cap_id == CAP_ID_MSIX and None not in (ctrl, table, pba):
            assert ctrl is not None and table is not None and pba is not None
            return MsixCap(
                offset=off,
                table_size=(ctrl & 0x7FF) + 1,
                table_bar=table & 7,
                table_offset=table & ~7,
                pba_bar=pba & 7,
                pba_offset=pba & ~7,
                enabled=bool(ctrl & 0x8000),
            )
    return None


def is_pcie(cfg: bytes) -> bool | None:
    caps = capabilities(cfg)
    return None if caps is None else any(cid == CAP_ID_PCIE for cid, _ in caps)


def intx_disabled(cfg: bytes) -> bool | None:
    """The INTx Disable bit (PCI 2.3) of the command register."""
    cmd = _u16(cfg, COMMAND)
    return None if cmd is None else bool(cmd & COMMAND_INTX_DISABLE)


def intx_asserted(cfg: bytes) -> bool | None:
    """The Interrupt Status bit (PCI 2.3) of the status register."""
    status = _u16(cfg, STATUS)
    return None if status is None else bool(status & STATUS_INTERRUPT)


def interrupt_pin(cfg: bytes) -> int | None:
    """0 = no INTx pin, 1..4 = INTA..INTD."""
    pin = _u8(cfg, INTERRUPT_PIN)
    return pin if pin is None or pin <= 4 else None
