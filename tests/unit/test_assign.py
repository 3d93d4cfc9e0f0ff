"""assign / unassign, the memlock limit of another user, VMM snippets and persisted binds,
on a fake tree (node ownership goes through a recording fake of chown/chmod)."""

from __future__ import annotations

import json
import pwd
import xml.etree.ElementTree as ET

import pytest
from typer.testing import CliRunner

from fakesys import FakeSys, FakeSysfsKernel
from unit import scenarios
from vfiokit import NotFound, SysRoot
from vfiokit.binding import HostState
from vfiokit.binding.assign import Assigner, udev_rule
from vfiokit.binding.memlock import UNLIMITED, parse_size, user_limit
from vfiokit.binding.persist import RULE, UNIT, Launcher, Persisted, rule_text, unit_text
from vfiokit.binding.snippets import libvirt_hostdev, qemu_args
from vfiokit.cli import app
from vfiokit.errors import InvalidArgument

NOBODY = pwd.getpwnam("nobody")


class FakeNodes:
    """Owner and mode of device nodes, as a dict; starts as the kernel makes them."""

    def __init__(self, nodes: list[str]):
        self.state = {n: (0, 0, 0o600) for n in nodes}
        self.state["/dev/vfio/vfio"] = (0, 0, 0o666)
        self.state["/dev/iommu"] = (0, 0, 0o600)

    def stat(self, path: str) -> tuple[int, int, int] | None:
        return self.state.get(path)

    def chown(self, path: str, uid: int, gid: int) -> None:
        self.state[path] = (uid, gid, self.state[path][2])

    def chmod(self, path: str, mode: int) -> None:
        self.state[path] = (*self.state[path][:2], mode)


def bound_edu(fake: FakeSys, cdev: bool = True) -> Assigner:
    fake.add_iommu()
    fake.add_vfio()
    fake.add_pci("0000:00:04.0", vendor=0x1234, device=0x11E8, class_code=0xFF0000,
                 driver="vfio-pci", group="9")  # fmt: skip
    fake.write("dev/vfio/9", "")
    fake.write("dev/iommu", "")
    if cdev:
        (fake.root / "sys/devices/pci0000:00/0000:00:04.0/vfio-dev/vfio0").mkdir(parents=True)
        fake.write("dev/vfio/devices/vfio0", "")
    return Assigner(SysRoot(fake.root), FakeNodes([]), str(fake.root / "run/vfiokit/assign"))


def test_assign_then_unassign_restores_every_node(fake: FakeSys) -> None:
    a = bound_edu(fake)
    ops = FakeNodes(["/dev/vfio/9", "/dev/vfio/devices/vfio0"])
    a.ops = ops
    before = dict(ops.state)
    got = a.assign("00:04.0", "nobody")
    assert [n.path for n in got.nodes] == ["/dev/vfio/9", "/dev/vfio/devices/vfio0"]
    assert ops.state["/dev/vfio/9"] == (NOBODY.pw_uid, NOBODY.pw_gid, 0o600)
    assert ops.state["/dev/vfio/devices/vfio0"] == (NOBODY.pw_uid, NOBODY.pw_gid, 0o600)
    assert ops.state["/dev/iommu"][2] == 0o666 and ops.state["/dev/vfio/vfio"][2] == 0o666
    rule = (fake.root / "etc/udev/rules.d/70-vfiokit-assign-0000:00:04.0.rules").read_text()
    member = 'TEST=="/sys/kernel/iommu_groups/$kernel/devices/0000:00:04.0"'
    assert f'SUBSYSTEM=="vfio", {member}, OWNER="nobody", MODE="0600"' in rule
    assert 'SUBSYSTEM=="vfio-dev", KERNELS=="0000:00:04.0", OWNER="nobody"' in rule
    assert (fake.root / "etc/udev/rules.d/70-vfiokit-shared.rules").exists()
    # Re-assigning to someone else keeps the first prior state.
    a.assign("00:04.0", None, "nogroup")
    assert ops.state["/dev/vfio/9"][2] == 0o660
    a.unassign("00:04.0")
    assert ops.state == before
    assert not list((fake.root / "etc/udev/rules.d").iterdir())
    assert a.unassign("00:04.0") is None  # idempotent


