"""Boot the test-bed guest, run one job in it, collect its status, output and dmesg."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import qemu

REPO = Path(__file__).resolve().parents[2]
GUEST_INIT = REPO / "scripts" / "vm-guest-init"
CACHE = Path(os.environ.get("VFIOKIT_CACHE", Path.home() / ".cache" / "vfiokit"))

# dmesg lines that fail a run: warnings and bugs, lockdep, the spurious-IRQ detector, genirq
# depth errors, KASAN. Test code that provokes one on purpose must say so (allow_dmesg).
# A bare stack dump is not one: CONFIG_DEBUG_SHIRQ dumps one with every "Flags mismatch".
BAD_DMESG = re.compile(
    r"WARNING:|BUG:|possible circular locking|possible recursive locking|inconsistent lock state"
    r"|INFO: lockdep|nobody cared|Unbalanced enable|KASAN:|general protection fault|Oops"
    r"|blocked for more than \d+ seconds"
)


@dataclass
class Result:
    rc: int
    output: str
    dmesg: str
    console: str
    seconds: float
    timed_out: bool = False
    bad_dmesg: list[str] = field(default_factory=list)
    # what QEMU's monitor said of the vCPUs and interrupt controllers when a guest hung
    monitor: str = ""
    # the guest was killed early: QEMU never delivered a pending interrupt (lost_wakeup())
    stalled: bool = False

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out and not self.stalled and not self.bad_dmesg


def bad_dmesg_lines(dmesg: str, allow: re.Pattern[str] | None = None) -> list[str]:
    return [
        line
        for line in dmesg.splitlines()
        if BAD_DMESG.search(line) and not (allow and allow.search(line))
    ]


def kvm_usable(kernel: Path) -> bool:
    """Whether a probe boot under KVM works here (cached for this host boot)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    stamp = CACHE / "kvm-probe"
    if stamp.exists():
        saved = stamp.read_text().split()
        if len(saved) == 2 and saved[0] == boot_id:
            return saved[1] == "yes"
    res = run_job(["true"], kernel=kernel, accel="kvm", timeout=60, echo=False)
    ok = res.rc == 0 and not res.timed_out
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(f"{boot_id} {'yes' if ok else 'no'}\n")
    return ok


# The shares of a systemd boot (slots 0x1d, 0x1e: free on q35, beside the other shares
# on GSI 16): the persistent state when a run has one, and the udev layer. The layer is a
# share of its own, not a path under the host's root: overlayfs refuses a lower layer
# inside another one ("overlapping lowerdir path").
STATE_SHARE = qemu.Device(name="state", qemu="virtio-9p-pci", slot=0x1D, line="infra")
LAYER_SHARE = qemu.Device(name="layer", qemu="virtio-9p-pci", slot=0x1E, line="infra")
# systemd as PID 1 with the layer under the guest's root; no mounts or swap from the
# host's /etc/fstab (its disks are not in the guest), no first-boot questions.
SYSTEMD_CMDLINE = "vfiokit.pid1=systemd fstab=no systemd.gpt_auto=no systemd.firstboot=no"


def guest_layer() -> Path:
    """Debian's udev and systemd unpacked for the guest (scripts/guest-layer, cached)."""
    # Bounded like the run itself: a stuck download must not hold up a CI run for good.
    out = subprocess.run([str(REPO / "scripts" / "guest-layer")], check=True, timeout=900,
                         stdout=subprocess.PIPE, text=True).stdout.strip()  # fmt: skip
    return Path(out).resolve()


def _cmdline(extra: str) -> str:
    base = (
        "console=ttyS0 root=hostroot rootfstype=9p "
        "rootflags=trans=virtio,version=9p2000.L,cache=loose,msize=512000 ro "
        f"init={GUEST_INIT} vfiokit.init={GUEST_INIT} vfiokit.project={REPO} vfiokit.vm=1 "
        "panic=-1 oops=panic intel_iommu=on iommu=nopt loglevel=6 "
        # A hung guest is sent an NMI before it is killed (hung_guest_state): the panic
        # this asks for prints the stack of the vCPU it stops, even one spinning with
        # interrupts off, which the hung-task and soft-lockup detectors never see.
        "unknown_nmi_panic "
        # The genirq patch's KUnit suite runs at every boot (milliseconds); test_kunit.py
        # checks its results.
        "kunit.enable=1 kunit.filter_glob=irq_mask_device"
    )
    return f"{base} {extra}".strip()


