"""One verdict on "in use" for list, doctor and bind: doctor never proposes a bind that
bind refuses, and list shows what holds each device."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fakesys import FakeSys
from unit import scenarios
from vfiokit import Busy, SysRoot
from vfiokit import doctor as doc
from vfiokit.binding import Binder, HostState, InUse, Journal, plan_bind
from vfiokit.cli import app

# The guest's view: vda1 is mounted on / and enp0s3 carries the host's address.
BUSY = HostState(mounts={"/dev/vda1": "/"}, net={"enp0s3": (True, ["192.0.2.7"])})


def driver_check(fake: FakeSys, bdf: str, host: HostState) -> doc.Check:
    return {c.id: c for c in doc.run(SysRoot(fake.root), bdf, host=host)}["driver"]


def test_doctor_never_proposes_binding_the_root_disk(fake: FakeSys, tmp_path) -> None:
    disk, _nic = scenarios.host_devices(fake)
    c = driver_check(fake, disk, BUSY)
    assert "vfiokit bind" not in (c.remedy or "")
    assert "root file system" in c.detail and "never" in c.detail
    plan = plan_bind(SysRoot(fake.root), [disk], "vfio-pci", host=BUSY)
    with pytest.raises(Busy):  # and the binder agrees, --force or not
        Binder(SysRoot(fake.root), journal=Journal(tmp_path / "j")).bind(plan, force=True)


def test_doctor_does_not_propose_cutting_the_host_off(fake: FakeSys) -> None:
    _disk, nic = scenarios.host_devices(fake)
    c = driver_check(fake, nic, BUSY)
    assert "enp0s3 is up with 192.0.2.7" in c.detail
    assert not (c.remedy or "").startswith("vfiokit bind")
    assert "--force" not in (c.remedy or "")
    assert plan_bind(SysRoot(fake.root), [nic], "vfio-pci", host=BUSY).refusals(False)


def test_doctor_proposes_bind_when_bind_would_take_it(fake: FakeSys) -> None:
    _disk, nic = scenarios.host_devices(fake)
    idle = HostState(mounts={"/dev/vda1": "/"}, net={"enp0s3": (False, [])})
    assert driver_check(fake, nic, idle).remedy == f"vfiokit bind {nic}"
    assert not plan_bind(SysRoot(fake.root), [nic], "vfio-pci", host=idle).uses


def test_doctor_counts_the_group_members_bind_would_move(fake: FakeSys) -> None:
    bdf = scenarios.non_viable_group(fake)
    fake.add_net("enp2s0", "0000:00:1b.0")  # the audio function "carries" an address
    busy = HostState(mounts={}, net={"enp2s0": (True, ["192.0.2.9"])})
    c = driver_check(fake, bdf, busy)
    assert "0000:00:1b.0" in c.detail and not (c.remedy or "").startswith("vfiokit bind")


def test_in_use_of_all_matches_of(fake: FakeSys) -> None:
    scenarios.host_devices(fake)
    from vfiokit import device as devmod

    sysroot = SysRoot(fake.root)
    devs = devmod.read_all(sysroot)
    iu = InUse(sysroot, BUSY)
    assert iu.of_all(devs) == {d.address: iu.of(d) for d in devs}


def test_list_shows_what_uses_each_device(fake: FakeSys, monkeypatch) -> None:
    disk, nic = scenarios.host_devices(fake)
    monkeypatch.setenv("VFIOKIT_SYSROOT", str(fake.root))
    monkeypatch.setattr(HostState, "read", classmethod(lambda cls: BUSY))
    res = CliRunner().invoke(app, ["list"])
    assert res.exit_code == 0
    header, *rows = res.stdout.splitlines()
    assert "USED BY" in header
    assert any(r.startswith(disk) and "root fs" in r for r in rows)
    assert any(r.startswith(nic) and "enp0s3 192.0.2.7" in r for r in rows)
    listed = json.loads(CliRunner().invoke(app, ["list", "--json"]).stdout)["devices"]
    data = {d["address"]: d for d in listed}
    assert data[disk]["in_use"][0]["fatal"] is True
    assert data[nic]["in_use"] == [{"address": nic, "what": "network interface enp0s3 is up "
                                    "with 192.0.2.7", "short": "enp0s3 192.0.2.7",
                                    "fatal": False}]  # fmt: skip


def test_doctor_without_iommu_still_consults_the_in_use_verdict(fake: FakeSys) -> None:
    """No IOMMU (the issue's host): "enable the IOMMU first" would lead to a bind that is
    refused (root disk) or cuts the host off (its NIC); say so instead."""
    fake.add_pci("0000:00:02.0", **scenarios.VIRTIO_BLK, driver="virtio-pci", irq=20)
    fake.add_block("vda", "0000:00:02.0")
    fake.add_pci("0000:00:03.0", **scenarios.VIRTIO_NET, driver="virtio-pci", irq=21)
    fake.add_net("enp0s3", "0000:00:03.0")
    host = HostState(mounts={"/dev/vda": "/"}, net={"enp0s3": (True, ["192.0.2.7"])})
    disk = driver_check(fake, "0000:00:02.0", host)
    assert "root file system" in disk.detail and "never" in disk.detail
    assert disk.remedy is None
    nic = driver_check(fake, "0000:00:03.0", host)
    assert "enp0s3 is up with 192.0.2.7" in nic.detail
    assert "IOMMU" not in (nic.remedy or "") and "vfiokit bind" not in (nic.remedy or "")
    groups = {c.id: c for c in doc.run(SysRoot(fake.root), "0000:00:02.0", host=host)}
    assert groups["group"].remedy is None  # no IOMMU to enable for a device never taken
    idle = HostState(mounts={}, net={})
    assert "IOMMU" in (driver_check(fake, "0000:00:03.0", idle).remedy or "")
