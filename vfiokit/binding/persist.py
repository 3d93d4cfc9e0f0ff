"""Bindings that survive a reboot, in the style of driverctl.

`vfiokit bind --persist` records the device's VFIO driver in /etc/vfiokit/persist.d/<BDF>
and installs two files that act on it at every boot and hot-plug:

* a udev rule: when a PCI device with a persist.d file appears, it writes the driver into
  the device's driver_override (so a native driver that loads later never takes it), and
  asks systemd for vfiokit-persist@<BDF>.service;
* that template unit: a oneshot running `vfiokit apply-persisted <BDF>`, ordered before
  the network comes up, which binds the device to its driver (unbinding a native driver
  that probed it before udev ran).

`vfiokit unbind --persist` removes the record; the rule and the unit go with the last one.
"""

from __future__ import annotations

import sys

from ..sysroot import SysRoot
from .journal import write_durably

PERSIST_DIR = "/etc/vfiokit/persist.d"
RULE = "/etc/udev/rules.d/60-vfiokit-persist.rules"
UNIT = "/etc/systemd/system/vfiokit-persist@.service"


def rule_text() -> str:
    return (
        "# Written by `vfiokit bind --persist`: keep persisted devices (listed in\n"
        f"# {PERSIST_DIR}) away from native drivers and bind them to VFIO.\n"
        f'ACTION=="add", SUBSYSTEM=="pci", TEST=="{PERSIST_DIR}/$kernel", '
        f'PROGRAM="/bin/cat {PERSIST_DIR}/$kernel", ATTR{{driver_override}}="$result", '
        'TAG+="systemd", ENV{SYSTEMD_WANTS}+="vfiokit-persist@$kernel.service"\n'
    )


def unit_text(python: str | None = None) -> str:
    python = python or sys.executable
    return (
        "# Written by `vfiokit bind --persist`.\n"
        "[Unit]\n"
        "Description=vfiokit: bind PCI device %I to its persisted VFIO driver\n"
        "DefaultDependencies=no\n"
        "After=systemd-udevd.service systemd-modules-load.service\n"
        "Before=network-pre.target shutdown.target\n"
        "Wants=network-pre.target\n"
        "Conflicts=shutdown.target\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        f"ExecStart={python} -m vfiokit apply-persisted %I\n"
    )


class Persisted:
    """The persist.d records and the files that act on them, under a SysRoot."""

    def __init__(self, sysroot: SysRoot | None = None):
        self.sysroot = sysroot or SysRoot()
        self.dir = self.sysroot.path(PERSIST_DIR)

    def all(self) -> dict[str, str]:
        """BDF -> driver of every persisted binding."""
        out = {}
        for name in self.sysroot.listdir(PERSIST_DIR):
            driver = self.sysroot.read(f"{PERSIST_DIR}/{name}")
            if driver and not name.startswith("."):
                out[name] = driver
        return out

    def files(self) -> list[str]:
        """The host paths `add` writes (for --dry-run and the docs)."""
        return [PERSIST_DIR + "/<BDF>", RULE, UNIT]

    def add(self, address: str, driver: str) -> list[str]:
        write_durably(self.dir / address, driver + "\n", mode=0o644)
        write_durably(self.sysroot.path(RULE), rule_text(), mode=0o644)
        write_durably(self.sysroot.path(UNIT), unit_text(), mode=0o644)
        return [f"{PERSIST_DIR}/{address}", RULE, UNIT]

    def remove(self, address: str) -> bool:
        path = self.dir / address
        existed = path.exists()
        path.unlink(missing_ok=True)
        if not self.all():
            for f in (RULE, UNIT):
                self.sysroot.path(f).unlink(missing_ok=True)
        return existed
