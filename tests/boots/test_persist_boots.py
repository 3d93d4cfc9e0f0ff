"""Persistence proven by real boots: systemd as PID 1 and Debian's systemd-udevd in the
test-bed guest (`scripts/vm run --init systemd`), three boots sharing one state folder that
holds the guest's /etc/vfiokit, /etc/udev/rules.d and /etc/systemd/system.

1. `vfiokit bind --persist` and `vfiokit assign --user nobody`;
2. the device comes up bound to vfio-pci and its VFIO nodes owned by nobody (0600) with no
   vfiokit command run: the udev rules and the unit did it; a PCI remove and rescan (a
   hot-plug) gets the same from them again; `systemd-analyze verify` is clean on the unit;
   then `unbind --persist` and `unassign`;
3. no trace: the device unbound, no node, no vfiokit file, no run of the unit.

These boot VMs from the host (never touching the host's devices), so they are not unit
tests: scripts/test runs them per kernel, with VFIOKIT_BOOT_ARGS naming it ("--base 7.2
--debug-kernel"). The guest's side is tests/boots/guest_persist.py.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def boot(phase: str, state: Path) -> dict[str, object]:
    args = shlex.split(os.environ.get("VFIOKIT_BOOT_ARGS", "--base 6.12"))
    res = subprocess.run(
        [str(REPO / "scripts" / "vm"), "run", "--quiet", "--timeout", "900", *args,
         "--init", "systemd", "--state", str(state), "--",
         str(REPO / ".venv" / "bin" / "python"), "tests/boots/guest_persist.py", phase],
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    reports = [line[len("report: "):] for line in res.stdout.splitlines()
               if line.startswith("report: ")]  # fmt: skip
    assert res.returncode == 0 and reports, f"boot {phase}:\n{res.stdout}\n{res.stderr}"
    report: dict[str, object] = json.loads(reports[-1])
    print(f"boot {phase}: {json.dumps(report)}")
    return report


def test_persisted_binding_and_assignment_across_real_boots(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = boot("first", state)
    assert first["pid1"] == "systemd" and first["udevd"] == "active"
    # What the first boot left in the state folder is what vfiokit says it writes
    # (docs/binding.md): the record, the persist rule and unit, the assign rules.
    kept = sorted(str(p.relative_to(state)) for p in state.rglob("*") if p.is_file())
    assert kept == [
        "etc/systemd/system/vfiokit-persist@.service",
        "etc/udev/rules.d/60-vfiokit-persist.rules",
        "etc/udev/rules.d/70-vfiokit-assign-0000:00:06.0.rules",
        "etc/udev/rules.d/70-vfiokit-shared.rules",
        "etc/vfiokit/persist.d/0000:00:06.0",
    ], kept
    second = boot("second", state)
    owned = {"owner": "nobody", "mode": "0600"}
    for when in ("at_boot", "after_rescan"):
        seen = second[when]
        assert isinstance(seen, dict)
        assert seen["driver"] == "vfio-pci" and seen["override"] == "vfio-pci", when
        assert seen["group_node"] == owned and seen["cdev_node"] == owned, when
    # The unit's runs, from the journal: one at boot, one more after the rescan, each done,
    # none failed, each having bound the device.
    for key, n in (("unit_runs_at_boot", 1), ("unit_runs", 2)):
        runs = second[key]
        assert isinstance(runs, list) and len(runs) == n, (key, runs)
        for run in runs:
            assert run["done"] and not run["failed"], run
            assert any("bound 1 device(s)" in m for m in run["messages"]), run
    assert second["verify"] == {"rc": 0, "out": ""}
    assert not [p for p in state.rglob("*") if p.is_file()]
    third = boot("third", state)
    assert third["files"] == [] and third["unit_runs"] == []