def run_job(
    argv: list[str],
    *,
    kernel: Path,
    accel: str = "tcg",
    timeout: float = 600,
    env: dict[str, str] | None = None,
    cmdline: str = "",
    echo: bool = True,
    interactive: bool = False,
    keep: Path | None = None,
    cpus: int | None = None,
    tcg_thread: str = "single",
    init: str = "sh",
    state: Path | None = None,
) -> Result:
    """Boot a fresh guest, run `argv` in it (or a shell), power off; never hangs past timeout.

    `cpus` overrides the topology's vCPU count (the KUnit cases that need a second CPU).
    `init="systemd"` boots systemd as PID 1 with Debian's udev (scripts/guest-layer), which
    runs the job from a unit; `state`, a host folder shared read-write, keeps what vfiokit
    persists (/etc/vfiokit, /etc/udev/rules.d, /etc/systemd/system) from boot to boot.
    """
    topo = qemu.load()
    if cpus is not None:
        topo = dataclasses.replace(topo, cpus=cpus)
    if state is not None:
        if init != "systemd":
            raise ValueError("a state folder needs init='systemd'")
        topo = dataclasses.replace(topo, devices=(*topo.devices, STATE_SHARE))
    layer = guest_layer() if init == "systemd" else None
    if layer is not None:
        topo = dataclasses.replace(topo, devices=(*topo.devices, LAYER_SHARE))
        state_arg = " vfiokit.state=1" if state is not None else ""
        cmdline = f"{SYSTEMD_CMDLINE}{state_arg} {cmdline}".strip()
    results = Path(tempfile.mkdtemp(prefix="vfiokit-vm-"))
    try:
        (results / "cmd").write_text(
            "shell\n" if interactive else "exec " + shlex.join(argv) + "\n"
        )
        # The kernel's out-of-tree modules travel in the results share: the cache may live
        # where the guest cannot see it (under /tmp, which the guest mounts afresh).
        kmods = results / "kmods"
        kmods.mkdir()
        for ko in kernel.parent.glob("*.ko"):
            shutil.copy(ko, kmods)
        env = {"VFIOKIT_KERNEL_OUT": "/run/vfiokit-results/kmods", **(env or {})}
        (results / "env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        shares = {
            "hostroot": (Path("/"), True),
            "project": (REPO, False),
            "results": (results, False),
        }
        if state is not None:
            state.mkdir(parents=True, exist_ok=True)
            shares["state"] = (state.resolve(), False)
        if layer is not None:
            shares["layer"] = (layer, True)
        monitor_sock = results / "monitor.sock"
        # Disk images (the NVMe's) start empty every run and go with the results folder.
        disks = qemu.scratch_disks(topo, results / "disks")
        cmd = qemu.command(
            topo,
            kernel=kernel,
            append=_cmdline(cmdline),
            shares=shares,
            disks=disks,
            accel=accel,
            tcg_thread=tcg_thread,
        )
        cmd += ["-monitor", f"unix:{monitor_sock},server=on,wait=off"]
        start = time.monotonic()
        if interactive:
            proc = subprocess.run(cmd, check=False)
            return Result(proc.returncode, "", "", "", time.monotonic() - start)
        console: deque[str] = deque(maxlen=4000)
        lines_seen = [0]
        p = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

        def pump() -> None:
            assert p.stdout is not None
            for raw in p.stdout:
                line = raw.decode(errors="replace").rstrip("\r\n")
                console.append(line)
                lines_seen[0] += 1
                if echo:
                    print(line, flush=True)

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        timed_out = stalled = False
        monitor = ""
        if not wait_watching(p, monitor_sock, topo.cpus, start + timeout):
            timed_out = True
            stalled = time.monotonic() < start + timeout
            monitor = hung_guest_state(monitor_sock, topo.cpus, system_map(kernel))
            before = lines_seen[0]
            if nmi_guest(monitor_sock):
                time.sleep(NMI_WAIT)
            after_nmi = list(console)[len(console) - (lines_seen[0] - before) :]
            monitor += "(qemu) nmi\n" + "\n".join(after_nmi) + "\n"
            p.kill()
            p.wait()
        t.join(timeout=5)
        seconds = time.monotonic() - start
        rc_text = (results / "rc").read_text().strip() if (results / "rc").exists() else ""
        rc = int(rc_text) if rc_text.lstrip("-").isdigit() else 255
        output = _read(results / "output.txt")
        dmesg = _read(results / "dmesg.txt")
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            (keep / "console.log").write_text("\n".join(console) + "\n")
            if monitor:
                (keep / "monitor.txt").write_text(monitor)
            for name in ("output.txt", "dmesg.txt"):
                if (results / name).exists():
                    shutil.copy(results / name, keep / name)
        res = Result(
            rc=rc,
            output=output,
            dmesg=dmesg,
            console="\n".join(console),
            seconds=seconds,
            timed_out=timed_out,
            monitor=monitor,
            stalled=stalled,
        )
        res.bad_dmesg = bad_dmesg_lines(dmesg or res.console)
        return res
    finally:
        shutil.rmtree(results, ignore_errors=True)


