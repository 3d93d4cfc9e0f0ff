"""The KUnit suite of the genirq patch ran at boot (scripts/vm enables it) and passed."""

from __future__ import annotations

import re
import subprocess


def test_irq_mask_device_kunit_suite() -> None:
    log = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"# irq_mask_device: pass:(\d+) fail:(\d+) skip:(\d+) total:(\d+)", log)
    assert m, "the irq_mask_device KUnit suite did not run"
    passed, failed, skipped, total = map(int, m.groups())
    failures = re.findall(r"not ok \d+ (\S+)", log)
    assert (failed, skipped, failures) == (0, 0, [])
    assert passed == total >= 17
    assert re.search(r"^\[[ .0-9]+\] ok \d+ irq_mask_device$", log, re.M)
