"""vfiokit bind / unbind / restore in the guest, through the CLI as a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import helpers as h
from test_adaptive import nic_iface, nointxmask, set_link

pytestmark = [
    pytest.mark.skipif(nointxmask(), reason="this boot forces vfio_pci.nointxmask=1"),
    pytest.mark.usefixtures("vfiokit_modules"),
]
JOURNAL = Path("/run/vfiokit/journal")


def vfiokit(*args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "vfiokit", *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def state(bdf: str) -> dict[str, str | None]:
    base = h.PCI / "devices" / bdf
    return {"driver": h.driver_of(bdf), "override": (base / "driver_override").read_text()}


def test_bind_and_restore_exactly(topology) -> None:
    bdf = topology.by_name("edu_alone").address
    before = state(bdf)
    res = vfiokit("bind", bdf, "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["bound"] == [bdf] and out["driver"] == "vfiokit-pci"  # the default here
    assert h.driver_of(bdf) == "vfiokit-pci"
    assert Path(f"/dev/vfio/{h.group_of(bdf)}").exists()
    assert (JOURNAL / f"{bdf}.json").exists()
    shown = json.loads(vfiokit("show", bdf, "--json").stdout)
    assert shown["driver"] == "vfiokit-pci" and shown["vfiokit_intx"]["intx_mode"] == "off"
    assert vfiokit("restore", bdf).returncode == 0
    assert state(bdf) == before and not (JOURNAL / f"{bdf}.json").exists()
    assert vfiokit("restore", "--all").returncode == 0  # idempotent


def test_dry_run_changes_nothing(topology) -> None:
    bdf = topology.by_name("edu_a").address
    before = state(bdf)
    res = vfiokit("bind", bdf, "--dry-run", "--driver", "vfio-pci")
    assert res.returncode == 0 and f"{bdf}  no driver -> vfio-pci  (requested)" in res.stdout
    assert state(bdf) == before and not JOURNAL.joinpath(f"{bdf}.json").exists()


def test_nic_in_use_is_refused_then_taken_and_given_back(topology) -> None:
    nic = topology.by_name("nic").address
    iface = nic_iface(topology)
    set_link(iface, True)
    subprocess.run(["ip", "addr", "add", "192.0.2.10/24", "dev", iface], check=True)
    try:
        res = vfiokit("bind", nic, "--driver", "vfio-pci")
        assert res.returncode == 6
        assert res.stderr.splitlines()[0] == (
            f"error: {nic} is in use: network interface {iface} is up with 192.0.2.10"
        )
        assert h.driver_of(nic) == "e1000"
    finally:
        subprocess.run(["ip", "addr", "flush", "dev", iface], check=True)
        set_link(iface, False)
    assert vfiokit("bind", nic, "--driver", "vfio-pci").returncode == 0
    assert h.driver_of(nic) == "vfio-pci"
    assert vfiokit("unbind", nic).returncode == 0
    assert h.driver_of(nic) == "e1000"


def test_root_file_system_device_is_never_taken(topology) -> None:
    root = topology.by_name("hostroot").address
    res = vfiokit("bind", root, "--force", "--driver", "vfio-pci")
    assert res.returncode == 6 and "holds the root file system" in res.stderr
    assert h.driver_of(root) == "virtio-pci"


def test_sigkill_during_bind_then_restore(topology) -> None:
    nic = topology.by_name("nic").address
    before = state(nic)
    err = Path("/tmp/sigkill-bind.err")
    with err.open("w") as errf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vfiokit", "bind", nic, "--driver", "vfio-pci"],
            stdout=subprocess.DEVNULL,
            stderr=errf,
        )
    journal = JOURNAL / f"{nic}.json"
    # The interpreter's start alone takes seconds on the debug kernel under TCG: a 30 s
    # deadline was once reached before the journal was written (7.2-debug).
    t0 = time.monotonic()
    while not journal.exists() and proc.poll() is None and time.monotonic() < t0 + 180:
        time.sleep(0.001)
    took = time.monotonic() - t0
    exited = proc.poll()
    proc.kill()  # SIGKILL; nothing if it has exited already
    proc.wait()
    assert journal.exists(), (
        "the journal must be written before anything changes",
        {"exited before the kill": exited, "s": round(took, 1), "stderr": err.read_text()},
    )
    res = vfiokit("restore", "--all")
    assert res.returncode == 0, res.stderr
    assert state(nic) == before


def test_bad_input_and_no_root(topology) -> None:
    assert vfiokit("bind", "00:1e.0").returncode == 3
    bad = vfiokit("bind", "zz:zz")
    assert bad.returncode == 2 and bad.stderr.startswith("error: invalid PCI address")
    bdf = topology.by_name("edu_b").address
    before = state(bdf)
    os.chmod("/root", 0o711)  # the guest's overlay only: let "nobody" reach the interpreter
    res = vfiokit("bind", bdf, "--driver", "vfio-pci", user=65534)
    assert res.returncode == 4 and "root" in res.stderr
    assert state(bdf) == before
    assert vfiokit("bind", bdf, "--driver", "no-such-driver").returncode == 5
    # Every other verb: one line, the right code, nothing changed.
    for args, code in (
        (("unbind", "00:1e.0"), 3),
        (("restore", "00:1e.0"), 3),
        (("restore",), 2),
        (("assign", "00:1e.0", "--user", "nobody"), 3),
        (("assign", bdf, "--user", "nobody"), 2),  # not bound to VFIO
        (("assign", bdf, "--user", "no-such-user"), 3),
        (("unassign", "zz"), 2),
        (("apply-persisted", bdf), 3),  # no record
    ):
        res = vfiokit(*args)
        assert res.returncode == code, (args, res.stderr)
        assert res.stderr.startswith("error: ") and len(res.stderr.splitlines()) <= 2, args
    for args in (("unbind", bdf), ("restore", "--all"), ("assign", bdf, "--user", "nobody"),
                 ("unassign", bdf), ("apply-persisted",)):  # fmt: skip
        res = vfiokit(*args, user=65534)
        assert res.returncode == 4, (args, res.stderr)
    assert state(bdf) == before


def _node_states(paths: list[str]) -> dict[str, tuple[int, int, int]]:
    return {p: (os.stat(p).st_uid, os.stat(p).st_gid, os.stat(p).st_mode & 0o7777) for p in paths}


def _as_nobody_open(bdf: str, backend: str) -> subprocess.CompletedProcess[str]:
    """As uid 65534, open the device and read edu's identification register."""
    script = (
        "from vfiokit.vfio import open_device\n"
        f"with open_device('{bdf}', backend='{backend}') as vd:\n"
        "    print(hex(vd.device.bar(0).read(0)))\n"
    )
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-c", script],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("backend", ["legacy", "iommufd"])
def test_assign_lets_a_user_in_and_unassign_takes_it_back(topology, backend) -> None:
    bdf = topology.by_name("edu_alone").address
    os.chmod("/root", 0o711)  # the guest's overlay only: let "nobody" reach the interpreter
    assert vfiokit("bind", bdf, "--driver", "vfio-pci").returncode == 0
    try:
        group = h.group_of(bdf)
        cdev = os.listdir(f"/sys/bus/pci/devices/{bdf}/vfio-dev")[0]
        nodes = [f"/dev/vfio/{group}", f"/dev/vfio/devices/{cdev}", "/dev/iommu",
                 "/dev/vfio/vfio"]  # fmt: skip
        before = _node_states(nodes)
        denied = _as_nobody_open(bdf, backend)
        assert denied.returncode != 0 and "Permission denied (EACCES)" in denied.stderr
        res = vfiokit("assign", bdf, "--user", "nobody", "--memlock", "64M", "--json")
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["memlock"]["enough"] is False and out["memlock"]["soft"] == 8 << 20
        assert Path(out["assignment"]["rule"]).read_text().count('OWNER="nobody"') == 2
        shown = json.loads(vfiokit("show", bdf, "--json").stdout)
        assert shown["assignment"]["user"] == "nobody"
        opened = _as_nobody_open(bdf, backend)
        assert opened.returncode == 0, opened.stderr
        assert opened.stdout.strip() == "0x10000ed"  # edu's identification register
        assert vfiokit("unassign", bdf).returncode == 0
        assert _node_states(nodes) == before
        assert _as_nobody_open(bdf, backend).returncode != 0
    finally:
        vfiokit("unassign", bdf)
        assert vfiokit("restore", bdf).returncode == 0


