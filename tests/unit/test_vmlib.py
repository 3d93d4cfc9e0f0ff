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
    # The NVMe (MSI-X only) and the infrastructure keep their INTx pins on GSI 16, off the
    # test lines.
    nvme = topo.by_name("nvme")
    assert topo.on_line("msix") == [nvme] and nvme.address == "0000:00:19.0"
    assert nvme.gsi == 16
    assert {d.gsi for d in topo.on_line("infra") if d.qemu == "virtio-9p-pci"} == {16}
    assert nvme.option["serial"] == "vfiokit-nvme0" and nvme.disk_bytes == 64 << 20


def test_qemu_command() -> None:
    topo = qemu.load()
    shares = {
        "hostroot": (Path("/"), True),
        "project": (Path("/p"), False),
        "results": (Path("/r"), False),
    }
    disks = {"nvme": Path("/d/nvme.img")}
    argv = qemu.command(
        topo, kernel=Path("/k/bzImage"), append="console=ttyS0", shares=shares, disks=disks
    )
    joined = " ".join(argv)
    assert "-drive if=none,id=disk_nvme,file=/d/nvme.img,format=raw" in joined
    assert "-device nvme,addr=0x19.0,serial=vfiokit-nvme0,drive=disk_nvme" in joined
    with pytest.raises(ValueError, match="needs a disk image"):
        qemu.command(topo, kernel=Path("/k"), append="", shares=shares)
    assert argv[:5] == ["qemu-system-x86_64", "-accel", "tcg,thread=single", "-cpu", "max,la57=off"]
    assert "e1000,addr=0x11.0,romfile=,multifunction=on -device e1000,addr=0x11.1," in joined
    assert "-device edu,addr=0x04.0" in joined and "-device e1000,addr=0x0c.0,romfile=" in joined
    assert "path=/,security_model=none,multidevs=remap,readonly=on" in joined
    assert "path=/p,security_model=none,multidevs=remap -device" in joined
    assert "intel-iommu,intremap=on" in joined and "-no-reboot" in argv
    kvm = qemu.command(topo, kernel=Path("/k"), append="", shares=shares, disks=disks, accel="kvm")
    assert "q35,kernel-irqchip=split" in kvm and "host" in kvm
    assert kvm[kvm.index("-accel") + 1] == "kvm"
    multi = qemu.command(
        topo, kernel=Path("/k"), append="", shares=shares, disks=disks, tcg_thread="multi"
    )
    assert multi[multi.index("-accel") + 1] == "tcg,thread=multi"
    with pytest.raises(ValueError, match="neither single nor multi"):
        qemu.command(
            topo, kernel=Path("/k"), append="", shares=shares, disks=disks, tcg_thread="rr"
        )


def test_scratch_disks_are_fresh_sparse_images(tmp_path: Path) -> None:
    topo = qemu.load()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "nvme.img").write_bytes(b"left over from an earlier run")
    disks = qemu.scratch_disks(topo, tmp_path / "d")
    assert disks == {"nvme": tmp_path / "d" / "nvme.img"}
    st = disks["nvme"].stat()
    assert st.st_size == 64 << 20 and st.st_blocks * 512 < 1 << 20  # sparse
    assert disks["nvme"].read_bytes()[:64] == bytes(64)


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


def test_symbolize_picks_the_nearest_text_symbol_below(tmp_path: Path) -> None:
    smap = tmp_path / "System.map"
    smap.write_text(
        "ffffffff81000000 T _stext\n"
        "ffffffff81400000 t __lock_acquire\n"
        "ffffffff81400800 D some_data\n"
        "ffffffff81401000 T lock_acquire\n"
    )
    assert runner.symbolize(0xFFFFFFFF81400A05, smap) == "__lock_acquire+0xa05"
    assert runner.symbolize(0xFFFFFFFF81401000, smap) == "lock_acquire+0x0"
    assert runner.symbolize(0xFFFFFFFF80000000, smap) == "?"
    assert runner.symbolize(0xFFFFFFFF81000000, tmp_path / "missing") == "?"


class FakeMonitor:
    """QEMU's human monitor on a Unix socket, as far as hung_guest_state uses it: a banner,
    a prompt, each command echoed (with terminal escapes) and answered."""

    def __init__(self, path: Path, rips: list[str]) -> None:
        import socket
        import threading

        self.commands: list[str] = []
        self.rips = list(rips)
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(str(path))
        self.srv.listen()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def answer(self, cmd: str) -> str:
        if cmd == "info registers -a":
            rip = self.rips.pop(0) if self.rips else "ffffffff81000000"
            return f"CPU#0\r\nRIP={rip} RFL=00000006 [-----P-] CPL=0\r\nRAX=0\r\n"
        return f"answer to {cmd}\r\n"

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"QEMU 7.2.0 monitor\r\n(qemu) ")
                buf = b""
                while True:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        cmd = line.decode()
                        self.commands.append(cmd)
                        echo = f"\x1b[K{cmd}\r\n"
                        conn.sendall((echo + self.answer(cmd) + "(qemu) ").encode())

    def close(self) -> None:
        self.srv.close()


