"""The test bed's own guarantees, checked from the host by booting real guests.

Run by scripts/test after the base kernel is built (they boot the VM, so they are not unit
tests): the guest's exit status is the run's, a hung guest is killed at its time limit, and a
bad kernel log fails a run that otherwise passed.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

VM = Path(__file__).resolve().parents[2] / "scripts" / "vm"


def vm(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VM), "run", "--quiet", "--accel", "tcg", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_exit_status_and_output_come_back() -> None:
    res = vm("--", "sh", "-c", 'echo "hello from $(uname -r)"; exit 7')
    assert res.returncode == 7
    # Whatever 6.12.y Debian ships now; the tree is a git checkout with the series applied
    # uncommitted, so the release may carry setlocalversion's "+".
    assert re.search(r"^hello from 6\.12\.\d+-vfiokit\+?$", res.stdout, re.M), res.stdout


def test_hung_guest_is_killed() -> None:
    res = vm("--timeout", "10", "--", "sleep", "600")
    assert res.returncode == 124
    assert "did not finish within its time limit" in res.stderr
    assert "last console lines" in res.stderr
    # Before the kill, QEMU's monitor is asked where the vCPUs are and what the interrupt
    # controllers hold: what a hung CI run has to go on.
    assert "QEMU's monitor on the hung guest" in res.stderr
    assert re.search(r"^  CPU#0\n  RIP=[0-9a-f]{16} RFL=", res.stderr, re.M), res.stderr
    assert re.search(r"^  \(qemu\) info lapic 0\n.*\bISR\b", res.stderr, re.M | re.S)
    assert "ioapic" in res.stderr.lower()


def test_bad_kernel_log_fails_the_run() -> None:
    cmd = ["sh", "-c", "echo '<4>WARNING: vfiokit self-check' > /dev/kmsg"]
    res = vm("--", *cmd)
    assert res.returncode == 125
    assert "WARNING: vfiokit self-check" in res.stderr
    assert vm("--allow-dmesg", "vfiokit self-check", "--", *cmd).returncode == 0
