"""Binding devices to VFIO drivers: plan (read-only), bind with a journal, restore."""

from .binder import DRIVERS, Binder, Plan, Step, SysfsWriter, default_driver, plan_bind
from .inuse import HostState, Use, root_devices, uses
from .journal import Entry, Journal

__all__ = [
    "DRIVERS",
    "Binder",
    "Entry",
    "HostState",
    "Journal",
    "Plan",
    "Step",
    "SysfsWriter",
    "Use",
    "default_driver",
    "plan_bind",
    "root_devices",
    "uses",
]
