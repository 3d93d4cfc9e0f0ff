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
