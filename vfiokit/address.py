"""PCI addresses: ``dddd:bb:dd.f`` (domain, bus, device, function) and the short ``bb:dd.f``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidArgument

_RE = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{1,8}):)?(?P<bus>[0-9a-fA-F]{1,2}):"
    r"(?P<dev>[0-9a-fA-F]{1,2})\.(?P<fn>[0-9a-fA-F])$"
)
_FORM = "dddd:bb:dd.f or bb:dd.f, hexadecimal, e.g. 0000:00:04.0"


@dataclass(frozen=True, order=True)
class PciAddress:
    """A validated PCI address. ``str()`` gives the canonical ``0000:00:04.0`` form."""

    domain: int
    bus: int
    device: int
    function: int

    def __post_init__(self) -> None:
        for name, value, top in (
            ("domain", self.domain, 0xFFFF_FFFF),
            ("bus", self.bus, 0xFF),
            ("device", self.device, 0x1F),
            ("function", self.function, 0x7),
        ):
            if not isinstance(value, int) or not 0 <= value <= top:
                shown = f"{value:#x}" if isinstance(value, int) else repr(value)
                raise InvalidArgument(
                    f"PCI {name} {shown} out of range (0x0..{top:#x})",
                    remedy=f"give an address of the form {_FORM}",
                )

    @classmethod
    def parse(cls, text: str) -> PciAddress:
        """Parse ``dddd:bb:dd.f`` or ``bb:dd.f`` (domain 0). Raises InvalidArgument."""
        m = _RE.match(text.strip()) if isinstance(text, str) else None
        if not m:
            raise InvalidArgument(
                f"invalid PCI address {text!r}", remedy=f"give an address of the form {_FORM}"
            )
        return cls(
            int(m["domain"] or "0", 16), int(m["bus"], 16), int(m["dev"], 16), int(m["fn"], 16)
        )

    @property
    def slot(self) -> str:
        """``dddd:bb:dd``, the slot without the function."""
        return f"{self.domain:04x}:{self.bus:02x}:{self.device:02x}"

    def __str__(self) -> str:
        return f"{self.slot}.{self.function:x}"
