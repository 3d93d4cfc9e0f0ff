"""VM tests write to sysfs and open devices: they refuse to run anywhere but the test VM.

Being in the VM is checked, not assumed: the kernel command line must carry vfiokit.vm=1,
the running kernel must be the test bed's own (release ending in -vfiokit), the root file
system must be the host's 9p share and the project must be mounted from the 9p share
scripts/vm sets up.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def in_test_vm() -> tuple[bool, str]:
    cmdline = Path("/proc/cmdline").read_text().split()
    if "vfiokit.vm=1" not in cmdline:
        return False, "kernel command line lacks vfiokit.vm=1"
    release = os.uname().release
    if "-vfiokit" not in release:
        return False, f"kernel {release} is not the test bed's"
    if "root=hostroot" not in cmdline:
        return False, "root is not the test bed's 9p share"
    if not any(
        line.startswith("project ") for line in Path("/proc/mounts").read_text().splitlines()
    ):
        return False, "the project share is not mounted"
    return True, "in the vfiokit test VM"


IN_VM, WHY = in_test_vm()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.vm)
            if not IN_VM:
                item.add_marker(pytest.mark.skip(reason=f"VM only ({WHY}); run scripts/test --vm"))


@pytest.fixture(scope="session")
def topology():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from vmlib import qemu

    return qemu.load()


@pytest.fixture(scope="session")
def vfiokit_modules() -> None:
    """Load the test bed's out-of-tree modules (built by scripts/build-kernel)."""
    import subprocess

    cmdline = Path("/proc/cmdline").read_text().split()
    for name in ("vfiokit_pci", "vfiokit_test_sharer"):
        if not Path(f"/sys/module/{name}").exists():
            ko = Path(os.environ["VFIOKIT_KERNEL_OUT"]) / f"{name}.ko"
            # As modprobe would: the kernel command line's "<module>.<param>=<value>".
            params = [a.split(".", 1)[1] for a in cmdline if a.startswith(f"{name}.")]
            subprocess.run(["insmod", str(ko), *params], check=True)