def test_assign_qemu_arguments_start_a_vm_as_the_user(topology) -> None:
    """The printed -device argument, given to a real QEMU run by the assigned user, opens
    the device through VFIO (QEMU maps its RAM for DMA: memlock raised by prlimit), after
    the device moved from vfio-pci to vfiokit-pci with the user keeping access."""
    bdf = topology.by_name("edu_alone").address
    os.chmod("/root", 0o711)
    assert vfiokit("bind", bdf, "--driver", "vfio-pci").returncode == 0
    try:
        res = vfiokit("assign", bdf, "--user", "nobody", "--qemu", "--libvirt", "--json")
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert "<address domain='0x0000' bus='0x00' slot='0x06' function='0x0'/>" in out["libvirt"]
        # Moving it to vfiokit-pci re-creates its nodes: the binder gives the owner back.
        res = vfiokit("bind", bdf, "--driver", "vfiokit-pci")
        assert res.returncode == 0, res.stderr
        assert "owner and mode as before" in res.stderr
        assert os.stat(f"/dev/vfio/{h.group_of(bdf)}").st_uid == 65534
        qemu = subprocess.run(
            ["prlimit", "--memlock=unlimited:unlimited", "setpriv", "--reuid=65534",
             "--regid=65534", "--clear-groups", "qemu-system-x86_64", "-M", "q35", "-m", "32",
             "-accel", "tcg", "-nodefaults", "-display", "none", "-S", "-monitor", "stdio",
             *out["qemu"]],
            input="info pci\nquit\n", capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert qemu.returncode == 0, qemu.stderr
        assert "PCI device 1234:11e8" in qemu.stdout and 'id "hostdev0"' in qemu.stdout
    finally:
        assert vfiokit("unassign", bdf).returncode == 0
        assert vfiokit("restore", bdf).returncode == 0


def test_persist_then_apply_after_a_simulated_reboot(topology) -> None:
    bdf = topology.by_name("edu_alone").address
    before = state(bdf)
    res = vfiokit("bind", bdf, "--persist")
    assert res.returncode == 0, res.stderr
    try:
        assert Path(f"/etc/vfiokit/persist.d/{bdf}").read_text() == "vfiokit-pci\n"
        assert Path("/etc/systemd/system/vfiokit-persist@.service").exists()
        listed = {d["address"]: d for d in json.loads(vfiokit("list", "--json").stdout)["devices"]}
        assert listed[bdf]["persisted"] == "vfiokit-pci"
        # A reboot: the journal and the binding are gone, the override the udev rule sets
        # is back; the unit then runs apply-persisted.
        assert vfiokit("restore", bdf).returncode == 0 and h.driver_of(bdf) is None
        Path(f"/sys/bus/pci/devices/{bdf}/driver_override").write_text("vfiokit-pci")
        res = vfiokit("apply-persisted")
        assert res.returncode == 0, res.stderr
        assert h.driver_of(bdf) == "vfiokit-pci"
    finally:
        res = vfiokit("unbind", bdf, "--persist")
        assert res.returncode == 0, res.stderr
    assert not Path(f"/etc/vfiokit/persist.d/{bdf}").exists()
    assert not Path("/etc/udev/rules.d/60-vfiokit-persist.rules").exists()
    assert state(bdf) == before


def test_a_group_with_two_functions_moves_together(topology) -> None:
    f0, f1 = topology.by_name("nic_f0").address, topology.by_name("nic_f1").address
    assert h.group_of(f0) == h.group_of(f1), "the two functions must share a group"
    before = {a: state(a) for a in (f0, f1)}
    dry = vfiokit("bind", f1, "--dry-run", "--json")
    steps = {s["address"]: s["reason"] for s in json.loads(dry.stdout)["steps"]}
    assert steps == {f0: f"in IOMMU group {h.group_of(f0)} with {f1}", f1: "requested"}
    res = vfiokit("bind", f1, "--json")
    assert res.returncode == 0, res.stderr
    assert sorted(json.loads(res.stdout)["bound"]) == [f0, f1]
    assert h.driver_of(f0) == h.driver_of(f1) == "vfiokit-pci"
    assert vfiokit("restore", "--all").returncode == 0
    assert {a: state(a) for a in (f0, f1)} == before
    assert before[f0]["driver"] == "e1000"
