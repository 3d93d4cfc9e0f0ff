"""A hostile user: the unprivileged user a device was assigned to (`vfiokit assign`) sends
a seeded stream of random and malformed INTx, feature, config and reset requests from two
threads (tests/vm/hostile_user.py), while a second device on the same line (edu_b through
vfio-pci, driven by root) must keep receiving its interrupts. Every call returns or fails
with an errno, the guest lives, the kernel log stays clean, and the device works afterwards.
The debug kernel (lockdep, KASAN, DEBUG_SHIRQ) runs this in every scripts/test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_intx_contract import BAD_LOG, EVENTFD, NONE, TRIGGER, UNMASK

import helpers as h
from test_adaptive import nointxmask

pytestmark = [
    pytest.mark.skipif(nointxmask(), reason="this boot forces vfio_pci.nointxmask=1"),
    pytest.mark.usefixtures("vfiokit_modules"),
]
FUZZER = Path(__file__).with_name("hostile_user.py")


def vfiokit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vfiokit", *args], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_hostile_user_cannot_hurt_the_host(topology, seed: int) -> None:
    edu, peer_dev = topology.by_name("edu_a"), topology.by_name("edu_b")
    os.chmod("/root", 0o711)  # the guest's overlay only: let "nobody" reach the interpreter
    log_before = len(h.dmesg().splitlines())
    res = vfiokit("bind", edu.address, "--driver", "vfiokit-pci")
    assert res.returncode == 0, res.stderr
    try:
        res = vfiokit("assign", edu.address, "--user", "nobody")
        assert res.returncode == 0, res.stderr
        with h.bound(peer_dev.address, "vfio-pci"), h.VfioDevice(peer_dev.address) as peer:
            pfd = h.eventfd()
            assert peer.set_irqs(EVENTFD | TRIGGER, data=h.i32(pfd)) == 0
            stop = threading.Event()
            served = {"round trips": 0, "lost": 0}

            def serve() -> None:
                while not stop.is_set():
                    peer.write32(h.EDU_IRQ_RAISE, 1)
                    if h.signalled(pfd, timeout=5.0, settle=0):
                        served["round trips"] += 1
                    else:
                        served["lost"] += 1
                    peer.write32(h.EDU_IRQ_ACK, 1)
                    peer.set_irqs(NONE | UNMASK)

            t = threading.Thread(target=serve)
            t.start()
            try:
                t0 = time.monotonic()
                fuzz = subprocess.run(
                    ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                     sys.executable, str(FUZZER), edu.address, str(seed), "3000"],
                    capture_output=True, text=True, timeout=600, check=False,
                )  # fmt: skip
                took = time.monotonic() - t0
            finally:
                stop.set()
                t.join()
            os.close(pfd)
        assert fuzz.returncode == 0, fuzz.stdout + fuzz.stderr
        summary = json.loads(fuzz.stdout)
        assert summary["uid"] == 65534 and summary["ops"] == 3000 and summary["failures"] == []
        ok = sum(n for k, n in summary["stats"].items() if k.endswith(":ok"))
        assert ok > 300, summary  # the stream did reach the driver, not only its errors
        assert served["lost"] == 0 and served["round trips"] > 10, (served, took)
        # The device still works for its user afterwards.
        with h.VfioDevice(edu.address) as dev:
            efd = h.eventfd()
            dev.write32(h.EDU_IRQ_ACK, 0xFFFFFFFF)
            dev.write_command(dev.read_command() | 0x6)
            assert dev.set_irqs(EVENTFD | TRIGGER, data=h.i32(efd)) == 0
            dev.write32(h.EDU_IRQ_RAISE, 1)
            assert h.signalled(efd) == 1
            dev.write32(h.EDU_IRQ_ACK, 1)
            assert dev.set_irqs(NONE | UNMASK) == 0
            assert h.signalled(efd, timeout=0.1) == 0
            os.close(efd)
    finally:
        vfiokit("unassign", edu.address)
        vfiokit("restore", edu.address)
    bad = [ln for ln in h.dmesg().splitlines()[log_before:] if any(w in ln for w in BAD_LOG)]
    assert bad == []
