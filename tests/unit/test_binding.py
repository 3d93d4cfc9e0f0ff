"""Planning, binding, rolling back and restoring on a fake sysfs with a fake kernel."""

from __future__ import annotations

import pytest

from fakesys import FakeSys, FakeSysfsKernel, pcie_cap
from unit import scenarios
from vfiokit import Busy, SysRoot, Unsupported
from vfiokit.binding import Binder, HostState, Journal, plan_bind

IDLE = HostState(mounts={"/dev/vda1": "/"}, net={})


def setup_group(fake: FakeSys) -> None:
    """Group 2: bridge (pcieport), audio (snd_hda_intel), NIC (e1000e, enp2s0)."""
    scenarios.non_viable_group(fake)
    fake.add_net("enp2s0", "0000:02:00.0")
    (fake.root / "sys/bus/pci/drivers/vfio-pci").mkdir(parents=True, exist_ok=True)


def binder(fake: FakeSys, tmp_path, kernel: FakeSysfsKernel) -> Binder:
    return Binder(SysRoot(fake.root), writer=kernel, journal=Journal(tmp_path / "journal"),
                  timeout=0.2)  # fmt: skip


def drivers(fake: FakeSys) -> dict[str, str | None]:
    sysroot = SysRoot(fake.root)
    return {a: sysroot.link_name(f"/sys/bus/pci/devices/{a}/driver")
            for a in sysroot.listdir("/sys/bus/pci/devices")}  # fmt: skip


def test_plan_takes_the_group_and_leaves_the_bridge(fake: FakeSys) -> None:
    setup_group(fake)
    plan = plan_bind(SysRoot(fake.root), ["02:00.0"], "vfio-pci", host=IDLE)
    assert [(s.address, s.driver, s.reason) for s in plan.steps] == [
        ("0000:00:1b.0", "snd_hda_intel", "in IOMMU group 2 with 0000:02:00.0"),
        ("0000:02:00.0", "e1000e", "requested"),
    ]
    assert plan.skipped == [("0000:00:1c.0", "left on pcieport: does not block the group")]
    assert plan.uses == []


def test_bind_journals_and_restore_puts_back(fake: FakeSys, tmp_path) -> None:
    setup_group(fake)
    before = drivers(fake)
    k = FakeSysfsKernel(fake)
    b = binder(fake, tmp_path, k)
    plan = plan_bind(b.sysroot, ["0000:02:00.0"], "vfio-pci", host=IDLE)
    assert b.bind(plan) == ["0000:00:1b.0", "0000:02:00.0"]
    after = drivers(fake)
    assert after["0000:02:00.0"] == after["0000:00:1b.0"] == "vfio-pci"
    assert after["0000:00:1c.0"] == "pcieport"
    assert {e.address: e.driver for e in b.journal.entries()} == {
        "0000:02:00.0": "e1000e", "0000:00:1b.0": "snd_hda_intel"}  # fmt: skip
    # driver_override is cleared again after the bind.
    assert (
        fake.root / "sys/bus/pci/devices/0000:02:00.0/driver_override"
    ).read_text() == "(null)\n"
    assert sorted(b.restore()) == ["0000:00:1b.0", "0000:02:00.0"]
    assert drivers(fake) == before and b.journal.entries() == []
    assert b.restore() == []  # idempotent


def test_failure_rolls_back_everything(fake: FakeSys, tmp_path) -> None:
    setup_group(fake)
    before = drivers(fake)
    k = FakeSysfsKernel(fake)
    k.refuse.add(("0000:02:00.0", "vfio-pci"))  # the second step fails
    b = binder(fake, tmp_path, k)
    plan = plan_bind(b.sysroot, ["0000:02:00.0"], "vfio-pci", host=IDLE)
    with pytest.raises(Exception, match=r"timed out waiting for 0000:02:00\.0"):
        b.bind(plan)
    assert drivers(fake) == before
    assert b.journal.entries() == []


