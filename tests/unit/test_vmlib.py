"""The test bed's host side: topology, QEMU command line, dmesg verdicts."""

import re
from pathlib import Path

import pytest

from vmlib import qemu, runner


def test_topology_matches_q35_routing() -> None:
    topo = qemu.load()
    shared = topo.on_line("shared")
    assert {d.qemu for d in shared} == {"edu", "e1000"}
    assert {d.gsi for d in shared} == {20}
    alone = topo.on_line("alone")
    assert len(alone) == 1 and alone[0].qemu == "edu"
    others = [d for d in topo.devices if d is not alone[0]]
    group = topo.on_line("group")
    assert [d.address for d in group] == ["0000:00:11.0", "0000:00:11.1"]
    assert all(d.gsi != alone[0].gsi for d in others)
    assert topo.by_name("edu_a").address == "0000:00:04.0"


def test_qemu_command() -> None:
    topo = qemu.load()
    shares = {
        "hostroot": (Path("/"), True),
        "project": (Path("/p"), False),
        "results": (Path("/r"), False),
    }
    argv = qemu.command(topo, kernel=Path("/k/bzImage"), append="console=ttyS0", shares=shares)
    joined = " ".join(argv)
    assert argv[:5] == ["qemu-system-x86_64", "-accel", "tcg,thread=single", "-cpu", "max"]
    assert "e1000,addr=0x11.0,romfile=,multifunction=on -device e1000,addr=0x11.1," in joined
    assert "-device edu,addr=0x04.0" in joined and "-device e1000,addr=0x0c.0,romfile=" in joined
    assert "path=/,security_model=none,multidevs=remap,readonly=on" in joined
    assert "path=/p,security_model=none,multidevs=remap -device" in joined
    assert "intel-iommu,intremap=on" in joined and "-no-reboot" in argv
    kvm = qemu.command(topo, kernel=Path("/k"), append="", shares=shares, accel="kvm")
    assert "q35,kernel-irqchip=split" in kvm and "host" in kvm
    assert kvm[kvm.index("-accel") + 1] == "kvm"
    multi = qemu.command(topo, kernel=Path("/k"), append="", shares=shares, tcg_thread="multi")
    assert multi[multi.index("-accel") + 1] == "tcg,thread=multi"
    with pytest.raises(ValueError, match="neither single nor multi"):
        qemu.command(topo, kernel=Path("/k"), append="", shares=shares, tcg_thread="rr")


def test_bad_dmesg() -> None:
    log = "\n".join(
        [
            "[    1.0] genirq: Flags mismatch irq 20. 00000000 (a) vs. 00000080 (b)",
            "[    1.1] Call Trace:",
            "[    2.0] WARNING: CPU: 0 PID: 1 at kernel/irq/manage.c:800 __enable_irq+0x4",
            '[    3.0] irq 20: nobody cared (try booting with the "irqpoll" option)',
            "[    4.0] Unbalanced enable for IRQ 20",
            "[    5.0] WARNING: possible circular locking dependency detected",
            "[    6.0] BUG: KASAN: slab-use-after-free in vfiokit_intx_handler",
        ]
    )
    bad = runner.bad_dmesg_lines(log)
    assert len(bad) == 5 and not any("Flags mismatch" in b or "Call Trace" in b for b in bad)
    assert runner.bad_dmesg_lines(log, re.compile("nobody cared|Unbalanced")) == [
        bad[0],
        bad[3],
        bad[4],
    ]


def test_result_ok() -> None:
    assert runner.Result(0, "", "", "", 1.0).ok
    assert not runner.Result(0, "", "", "", 1.0, timed_out=True).ok
    assert not runner.Result(0, "", "", "", 1.0, bad_dmesg=["x"]).ok
    assert not runner.Result(1, "", "", "", 1.0).ok
