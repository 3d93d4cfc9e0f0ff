"""The KUnit suite of the genirq patch ran at boot (scripts/vm enables it) and passed.

Two cases free a sharer on a second CPU while the owner's handler runs on the first; with
one vCPU they skip themselves, and only they may. scripts/test boots a 2-vCPU guest (with
forced interrupt threading) where nothing may skip.
"""

from __future__ import annotations

import os
import re
import subprocess

NEEDS_SMP = {
    "mask_device_last_sharer_leaves_in_flight_primary",
    "mask_device_last_sharer_leaves_in_flight_threaded",
}


def test_irq_mask_device_kunit_suite() -> None:
    log = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"# irq_mask_device: pass:(\d+) fail:(\d+) skip:(\d+) total:(\d+)", log)
    assert m, "the irq_mask_device KUnit suite did not run"
    passed, failed, skipped, total = map(int, m.groups())
    failures = re.findall(r"not ok \d+ (\S+)", log)
    skips = set(re.findall(r"ok \d+ (\S+) # SKIP", log))
    assert (failed, failures) == (0, [])
    assert skips == (NEEDS_SMP if os.cpu_count() == 1 else set())
    assert passed + skipped == total >= 28
    assert re.search(r"^\[[ .0-9]+\] ok \d+ irq_mask_device$", log, re.M)