def test_restore_after_a_killed_run(fake: FakeSys, tmp_path) -> None:
    """The journal outlives the process: a new Binder restores what the first one did."""
    setup_group(fake)
    before = drivers(fake)
    k = FakeSysfsKernel(fake)
    b = binder(fake, tmp_path, k)
    b.bind(plan_bind(b.sysroot, ["0000:02:00.0"], "vfio-pci", host=IDLE))
    fresh = binder(fake, tmp_path, FakeSysfsKernel(fake))
    assert len(fresh.restore(["0000:02:00.0"])) == 1
    assert len(fresh.restore()) == 1
    assert drivers(fake) == before


def test_in_use_is_refused_unless_forced(fake: FakeSys, tmp_path) -> None:
    setup_group(fake)
    busy = HostState(mounts={"/dev/vda1": "/"}, net={"enp2s0": (True, ["192.0.2.7"])})
    b = binder(fake, tmp_path, FakeSysfsKernel(fake))
    plan = plan_bind(b.sysroot, ["0000:02:00.0"], "vfio-pci", host=busy)
    assert [u.what for u in plan.uses] == ["network interface enp2s0 is up with 192.0.2.7"]
    with pytest.raises(Busy, match="enp2s0") as info:
        b.bind(plan)
    assert "--force" in (info.value.remedy or "")
    assert b.journal.entries() == []
    assert b.bind(plan, force=True)


def test_root_disk_is_never_taken(fake: FakeSys, tmp_path) -> None:
    fake.add_iommu()
    fake.add_pci("0000:00:02.0", vendor=0x1AF4, device=0x1042, class_code=0x010000,
                 driver="virtio-pci", group="4", caps=[pcie_cap()])  # fmt: skip
    fake.add_block("vda", "0000:00:02.0")
    fake.write("sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda/vda1/partition", "1\n")
    fake.link("sys/class/block/vda1", "sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda/vda1")
    (fake.root / "sys/bus/pci/drivers/vfio-pci").mkdir(parents=True, exist_ok=True)
    b = binder(fake, tmp_path, FakeSysfsKernel(fake))
    plan = plan_bind(b.sysroot, ["00:02.0"], "vfio-pci", host=IDLE)
    assert plan.uses[0].fatal and "root file system" in plan.uses[0].what
    with pytest.raises(Busy, match="root file system"):
        b.bind(plan, force=True)


def test_unbind_without_journal_gives_it_to_the_kernel(fake: FakeSys, tmp_path) -> None:
    setup_group(fake)
    fake.bind("0000:02:00.0", "vfio-pci")
    b = binder(fake, tmp_path, FakeSysfsKernel(fake, native={"0000:02:00.0": "e1000e"}))
    assert b.unbind(["02:00.0"]) == ["0000:02:00.0"]
    assert drivers(fake)["0000:02:00.0"] == "e1000e"


def test_no_iommu_and_unknown_driver(fake: FakeSys) -> None:
    scenarios.no_iommu(fake)
    with pytest.raises(Unsupported, match="no IOMMU group"):
        plan_bind(SysRoot(fake.root), ["00:04.0"], "vfio-pci", host=IDLE)
    with pytest.raises(Unsupported, match="unknown driver"):
        plan_bind(SysRoot(fake.root), ["00:04.0"], "igb_uio", host=IDLE)