def test_assign_needs_a_vfio_bound_device_and_a_real_user(fake: FakeSys) -> None:
    a = bound_edu(fake, cdev=False)
    with pytest.raises(NotFound, match="no such user"):
        a.assign("00:04.0", "no-such-user-here")
    fake.bind("0000:00:04.0", "edu")
    with pytest.raises(InvalidArgument, match="not bound to a VFIO driver") as info:
        a.assign("00:04.0", "nobody")
    assert info.value.remedy == "vfiokit bind 0000:00:04.0"
    with pytest.raises(InvalidArgument, match="--user"):
        a.assign("00:04.0", None, None)
    assert not (fake.root / "run/vfiokit/assign").exists()  # nothing recorded


def test_unassign_after_reboot_without_a_record(fake: FakeSys) -> None:
    """/run is gone, the rule stays: unassign removes it and gives the nodes to root."""
    a = bound_edu(fake, cdev=False)
    ops = FakeNodes(["/dev/vfio/9"])
    a.ops = ops
    a.assign("00:04.0", "nobody")
    for p in (fake.root / "run/vfiokit/assign").iterdir():
        p.unlink()
    assert a.unassign("00:04.0") is None
    assert ops.state["/dev/vfio/9"] == (0, 0, 0o600)
    assert not (fake.root / "etc/udev/rules.d/70-vfiokit-assign-0000:00:04.0.rules").exists()


def test_udev_rule_shape() -> None:
    from vfiokit.binding.assign import Assignment

    text = udev_rule(Assignment("0000:00:04.0", "9", "alice", 1000, "kvm", 993, 0o660), False)
    rules = [line for line in text.splitlines() if not line.startswith("#")]
    # By member, not by number: a device added again (PCI rescan) may get a new group number;
    # tests/boots/ proves it with a real udev.
    member = 'TEST=="/sys/kernel/iommu_groups/$kernel/devices/0000:00:04.0"'
    assert rules == [f'SUBSYSTEM=="vfio", {member}, OWNER="alice", GROUP="kvm", MODE="0660"']
    assert 'KERNEL=="9"' not in text


# -- memlock ---------------------------------------------------------------------------------
def test_parse_size() -> None:
    assert parse_size("4G") == 4 << 30 and parse_size("512MiB") == 512 << 20
    assert parse_size("1024") == 1024 and parse_size("unlimited") == UNLIMITED
    with pytest.raises(ValueError):
        parse_size("lots")


def test_memlock_precedence(fake: FakeSys) -> None:
    fake.write("proc/1/limits", "Max locked memory         8388608              8388608"
               "              bytes\n")  # fmt: skip
    sysroot = SysRoot(fake.root)
    got = user_limit(sysroot, "nobody")
    assert (got.soft, got.source) == (8 << 20, "PID 1 (kernel default)")
    fake.write("etc/security/limits.conf", "*  -  memlock  65536\n# nobody - memlock 1\n")
    assert user_limit(sysroot, "nobody").soft == 64 << 20
    fake.write("etc/security/limits.d/90-x.conf",
               "nobody soft memlock 1048576\nnobody hard memlock unlimited\n"
               f"@{'nogroup'} - memlock 2\n")  # fmt: skip
    got = user_limit(sysroot, "nobody")
    assert (got.soft, got.hard) == (1 << 30, UNLIMITED)
    assert got.enough(512 << 20) and not got.enough(2 << 30)
    assert "90-x.conf:1" in got.source and "nobody - memlock unlimited" in got.remedy()


# -- snippets --------------------------------------------------------------------------------
def test_qemu_and_libvirt_snippets() -> None:
    assert qemu_args(["0000:00:04.0"]) == ["-device", "vfio-pci,host=0000:00:04.0,id=hostdev0"]
    assert qemu_args(["0000:00:04.0"], iommufd=True) == [
        "-object", "iommufd,id=iommufd0",
        "-device", "vfio-pci,host=0000:00:04.0,id=hostdev0,iommufd=iommufd0",
    ]  # fmt: skip
    el = ET.fromstring(libvirt_hostdev("0001:3a:1f.7"))
    assert el.tag == "hostdev" and el.get("managed") == "no"
    assert el.find("driver").get("name") == "vfio"
    assert el.find("source/address").attrib == {
        "domain": "0x0001", "bus": "0x3a", "slot": "0x1f", "function": "0x7"}  # fmt: skip


