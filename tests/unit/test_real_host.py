"""Read-only commands on the machine the tests run on: they must agree with sysfs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PCI = Path("/sys/bus/pci/devices")


def vfiokit(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "VFIOKIT_SYSROOT"}
    return subprocess.run(
        [sys.executable, "-m", "vfiokit", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.skipif(not PCI.is_dir(), reason="this machine has no /sys/bus/pci")
def test_list_agrees_with_sysfs() -> None:
    res = vfiokit("list", "--json")
    assert res.returncode == 0, res.stderr
    listed = {d["address"]: d["driver"] for d in json.loads(res.stdout)["devices"]}
    truth = {
        p.name: (os.path.basename(os.readlink(p / "driver")) if (p / "driver").exists() else None)
        for p in PCI.iterdir()
    }
    assert listed == truth


@pytest.mark.skipif(not PCI.is_dir(), reason="this machine has no /sys/bus/pci")
def test_show_and_doctor_every_device() -> None:
    for p in sorted(PCI.iterdir()):
        res = vfiokit("show", p.name, "--json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["address"] == p.name
    res = vfiokit("doctor", "--json")
    assert res.returncode in (0, 10, 11)
    assert json.loads(res.stdout)["exit_code"] == res.returncode