def test_root_behind_an_overlay_via_the_kernel_command_line(fake: FakeSys, tmp_path) -> None:
    """The test bed's own case: / is an overlay; the kernel's root= names a 9p tag."""
    fake.add_iommu()
    fake.add_pci("0000:00:1a.0", vendor=0x1AF4, device=0x1009, class_code=0xFF00,
                 driver="virtio-pci", group="5")  # fmt: skip
    vdir = "sys/devices/pci0000:00/0000:00:1a.0/virtio0"
    fake.write(f"{vdir}/mount_tag", "hostroot")
    fake.link("sys/bus/virtio/devices/virtio0", vdir)
    fake.write("proc/cmdline", "console=ttyS0 root=hostroot rootfstype=9p ro\n")
    (fake.root / "sys/bus/pci/drivers/vfio-pci").mkdir(parents=True, exist_ok=True)
    overlay = HostState(mounts={"overlay": "/", "project": "/work"}, net={})
    plan = plan_bind(SysRoot(fake.root), ["00:1a.0"], "vfio-pci", host=overlay)
    assert [u.fatal for u in plan.uses] == [True]
    with pytest.raises(Busy, match="root file system"):
        binder(fake, tmp_path, FakeSysfsKernel(fake)).bind(plan, force=True)
    # A mounted 9p share is in use too (not fatal).
    fake.write(f"{vdir}/mount_tag", "project")
    fake.write("proc/cmdline", "console=ttyS0\n")
    plan = plan_bind(SysRoot(fake.root), ["00:1a.0"], "vfio-pci", host=overlay)
    assert [(u.what, u.fatal) for u in plan.uses] == [
        ("9p share project is mounted on /work", False)
    ]


def test_root_on_device_mapper_is_traced_to_its_disk(fake: FakeSys) -> None:
    fake.add_iommu()
    fake.add_pci("0000:00:02.0", vendor=0x1AF4, device=0x1042, class_code=0x010000,
                 driver="virtio-pci", group="4")  # fmt: skip
    fake.add_block("vda", "0000:00:02.0")
    fake.write("sys/devices/virtual/block/dm-0/dev", "254:0\n")
    fake.link("sys/class/block/dm-0", "sys/devices/virtual/block/dm-0")
    fake.link("sys/devices/virtual/block/dm-0/slaves/vda",
              "sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda")  # fmt: skip
    fake.link("dev/dm-0", "sys/devices/virtual/block/dm-0")  # resolves to a name "dm-0"
    lvm = HostState(mounts={"/dev/dm-0": "/"}, net={})
    plan = plan_bind(SysRoot(fake.root), ["00:02.0"], "vfio-pci", host=lvm)
    assert plan.uses and plan.uses[0].fatal


def test_a_process_holding_a_node_open_is_in_use(fake: FakeSys, tmp_path) -> None:
    """A QEMU with the group open: re-binding would hang in the kernel's remove()."""
    setup_group(fake)
    fake.bind("0000:02:00.0", "vfio-pci")
    fake.bind("0000:00:1b.0", "vfio-pci")
    fake.write("dev/vfio/2", "")
    fake.write("proc/4242/comm", "qemu-system-x86\n")
    (fake.root / "proc/4242/fd").mkdir()
    (fake.root / "proc/4242/fd/17").symlink_to("/dev/vfio/2")  # as the kernel names it
    plan = plan_bind(SysRoot(fake.root), ["02:00.0"], "vfiokit-pci", host=IDLE)
    # The audio function stays on vfio-pci (skipped); the requested NIC is refused.
    assert [(u.address, u.what) for u in plan.uses] == [
        ("0000:02:00.0", "/dev/vfio/2 is open in process 4242 (qemu-system-x86)")
    ]
    b = binder(fake, tmp_path, FakeSysfsKernel(fake))
    (fake.root / "sys/bus/pci/drivers/vfiokit-pci").mkdir()
    with pytest.raises(Busy, match="process 4242"):
        b.bind(plan)


def test_block_node_below_the_device_open(fake: FakeSys) -> None:
    setup_group(fake)
    d = "sys/devices/pci0000:00/0000:02:00.0/nvme/nvme0"
    fake.write(f"{d}/dev", "259:0\n")
    fake.write(f"{d}/uevent", "MAJOR=259\nMINOR=0\nDEVNAME=nvme0\n")
    fake.write("proc/77/comm", "smartd\n")
    (fake.root / "proc/77/fd").mkdir(parents=True)
    (fake.root / "proc/77/fd/3").symlink_to("/dev/nvme0")
    plan = plan_bind(SysRoot(fake.root), ["02:00.0"], "vfio-pci", host=IDLE)
    assert [u.what for u in plan.uses] == ["/dev/nvme0 is open in process 77 (smartd)"]