# QEMU 7.2's TCG was seen to leave a guest for good with every vCPU halted and interrupts
# on, while one local APIC held a deliverable vector (its timer's) in IRR: nothing runs
# again, so the job would wait out its whole time limit (docs/testbed.md, "Lost wakeups").
# The monitor is asked every STALL_POLL s; the same picture STALL_CONFIRM s apart ends
# the run early, marked stalled.
STALL_POLL, STALL_CONFIRM = 20.0, 30.0


def wait_watching(p: subprocess.Popen[bytes], sock: Path, cpus: int, deadline: float) -> bool:
    """Wait for QEMU to exit: True if it did, False at the deadline or on a lost wakeup."""
    seen: tuple[str, float] | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            p.wait(timeout=min(STALL_POLL, left))
            return True
        except subprocess.TimeoutExpired:
            pass
        picture = lost_wakeup(_ask(sock, lapic_queries(cpus)))
        now = time.monotonic()
        if not picture:
            seen = None
        elif seen is None or seen[0] != picture:
            seen = (picture, now)
        elif now - seen[1] >= STALL_CONFIRM:
            return False


def lapic_queries(cpus: int) -> list[str]:
    return ["info registers -a"] + [f"info lapic {c}" for c in range(cpus)]


def lost_wakeup(answers: list[tuple[str, str]]) -> str:
    """From the monitor's answers to lapic_queries(): a description of the lost wakeup if
    every vCPU is halted with interrupts enabled and some local APIC holds in IRR a vector
    its processor priority lets through, else "" (any unreadable answer counts as no)."""
    regs = next((a for q, a in answers if q == "info registers -a"), "")
    flags = re.findall(r"RFL=([0-9a-f]+) .* HLT=(\d)", regs)
    if not flags or any(hlt != "1" or not int(rfl, 16) & 0x200 for rfl, hlt in flags):
        return ""
    pending = []
    for q, a in answers:
        if not q.startswith("info lapic "):
            continue
        irr = re.search(r"^IRR\s+(.*)$", a, re.M)
        ppr = re.search(r"\bPPR 0x([0-9a-f]+)", a)
        if not irr or not ppr:
            return ""
        vectors = [int(v) for v in irr.group(1).split() if v.isdigit()]
        if vectors and max(vectors) & 0xF0 > int(ppr.group(1), 16) & 0xF0:
            pending.append(f"CPU {q.split()[-1]}: IRR {max(vectors)} above PPR {ppr.group(1)}")
    return "; ".join(pending)


def _ask(sock: Path, queries: list[str], timeout: float = 10.0) -> list[tuple[str, str]]:
    """The monitor's answer to each query; an empty list if it cannot be asked."""
    try:
        with _monitor(sock, timeout) as ask:
            return [(q, ask(q)) for q in queries]
    except OSError:
        return []


