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

The unit runs early (DefaultDependencies=no), long after the command that wrote it: its
ExecStart names the `vfiokit` entry point that is running (else the interpreter, `-m
vfiokit`), refuses one in a folder that does not survive a reboot (/tmp, /run), warns for
a home directory, and asks systemd to mount first (RequiresMountsFor=) every folder it
needs that is not on the root file system (:func:`launcher`).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import Unsupported
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


VOLATILE = ("/tmp", "/var/tmp", "/dev/shm", "/run")  # gone, or emptied, at a reboot
HOMES = ("/home", "/root")  # may be mounted late, encrypted, or automounted at login


@dataclass(frozen=True)
class Launcher:
    """How the boot unit runs vfiokit: ExecStart's command, the folders to mount first, and
    what may still go wrong (for the user to read)."""

    command: tuple[str, ...]  # ("/opt/vfiokit/bin/vfiokit",) or (python, "-m", "vfiokit")
    mounts: tuple[str, ...] = ()  # RequiresMountsFor=: the folders not on the root fs
    warnings: tuple[str, ...] = ()


def _under(path: str, tops: tuple[str, ...]) -> bool:
    return any(path == t or path.startswith(t + "/") for t in tops)


def _on_root_fs(path: str) -> bool:
    """Whether `path` (or its nearest existing parent) is on the root file system."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return p.stat().st_dev == Path("/").stat().st_dev


def _interpreter(script: str) -> str | None:
    """The interpreter of a console script (its `#!` line), or None."""
    try:
        with open(script, "rb") as f:
            first = f.readline(4096)
    except OSError:
        return None
    words = first[2:].decode(errors="replace").split() if first.startswith(b"#!") else []
    return words[0] if words else None


def _same(a: str | None, b: str) -> bool:
    return a is not None and os.path.realpath(a) == os.path.realpath(b)


def launcher(argv0: str | None = None, executable: str | None = None,
             package_dir: str | None = None, which: Callable[[str], str | None] = shutil.which,
             on_root_fs: Callable[[str], bool] = _on_root_fs) -> Launcher:  # fmt: skip
    """What the unit's ExecStart runs: the `vfiokit` entry point this process was started
    as (sys.argv[0]), or the one on PATH when it belongs to this interpreter, else this
    interpreter with `-m vfiokit`. Raises Unsupported when that, its interpreter or the
    vfiokit package lives where a reboot does not keep it."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    executable = executable or sys.executable
    package_dir = package_dir or str(Path(__file__).resolve().parents[1])
    script = None
    if Path(argv0).name == "vfiokit" and os.path.isfile(argv0) and os.access(argv0, os.X_OK):
        script = os.path.abspath(argv0)
    else:
        found = which("vfiokit")
        if found and _same(_interpreter(found), executable):
            script = os.path.abspath(found)
    if script is not None:
        command: tuple[str, ...] = (script,)
        python = _interpreter(script) or executable
    else:
        command, python = (os.path.abspath(executable), "-m", "vfiokit"), executable
    needed = list(dict.fromkeys(
        [command[0], os.path.realpath(command[0]), os.path.abspath(python),
         os.path.realpath(python), os.path.join(package_dir, "__init__.py")]))  # fmt: skip
    for path in needed:
        if any(c.isspace() for c in path) or not path.isprintable():
            raise Unsupported(f"--persist: the boot unit cannot run {path!r} (a space in the "
                              "path)", remedy="install vfiokit in a path without spaces "
                              "(docs/install.md)")  # fmt: skip
        if _under(path, VOLATILE):
            raise Unsupported(
                f"--persist: vfiokit runs from {path}, which does not survive a reboot: the "
                "boot unit would not find it",
                remedy="install vfiokit where it stays, e.g. python3 -m venv /opt/vfiokit && "
                "/opt/vfiokit/bin/pip install vfiokit-*.whl, and run /opt/vfiokit/bin/vfiokit "
                "bind --persist (docs/install.md)",
            )
    warnings = tuple(dict.fromkeys(
        f"the boot unit runs {path}, in a home directory: it works only if that is mounted "
        "early in the boot and readable by root (not encrypted or automounted at login); "
        "a system-wide install (/opt, /usr/local) is safer (docs/install.md)"
        for path in needed if _under(path, HOMES)))  # fmt: skip
    mounts = tuple(dict.fromkeys(os.path.dirname(p) for p in needed if not on_root_fs(p)))
    return Launcher(command, mounts, warnings[:1])


def _unit_word(word: str) -> str:
    return word.replace("%", "%%")  # systemd expands %-specifiers in ExecStart


def unit_text(launch: Launcher | None = None) -> str:
    launch = launch if launch is not None else launcher()
    mounts = (
        f"RequiresMountsFor={' '.join(_unit_word(m) for m in launch.mounts)}\n"
        if launch.mounts else ""
    )  # fmt: skip
    return (
        "# Written by `vfiokit bind --persist`.\n"
        "[Unit]\n"
        "Description=vfiokit: bind PCI device %I to its persisted VFIO driver\n"
        "DefaultDependencies=no\n"
        "After=systemd-udevd.service systemd-modules-load.service\n"
        "Before=network-pre.target shutdown.target\n"
        "Wants=network-pre.target\n"
        "Conflicts=shutdown.target\n"
        f"{mounts}"
        "\n"
        "[Service]\n"
        # No RemainAfterExit: the unit must end when it is done, so that the next `add` of
        # the device (a hot-plug, a PCI rescan) starts it again through SYSTEMD_WANTS.
        "Type=oneshot\n"
        f"ExecStart={' '.join(_unit_word(w) for w in launch.command)} apply-persisted %I\n"
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

    def add(self, address: str, driver: str, launch: Launcher | None = None) -> list[str]:
        """Record the binding and (re)write the rule and the unit; `launch`: launcher()."""
        unit = unit_text(launch)
        write_durably(self.dir / address, driver + "\n", mode=0o644)
        write_durably(self.sysroot.path(RULE), rule_text(), mode=0o644)
        write_durably(self.sysroot.path(UNIT), unit, mode=0o644)
        return [f"{PERSIST_DIR}/{address}", RULE, UNIT]

    def remove(self, address: str) -> bool:
        path = self.dir / address
        existed = path.exists()
        path.unlink(missing_ok=True)
        if not self.all():
            for f in (RULE, UNIT):
                self.sysroot.path(f).unlink(missing_ok=True)
        return existed