def test_hung_guest_state_samples_and_names_the_rips(tmp_path: Path) -> None:
    smap = tmp_path / "System.map"
    smap.write_text("ffffffff81400000 t __lock_acquire\nffffffff81500000 T do_raw_spin_lock\n")
    sock = tmp_path / "monitor.sock"
    rips = ["ffffffff81400a05", "ffffffff81500010"] + ["ffffffff81400a05"] * 20
    mon = FakeMonitor(sock, rips)
    try:
        state = runner.hung_guest_state(sock, cpus=2, smap=smap)
        sent = runner.nmi_guest(sock)
    finally:
        mon.close()
    assert mon.commands[:5] == [
        "info registers -a",
        "info lapic 0",
        "info lapic 1",
        "info pic",
        "info irq",
    ]
    assert mon.commands[5:] == ["info registers -a"] * runner.RIP_SAMPLES + ["nmi"]
    assert sent
    assert "(qemu) info lapic 1\nanswer to info lapic 1" in state
    samples = state.split("(qemu) RIP samples\n", 1)[1].splitlines()
    # the first dump was the full one; the samples follow it
    assert samples[0] == "ffffffff81500010 do_raw_spin_lock+0x10"
    assert samples[1:] == ["ffffffff81400a05 __lock_acquire+0xa05"] * (runner.RIP_SAMPLES - 1)
    assert "\x1b" not in state


def test_a_missing_monitor_is_reported_not_raised(tmp_path: Path) -> None:
    state = runner.hung_guest_state(tmp_path / "none.sock", cpus=1)
    assert state.startswith("monitor: ")
    assert runner.nmi_guest(tmp_path / "none.sock") is False


# QEMU's monitor on the guest that stalled in the 6.12 threadirqs pass of 2026-12-07 (2
# vCPUs, round-robin TCG): both halted with interrupts on, CPU 0's timer vector in IRR.
STALLED_REGS = """CPU#0
RIP=ffffffff814edbf3 RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1
RSP=ffffffff81a03ec0 RBP=0000000000000000
CPU#1
RIP=ffffffff814edbf3 RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1
RSP=ffffc900000a3eb8 RBP=0000000000000001"""


def lapic(irr: str, ppr: str = "0x10", isr: str = "(none)") -> str:
    return (
        "dumping local APIC state for CPU 0 \n\n"
        "LVTT\t 0x000200ec active-hi edge                 periodic     Fixed  (vec 236)\n"
        "SPIV\t 0x000001ff APIC enabled, focus=off, spurious vec 255\n"
        f"ISR\t {isr}\nIRR\t {irr} \n\nAPR 0x00 TPR 0x10 DFR 0x0f LDR 0x00 PPR {ppr}"
    )


def answers(regs: str, *lapics: str) -> list[tuple[str, str]]:
    return [("info registers -a", regs)] + [(f"info lapic {i}", a) for i, a in enumerate(lapics)]


def test_lost_wakeup_is_recognized() -> None:
    seen = runner.lost_wakeup(answers(STALLED_REGS, lapic("236"), lapic("(none)")))
    assert seen == "CPU 0: IRR 236 above PPR 10"
    assert runner.lapic_queries(2) == ["info registers -a", "info lapic 0", "info lapic 1"]


def test_a_guest_at_work_or_blocked_is_no_lost_wakeup() -> None:
    idle = answers(STALLED_REGS, lapic("(none)"), lapic("(none)"))
    running = answers(STALLED_REGS.replace("HLT=1", "HLT=0", 1), lapic("236"), lapic("(none)"))
    cli = answers(STALLED_REGS.replace("RFL=00000246", "RFL=00000046", 1), lapic("236"))
    # the vector is held back by the processor priority (one of its class in service)
    masked = answers(STALLED_REGS, lapic("236", ppr="0xe0", isr="236"), lapic("(none)"))
    for case in (idle, running, cli, masked, [], answers("", lapic("236"))):
        assert runner.lost_wakeup(case) == "", case
    # an answer that cannot be read counts as no
    assert runner.lost_wakeup(answers(STALLED_REGS, "monitor gone", lapic("236"))) == ""
