"""The guest's side of tests/boots/test_persist_boots.py: one phase per boot, run by the
test-bed's job unit under systemd as PID 1 with Debian's systemd-udevd. Refuses to run
anywhere else. Prints one JSON line of what it saw ("report: {...}") and exits non-zero
with the reason when something is not as the phase expects.

first   bind --persist and assign --user nobody, as a user would
second  the device came up bound and owned, by the real unit and rules alone; then a PCI
        remove and rescan (hot-plug) does it again; systemd-analyze verify; then
        unbind --persist and unassign
third   no trace: the device unbound, no node, no vfiokit file under /etc
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import sys
import time
from pathlib import Path

BDF = "0000:00:06.0"  # the edu alone on its line (scripts/vm-topology.toml: edu_alone)
DRIVER = "vfio-pci"  # built in: nothing to load before the unit runs at boot
USER = "nobody"
PCI = Path("/sys/bus/pci/devices")
UNIT = f"vfiokit-persist@{BDF}.service"
ETC = (Path("/etc/vfiokit"), Path("/etc/udev/rules.d"), Path("/etc/systemd/system"))
REPO = Path(__file__).resolve().parents[2]


def fail(why: str, report: dict[str, object]) -> None:
    print("report: " + json.dumps(report), flush=True)
    sys.exit(f"guest_persist: {why}")


def sh(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def vfiokit(*args: str) -> subprocess.CompletedProcess[str]:
    return sh(str(REPO / ".venv" / "bin" / "vfiokit"), *args)


def driver() -> str | None:
    link = PCI / BDF / "driver"
    return link.resolve().name if link.exists() else None


def group() -> str:
    return (PCI / BDF / "iommu_group").resolve().name


def node(path: Path) -> dict[str, object] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return {"owner": pwd.getpwuid(st.st_uid).pw_name, "mode": f"{stat.S_IMODE(st.st_mode):04o}"}


def cdev() -> Path | None:
    found = sorted((PCI / BDF / "vfio-dev").glob("vfio*")) if (PCI / BDF).exists() else []
    return Path("/dev/vfio/devices") / found[0].name if found else None


def seen() -> dict[str, object]:
    if not (PCI / BDF).exists():
        return {"driver": None, "override": None, "group_node": None, "cdev_node": None}
    c = cdev()
    return {
        "driver": driver(),
        "override": (PCI / BDF / "driver_override").read_text().strip(),
        "group_node": node(Path("/dev/vfio") / group()),
        "cdev_node": node(c) if c else None,
    }


def unit_runs() -> list[dict[str, object]]:
    """The unit's runs in this boot, from the journal (an inactive oneshot is unloaded by
    systemd once done, so `systemctl show` forgets it): per invocation its messages and
    whether systemd logged its start as finished ("Finished <unit>") or failed."""
    out = sh("journalctl", "-b", "-u", UNIT, "-o", "json", "--no-pager").stdout
    runs: dict[str, dict[str, object]] = {}
    for line in out.splitlines():
        e = json.loads(line)
        inv = e.get("_SYSTEMD_INVOCATION_ID") or e.get("INVOCATION_ID")
        msg = e.get("MESSAGE")
        if not inv or not isinstance(msg, str):
            continue
        run = runs.setdefault(inv, {"messages": [], "done": False, "failed": False})
        run["messages"].append(msg)  # type: ignore[attr-defined]
        run["done"] = run["done"] or msg.startswith(f"Finished {UNIT}")
        failed = "Failed with result" in msg or msg.startswith(f"Failed to start {UNIT}")
        run["failed"] = run["failed"] or failed
    return list(runs.values())


def runs_done(n: int) -> bool:
    """At least `n` runs of the unit, every one done and none failed."""
    runs = unit_runs()
    return len(runs) >= n and all(r["done"] and not r["failed"] for r in runs)


def wait_until(pred, timeout: float = 90.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.5)
    return bool(pred())


def owned() -> bool:
    s = seen()
    want = {"owner": USER, "mode": "0600"}
    return s["driver"] == DRIVER and s["group_node"] == want and s["cdev_node"] == want


def vfiokit_files() -> list[str]:
    out = []
    for top in ETC:
        for p in top.rglob("*"):
            if "vfiokit" in p.name or p.parent.name == "persist.d":
                out.append(str(p))
    return sorted(out)


def refuse_outside_the_vm() -> None:
    cmdline = Path("/proc/cmdline").read_text().split()
    if "vfiokit.vm=1" not in cmdline or "vfiokit.pid1=systemd" not in cmdline:
        sys.exit("guest_persist: refusing to run outside the test-bed VM booted with systemd")
    if Path("/proc/1/comm").read_text().strip() != "systemd":
        sys.exit("guest_persist: PID 1 is not systemd")


def first(report: dict[str, object]) -> None:
    report["udevd"] = sh("systemctl", "is-active", "systemd-udevd.service").stdout.strip()
    if report["udevd"] != "active":
        fail("systemd-udevd is not running", report)
    report["files_before"] = vfiokit_files()
    if report["files_before"] or driver() is not None:
        fail("the first boot did not start clean", report)
    res = vfiokit("bind", BDF, "--driver", DRIVER, "--persist", "--json")
    report["bind"] = res.returncode
    if res.returncode != 0:
        fail(f"bind --persist failed: {res.stdout}{res.stderr}", report)
    res = vfiokit("assign", BDF, "--user", USER, "--json")
    report["assign"] = res.returncode
    if res.returncode != 0:
        fail(f"assign failed: {res.stdout}{res.stderr}", report)
    report["now"] = seen()
    report["files"] = vfiokit_files()
    if not owned():
        fail("not bound and owned right after bind and assign", report)


def second(report: dict[str, object]) -> None:
    # No vfiokit command before this point: what is there, the boot did.
    ok = wait_until(lambda: owned() and runs_done(1))
    report["at_boot"] = seen()
    report["unit_runs_at_boot"] = unit_runs()
    if not ok:
        fail("not bound and owned by one successful run of the unit at boot", report)
    template = "/etc/systemd/system/vfiokit-persist@.service"
    verify = sh("systemd-analyze", "verify", "--man=no", template)
    report["verify"] = {"rc": verify.returncode, "out": (verify.stdout + verify.stderr).strip()}
    if verify.returncode != 0 or verify.stdout.strip() or verify.stderr.strip():
        fail("systemd-analyze verify is not clean", report)
    # Hot-plug: the device goes and comes back (its group may get a new number); udev's rule
    # and the unit bind it again and the assign rule gives the new nodes to the user.
    report["group_before_rescan"] = group()
    Path(PCI / BDF / "remove").write_text("1")
    if not wait_until(lambda: not (PCI / BDF).exists(), 30):
        fail("the device did not go away", report)
    Path("/sys/bus/pci/rescan").write_text("1")
    ok = wait_until(lambda: owned() and runs_done(2))
    report["after_rescan"] = seen()
    report["group_after_rescan"] = group() if (PCI / BDF).exists() else None
    report["unit_runs"] = unit_runs()
    if not ok:
        fail("after a PCI remove and rescan: not bound and owned by a second run", report)
    res = vfiokit("unassign", BDF)
    report["unassign"] = res.returncode
    res2 = vfiokit("unbind", BDF, "--persist", "--json")
    report["unbind"] = res2.returncode
    if res.returncode != 0 or res2.returncode != 0:
        fail(f"unassign/unbind --persist failed: {res.stderr}{res2.stderr}", report)
    report["files_left"] = vfiokit_files()
    report["now"] = seen()
    if report["files_left"] or driver() is not None:
        fail("unbind --persist and unassign left something behind", report)


def third(report: dict[str, object]) -> None:
    time.sleep(5)  # give a stray rule or unit the time to act, if one were left
    report["now"] = seen()
    report["files"] = vfiokit_files()
    # A oneshot that ran and ended is unloaded by systemd, so `list-units` cannot tell;
    # the journal can: no run of the unit in this boot.
    report["unit_runs"] = unit_runs()
    now = report["now"]
    assert isinstance(now, dict)
    if now["driver"] is not None or now["group_node"] is not None:
        fail("the device was bound again in a boot after unbind --persist", report)
    if report["files"] or report["unit_runs"]:
        fail("a vfiokit file is still there, or the unit ran", report)


def main() -> None:
    refuse_outside_the_vm()
    phase = sys.argv[1]
    report: dict[str, object] = {"phase": phase, "pid1": "systemd", "uptime_s": float(
        Path("/proc/uptime").read_text().split()[0])}  # fmt: skip
    {"first": first, "second": second, "third": third}[phase](report)
    print("report: " + json.dumps(report), flush=True)


if __name__ == "__main__":
    os.umask(0o022)
    main()
