"""Binding devices to VFIO drivers: plan (read-only), bind with a journal, restore; assign to
users; persist across reboots.

The names below load on first use, so that `vfiokit list` (which only reads persist.d)
does not pay for psutil and the binder.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_WHERE = {
    "DRIVERS": "binder", "Binder": "binder", "Plan": "binder", "Step": "binder",
    "SysfsWriter": "binder", "default_driver": "binder", "plan_bind": "binder",
    "HostState": "inuse", "InUse": "inuse", "Use": "inuse", "root_devices": "inuse",
    "uses": "inuse",
    "Entry": "journal", "Journal": "journal",
}  # fmt: skip

if TYPE_CHECKING:
    from .binder import DRIVERS, Binder, Plan, Step, SysfsWriter, default_driver, plan_bind
    from .inuse import HostState, InUse, Use, root_devices, uses
    from .journal import Entry, Journal


def __getattr__(name: str) -> object:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)


__all__ = [
    "DRIVERS", "Binder", "Entry", "HostState", "InUse", "Journal", "Plan", "Step", "SysfsWriter",
    "Use", "default_driver", "plan_bind", "root_devices", "uses",
]  # fmt: skip
