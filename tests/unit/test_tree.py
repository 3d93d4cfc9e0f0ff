"""`vfiokit list --tree` on a fake host with bridges: hierarchy, groups, INTx, in use."""

import json

import pytest
from typer.testing import CliRunner

from fakesys import FakeSys
from unit import scenarios
from vfiokit import topology
from vfiokit.binding import HostState
from vfiokit.cli import app
from vfiokit.sysroot import SysRoot

HOST = HostState(mounts={"/dev/vda1": "/"}, net={"enp2s0": (True, ["192.0.2.9"])})


@pytest.fixture
def run(fake: FakeSys, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VFIOKIT_SYSROOT", str(fake.root))
    monkeypatch.setattr(HostState, "read", classmethod(lambda cls: HOST))
    return lambda *args: CliRunner().invoke(app, list(args))


def test_parents_follow_sysfs(fake: FakeSys) -> None:
    d = scenarios.behind_bridges(fake)
    sysroot = SysRoot(fake.root)
    assert topology.parent_of(sysroot, d["nic"]) == d["port"]
    assert topology.parent_of(sysroot, d["rtl"]) == d["switch"]
    assert topology.parent_of(sysroot, d["port"]) == "pci0000:00"


def test_build_nests_and_orders(fake: FakeSys) -> None:
    d = scenarios.behind_bridges(fake)
    sysroot = SysRoot(fake.root)
    [root] = topology.build(sysroot, sysroot.listdir("/sys/bus/pci/devices"))
    assert root.address == "pci0000:00"
    assert [c.address for c in root.children] == [d["port"], "0000:00:1d.0", d["sata"]]
    assert [c.address for c in root.children[1].children[0].children] == [d["rtl"]]
    # a device whose bridge is not listed hangs from its root bus
    [only] = topology.build(sysroot, [d["rtl"]])
    assert [c.address for c in only.children] == [d["rtl"]]


def test_tree_text(fake: FakeSys, run) -> None:
    d = scenarios.behind_bridges(fake)
    res = run("list", "--tree")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0] == "pci0000:00"
    assert lines[1].startswith("├─ 0000:00:1c.0  bridge  pcieport  group 2")
    assert lines[2].startswith("│  └─ 0000:02:00.0  network  e1000e  group 2")
    assert f"intx 18 shared with {d['rtl']}" in lines[2]
    assert "* in use: enp2s0 192.0.2.9" in lines[2]
    assert lines[4].startswith("│  └─ 0000:04:00.0")
    assert lines[5].startswith("│     └─ 0000:05:00.0  network  r8169  group 4")
    assert lines[6].startswith("└─ 0000:00:1f.2  storage  ahci  group 5")
    assert "!! in use: root fs" in lines[6]
    assert "intx" not in lines[1]  # a bridge without a pin


def test_tree_json_is_the_same_nested(fake: FakeSys, run) -> None:
    d = scenarios.behind_bridges(fake)
    doc = json.loads(run("list", "--tree", "--json").stdout)
    assert doc["schema"] == 1
    [root] = doc["tree"]
    assert root["bus"] == "pci0000:00"
    port, _, sata = root["children"]
    assert port["bridge"] is True and port["intx_irq"] is None
    [nic] = port["children"]
    assert nic["address"] == d["nic"] and nic["iommu_group"] == "2"
    assert nic["intx_irq"] == 18 and nic["intx_shared_with"] == [d["rtl"]]
    assert nic["in_use"][0]["short"] == "enp2s0 192.0.2.9"
    assert sata["in_use"][0]["fatal"] is True and sata["children"] == []
    assert set(nic) == {"address", "class_name", "bridge", "driver", "iommu_group",
                        "intx_irq", "intx_shared_with", "in_use", "children"}  # fmt: skip


def test_tree_takes_no_filters(fake: FakeSys, run) -> None:
    scenarios.behind_bridges(fake)
    res = run("list", "--tree", "--class", "network")
    assert res.exit_code == 2 and "--tree" in res.stderr
