"""vfiokit bind / unbind / restore in the guest, through the CLI as a user would run it."""

from __future__ import annotations

import json
import os
import signal
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
    proc = subprocess.Popen(
        [sys.executable, "-m", "vfiokit", "bind", nic, "--driver", "vfio-pci"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    journal = JOURNAL / f"{nic}.json"
    end = time.monotonic() + 30
    while not journal.exists() and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert journal.exists(), "the journal must be written before anything changes"
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
