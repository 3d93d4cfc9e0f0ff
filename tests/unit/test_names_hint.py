"""Blank names get a one-line hint: once, on stderr, never in --json stdout."""

from __future__ import annotations

import json

import pytest

from fakesys import FakeSys
from unit import scenarios
from vfiokit import SysRoot, names


@pytest.fixture
def run(cli):
    return cli


@pytest.mark.parametrize("args", [["list"], ["list", "--json"], ["show", "03:00.0"],
                                  ["show", "03:00.0", "--json"]])  # fmt: skip
def test_hint_once_on_stderr(fake: FakeSys, run, args: list[str]) -> None:
    scenarios.alone_in_group(fake)
    res = run(*args)
    assert res.exit_code == 0
    assert res.stderr.count("apt install pci.ids") == 1
    assert "pci.ids" not in res.stdout
    if "--json" in args:
        json.loads(res.stdout)


def test_no_hint_with_pci_ids(fake: FakeSys, run) -> None:
    scenarios.alone_in_group(fake)
    fake.write("usr/share/hwdata/pci.ids", "8086  Intel Corporation\n\t10d3  82574L\n")
    assert names.available(SysRoot(fake.root))
    res = run("list")
    assert res.stderr == "" and "Intel Corporation 82574L" in res.stdout


def test_pci_ids_first_udev_only_for_what_it_lacks(fake: FakeSys, monkeypatch) -> None:
    """pyudev (and libudev) are loaded only for a device pci.ids does not name."""
    fake.write("usr/share/misc/pci.ids", "8086  Intel Corporation\n\t10d3  82574L\n")
    asked: list[str] = []

    def udev(_sysroot, sys_path: str) -> dict[str, str]:
        asked.append(sys_path)
        return {"ID_VENDOR_FROM_DATABASE": "udev vendor", "ID_MODEL_FROM_DATABASE": "udev model"}

    monkeypatch.setattr(names, "_udev_properties", udev)
    monkeypatch.setattr(SysRoot, "is_host", property(lambda self: True))
    host = SysRoot(fake.root)
    assert names.lookup(host, "0000:03:00.0", 0x8086, 0x10D3) == ("Intel Corporation", "82574L")
    assert asked == []
    assert names.lookup(host, "0000:04:00.0", 0x8086, 0x1234) == ("Intel Corporation",
                                                                  "udev model")  # fmt: skip
    assert names.lookup(host, "0000:05:00.0", 0x1AF4, 0x1041) == ("udev vendor", "udev model")
    assert asked == ["/sys/bus/pci/devices/0000:04:00.0", "/sys/bus/pci/devices/0000:05:00.0"]