# -- persistence -----------------------------------------------------------------------------
@pytest.fixture
def kept_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """vfiokit as if installed in /opt: the launcher refuses the interpreter running these
    tests when the checkout sits under /tmp (tests/unit/test_persist_unit.py covers that)."""
    fixed = Launcher(("/opt/vfiokit/bin/python", "-m", "vfiokit"))
    monkeypatch.setattr("vfiokit.binding.persist.launcher", lambda *_a, **_k: fixed)


@pytest.mark.usefixtures("kept_install")
def test_persist_files_come_and_go(fake: FakeSys) -> None:
    p = Persisted(SysRoot(fake.root))
    assert p.add("0000:00:04.0", "vfiokit-pci")[0] == "/etc/vfiokit/persist.d/0000:00:04.0"
    p.add("0000:00:08.0", "vfio-pci")
    assert p.all() == {"0000:00:04.0": "vfiokit-pci", "0000:00:08.0": "vfio-pci"}
    assert (fake.root / RULE.lstrip("/")).read_text() == rule_text()
    unit = (fake.root / UNIT.lstrip("/")).read_text()
    assert unit == unit_text() and "-m vfiokit apply-persisted %I" in unit
    assert p.remove("0000:00:04.0") and (fake.root / RULE.lstrip("/")).exists()
    assert p.remove("0000:00:08.0") and not (fake.root / RULE.lstrip("/")).exists()
    assert not (fake.root / UNIT.lstrip("/")).exists() and not p.remove("0000:00:08.0")


def test_udev_persist_rule_sets_override_and_wants_the_unit() -> None:
    rule = [line for line in rule_text().splitlines() if not line.startswith("#")]
    assert len(rule) == 1
    keys = [kv.strip() for kv in rule[0].split(", ")]
    assert keys[0] == 'ACTION=="add"' and 'SUBSYSTEM=="pci"' in keys
    assert 'ATTR{driver_override}="$result"' in keys
    assert 'ENV{SYSTEMD_WANTS}+="vfiokit-persist@$kernel.service"' in keys


def test_persist_unit_ends_so_a_device_added_again_starts_it_again() -> None:
    # A oneshot that stays active (RemainAfterExit=yes) is not started again by the next
    # `add` of its device (a hot-plug, a PCI remove and rescan): the device would come
    # back unbound. tests/boots/ proves it with a real systemd and udev.
    unit = unit_text(Launcher(("/opt/vfiokit/bin/vfiokit",)))
    service = unit.split("[Service]\n", 1)[1].splitlines()
    assert "Type=oneshot" in service and not any("RemainAfterExit" in s for s in service)