def test_sriov_vfs_are_recreated_on_restore(fake: FakeSys, tmp_path) -> None:
    fake.add_iommu()
    fake.add_pci("0000:03:00.0", vendor=0x8086, device=0x1521, class_code=0x020000,
                 driver="igb", group="7", sriov=(7, 4))  # fmt: skip
    (fake.root / "sys/bus/pci/drivers/vfio-pci").mkdir(parents=True, exist_ok=True)
    k = FakeSysfsKernel(fake, native={"0000:03:00.0": "igb"})
    b = binder(fake, tmp_path, k)
    b.bind(plan_bind(b.sysroot, ["03:00.0"], "vfio-pci", host=IDLE))
    assert b.journal.get("0000:03:00.0").sriov_numvfs == 4
    fake.write("sys/devices/pci0000:00/0000:03:00.0/sriov_numvfs", "0\n")  # the PF's unbind
    b.restore()
    numvfs = fake.root / "sys/devices/pci0000:00/0000:03:00.0/sriov_numvfs"
    assert numvfs.read_text() == "4\n" and drivers(fake)["0000:03:00.0"] == "igb"


def test_keep_override_for_persisted_binds(fake: FakeSys, tmp_path) -> None:
    setup_group(fake)
    b = binder(fake, tmp_path, FakeSysfsKernel(fake))
    b.bind(plan_bind(b.sysroot, ["02:00.0"], "vfio-pci", host=IDLE), keep_override=True)
    override = fake.root / "sys/bus/pci/devices/0000:02:00.0/driver_override"
    assert override.read_text() == "vfio-pci\n"
    b.restore()
    assert override.read_text() == "(null)\n"


def test_uio_takes_only_the_device_named_and_restores_it(fake: FakeSys, tmp_path) -> None:
    """uio_pci_generic knows no IOMMU groups: the group's other members stay where they
    are, and a device without a group at all can be taken."""
    setup_group(fake)
    fake.add_pci("0000:00:06.0", vendor=0x1234, device=0x11E8, class_code=0xFF0000,
                 driver="edu")  # fmt: skip
    (fake.root / "sys/bus/pci/drivers/uio_pci_generic").mkdir(parents=True, exist_ok=True)
    before = drivers(fake)
    b = binder(fake, tmp_path, FakeSysfsKernel(fake))
    plan = plan_bind(b.sysroot, ["02:00.0", "00:06.0"], "uio_pci_generic", host=IDLE)
    assert [(s.address, s.driver) for s in plan.steps] == [
        ("0000:02:00.0", "e1000e"), ("0000:00:06.0", "edu")]  # fmt: skip
    assert b.bind(plan) == ["0000:02:00.0", "0000:00:06.0"]
    after = drivers(fake)
    assert after["0000:02:00.0"] == after["0000:00:06.0"] == "uio_pci_generic"
    assert after["0000:00:1b.0"] == "snd_hda_intel"  # its group mate: untouched
    again = plan_bind(b.sysroot, ["00:06.0"], "uio_pci_generic", host=IDLE)
    assert again.steps == []
    assert again.skipped == [("0000:00:06.0", "already bound to uio_pci_generic")]
    assert sorted(b.restore()) == ["0000:00:06.0", "0000:02:00.0"]
    assert drivers(fake) == before


def test_unknown_driver_is_refused(fake: FakeSys) -> None:
    setup_group(fake)
    with pytest.raises(Unsupported) as info:
        plan_bind(SysRoot(fake.root), ["02:00.0"], "igb_uio", host=IDLE)
    assert "uio_pci_generic" in (info.value.remedy or "")