@contextlib.contextmanager
def _monitor(sock: Path, timeout: float = 10.0) -> Iterator[Callable[[str], str]]:
    """A conversation with QEMU's human monitor: ask(command) returns its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        _until_prompt(s)

        def ask(command: str) -> str:
            s.sendall(command.encode() + b"\n")
            return _until_prompt(s)

        yield ask


# Asked of QEMU's monitor before a hung guest is killed: where each vCPU is and whether it
# takes interrupts (RIP, RFLAGS.IF), each local APIC's in-service, pending and timer state,
# and the IO-APIC's routing with its remote-IRR bits: enough to tell a guest spinning in
# a test from a lost EOI or a local timer that stopped.
HUNG_GUEST_QUERIES = ("info registers -a", "info lapic {cpu}", "info pic", "info irq")
# and then, RIP_SAMPLES times, RIP_GAP s apart, where each vCPU is: one sample cannot tell
# a loop from a place passed through
RIP_SAMPLES, RIP_GAP = 8, 0.25
# seconds the guest is given to print its NMI panic (a debug kernel under TCG is slow)
NMI_WAIT = 20.0


def system_map(kernel: Path) -> Path:
    """The System.map of a kernel in out/<variant>/ (build-kernel keeps it in build/<variant>/)."""
    return kernel.parent.parent.parent / "build" / kernel.parent.name / "System.map"


def symbolize(rip: int, smap: Path) -> str:
    """`rip` as symbol+offset from a System.map; '?' if the map is missing or says nothing."""
    try:
        text = smap.read_text()
    except OSError:
        return "?"
    best: tuple[int, str] | None = None
    for line in text.splitlines():
        addr, kind, name = [*line.split(), "", "", ""][:3]
        if kind.lower() != "t":
            continue
        a = int(addr, 16)
        if a <= rip and (best is None or a > best[0]):
            best = (a, name)
    return f"{best[1]}+{rip - best[0]:#x}" if best else "?"


def hung_guest_state(sock: Path, cpus: int, smap: Path | None = None, timeout: float = 10.0) -> str:
    """What the monitor answers to HUNG_GUEST_QUERIES, then RIP samples (symbolized with
    `smap`); best effort, never raises."""
    queries = [q.format(cpu=c) for q in HUNG_GUEST_QUERIES for c in range(cpus if "{" in q else 1)]
    out: list[str] = []
    try:
        with _monitor(sock, timeout) as ask:
            for q in queries:
                out.append(f"(qemu) {q}\n{ask(q).strip()}")
            samples = []
            for _ in range(RIP_SAMPLES):
                time.sleep(RIP_GAP)
                reply = ask("info registers -a")
                samples += [
                    line.split()[0][4:] for line in reply.splitlines() if line.startswith("RIP=")
                ]
            named = [f"{r} {symbolize(int(r, 16), smap) if smap else '?'}" for r in samples]
            out.append("(qemu) RIP samples\n" + "\n".join(named))
    except OSError as exc:
        out.append(f"monitor: {exc}")
    return "\n".join(out) + "\n"


def nmi_guest(sock: Path, timeout: float = 10.0) -> bool:
    """Send every vCPU an NMI (the guest then panics with a stack trace); True if sent."""
    try:
        with _monitor(sock, timeout) as ask:
            ask("nmi")
    except OSError:
        return False
    return True


def _until_prompt(s: socket.socket) -> str:
    buf = b""
    while not buf.endswith(b"(qemu) "):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    text = buf.decode(errors="replace").replace("\r", "")
    # The monitor echoes the command line, with terminal escapes: keep the answer only.
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    lines = text.splitlines()
    return "\n".join(lines[1:-1] if len(lines) > 1 else lines)


def condensed(monitor: str) -> str:
    """The monitor's answers with only the CPU# and RIP lines of the register dump."""
    keep, in_regs = [], False
    for line in monitor.splitlines():
        if line.startswith("(qemu) "):
            in_regs = line.startswith("(qemu) info registers")
        if not in_regs or line.startswith(("(qemu) ", "CPU#", "RIP=")):
            keep.append(line)
    return "\n".join(keep)


def _read(p: Path) -> str:
    return p.read_text(errors="replace") if p.exists() else ""


def explain_failure(res: Result, out=sys.stderr) -> None:
    if res.stalled:
        print(
            f"vm: the guest stalled after {res.seconds:.0f} s: every vCPU halted with an"
            " interrupt pending in a local APIC that QEMU never delivers (a TCG lost wakeup,"
            " docs/testbed.md); killed early",
            file=out,
        )
    elif res.timed_out:
        print(f"vm: the guest did not finish within its time limit ({res.seconds:.0f} s)", file=out)
    if res.rc == 255 and not res.timed_out:
        print("vm: the guest ended without reporting an exit status", file=out)
    if res.bad_dmesg:
        print("vm: the guest's kernel log has warnings or errors:", file=out)
        for line in res.bad_dmesg[:20]:
            print(f"  {line}", file=out)
    if res.monitor:
        print("vm: QEMU's monitor on the hung guest (all of it in monitor.txt):", file=out)
        for line in condensed(res.monitor).splitlines():
            print(f"  {line}", file=out)
    if res.timed_out or res.rc == 255:
        print("vm: last console lines:", file=out)
        for line in res.console.splitlines()[-(80 if res.timed_out else 25) :]:
            print(f"  {line}", file=out)