@pytest.mark.usefixtures("kept_install")
def test_cli_persist_list_and_apply(fake: FakeSys, tmp_path, monkeypatch) -> None:
    """bind --persist records it, list shows it, apply-persisted re-binds after a 'reboot'."""
    scenarios.non_viable_group(fake)
    (fake.root / "sys/bus/pci/drivers/vfio-pci").mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("VFIOKIT_SYSROOT", str(fake.root))
    monkeypatch.setenv("VFIOKIT_JOURNAL", str(tmp_path / "journal"))
    monkeypatch.setenv("VFIOKIT_ASSIGN_STATE", str(tmp_path / "assign"))
    kernel = FakeSysfsKernel(fake, native={"0000:02:00.0": "e1000e"})
    monkeypatch.setattr("vfiokit.binding.binder.SysfsWriter", lambda _s: kernel)
    monkeypatch.setattr("vfiokit.binding.binder.HostState.read",
                        classmethod(lambda cls: HostState({"/dev/vda1": "/"}, {})))  # fmt: skip
    run = CliRunner().invoke
    res = run(app, ["bind", "02:00.0", "--driver", "vfio-pci", "--persist", "--dry-run"])
    assert res.exit_code == 0 and "would write: /etc/vfiokit/persist.d/<BDF>" in res.output
    assert not (fake.root / "etc").exists()
    res = run(app, ["bind", "02:00.0", "--driver", "vfio-pci", "--persist", "--json"])
    assert res.exit_code == 0, res.output
    assert "/etc/vfiokit/persist.d/0000:02:00.0" in json.loads(res.output)["persisted"]
    listed = {d["address"]: d for d in json.loads(run(app, ["list", "--json"]).stdout)["devices"]}
    assert listed["0000:02:00.0"]["persisted"] == "vfio-pci"
    assert listed["0000:02:00.0"]["driver_override"] == "vfio-pci"
    assert listed["0000:00:1b.0"]["persisted"] is None
    shown = json.loads(run(app, ["show", "02:00.0", "--json"]).stdout)
    assert shown["persisted"] == "vfio-pci" and shown["assignment"] is None
    # "Reboot": the journal is gone and the native driver probed first.
    for p in (tmp_path / "journal").iterdir():
        p.unlink()
    kernel.write("/sys/bus/pci/devices/0000:02:00.0/driver/unbind", "0000:02:00.0")
    fake.bind("0000:02:00.0", "e1000e")
    res = run(app, ["apply-persisted", "0000:02:00.0", "--json"])
    assert res.exit_code == 0, res.output
    assert SysRoot(fake.root).link_name("/sys/bus/pci/devices/0000:02:00.0/driver") == "vfio-pci"
    res = run(app, ["apply-persisted", "00:1b.0"])
    assert res.exit_code == 3 and "no persisted binding" in res.output
    res = run(app, ["unbind", "02:00.0", "--persist", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["unpersisted"] == ["0000:02:00.0"]
    assert Persisted(SysRoot(fake.root)).all() == {}
    assert SysRoot(fake.root).link_name("/sys/bus/pci/devices/0000:02:00.0/driver") == "e1000e"


def test_cli_assign_usage_errors(fake: FakeSys, monkeypatch) -> None:
    bound_edu(fake)
    monkeypatch.setenv("VFIOKIT_SYSROOT", str(fake.root))
    run = CliRunner().invoke
    res = run(app, ["assign", "00:04.0"])
    assert res.exit_code == 2 and "nothing to do" in res.output
    res = run(app, ["assign", "00:04.0", "--user", "nobody", "--memlock", "lots"])
    assert res.exit_code == 2 and "not a size" in res.output
    res = run(app, ["assign", "00:05.0", "--qemu"])
    assert res.exit_code == 3
    res = run(app, ["assign", "00:04.0", "--qemu", "--libvirt", "--json"])
    assert res.exit_code == 0
    out = json.loads(res.output)
    assert out["qemu"][-1] == "vfio-pci,host=0000:00:04.0,id=hostdev0"
    assert "<hostdev" in out["libvirt"] and "assignment" not in out  # nothing assigned


def test_rebind_keeps_the_assigned_owner(fake: FakeSys, tmp_path) -> None:
    """vfio-pci -> vfiokit-pci re-creates the group node as root:root 0600; the binder
    journals the owner it had and gives it back, after the bind and after the restore."""
    from vfiokit.binding import Binder, Journal, plan_bind

    bound_edu(fake, cdev=False)
    (fake.root / "sys/bus/pci/drivers/vfiokit-pci").mkdir()
    ops = FakeNodes(["/dev/vfio/9"])
    ops.state["/dev/vfio/9"] = (NOBODY.pw_uid, NOBODY.pw_gid, 0o600)  # assigned earlier

    class RecreatingKernel(FakeSysfsKernel):
        def write(self, rel: str, text: str) -> None:
            super().write(rel, text)
            if rel.endswith("drivers_probe"):
                ops.state["/dev/vfio/9"] = (0, 0, 0o600)  # what the kernel makes

    sysroot = SysRoot(fake.root)
    kernel = RecreatingKernel(fake)
    b = Binder(sysroot, writer=kernel, journal=Journal(tmp_path / "j"), timeout=0.2, nodes=ops)
    b.bind(plan_bind(sysroot, ["00:04.0"], "vfiokit-pci", host=HostState({}, {})))
    assert b.journal.get("0000:00:04.0").nodes == {"group": [NOBODY.pw_uid, NOBODY.pw_gid, 0o600]}
    assert ops.state["/dev/vfio/9"] == (NOBODY.pw_uid, NOBODY.pw_gid, 0o600)
    b.restore()
    assert ops.state["/dev/vfio/9"] == (NOBODY.pw_uid, NOBODY.pw_gid, 0o600)
    assert sysroot.link_name("/sys/bus/pci/devices/0000:00:04.0/driver") == "vfio-pci"
