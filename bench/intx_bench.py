#!/usr/bin/env python3
"""INTx round trips on an edu device, per masking mode, from Python and from C.
Runs inside the test-bed VM (bench/run starts it); prints one JSON object per case.

A round trip: raise at BAR0 0x60, wait for the eventfd, ack at 0x64, unmask. The C loop
(bench/intx_loop.c) makes exactly the syscalls the Python driver makes. The Python loops
raise the next interrupt before they unmask (a driver's loop: wait, handle, unmask).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "vm"))

import helpers as h
from vfiokit.uio import UioDevice
from vfiokit.vfio import Intx, open_device
from vfiokit.vfio import uapi as U

ALONE, SHARED, NIC = "0000:00:06.0", "0000:00:04.0", "0000:00:0c.0"
SECONDS = float(os.environ.get("BENCH_SECONDS", "2"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
C_LOOP = os.environ["BENCH_C_LOOP"]
TRACING = Path("/sys/kernel/tracing")
# Booted with threadirqs every handler runs as a thread, the way KVM's device assignment
# injected INTx in 2010 (a threaded handler with IRQF_ONESHOT): the cases are named so.
THREADED = "threadirqs" in Path("/proc/cmdline").read_text().split()
UIO_ADAPTIVE = Path("/sys/module/uio_pci_generic/parameters/adaptive_intx")


# The Python loops all run one round trip in the same order, the one a driver's loop has:
# wait, ack (BAR0 0x64), raise the next interrupt (0x60, still masked), unmask. Each loop is
# written out, not shared through a helper: a helper would add a call per round trip to
# each, and the calls are what is measured.


def _summary(lat: list[float], took: float) -> dict[str, float]:
    lat.sort()
    return {"rate": len(lat) / took, "p50_us": lat[len(lat) // 2] * 1e6,
            "p99_us": lat[len(lat) * 99 // 100] * 1e6}  # fmt: skip


def python_loop(bdf: str, policy: str) -> dict[str, float]:
    """The API's calls one by one: intx.wait(), intx.unmask()."""
    with open_device(bdf, backend="legacy") as vd:
        intx = vd.intx(policy)
        view = vd.device.bar(0).mmap().cast("I")
        lat: list[float] = []
        clock = time.perf_counter
        view[0x60 // 4] = 1
        end = clock() + SECONDS
        start = t0 = clock()
        while True:
            intx.wait()
            view[0x64 // 4] = 1
            t1 = clock()
            lat.append(t1 - t0)
            t0 = t1
            if t1 >= end:
                break
            view[0x60 // 4] = 1
            intx.unmask()
        took = clock() - start
        intx.unmask()
        counts = dict(intx.counts)
        view.release()
    return {**_summary(lat, took), **counts}


def uio_python_loop(bdf: str, policy: str) -> dict[str, float]:
    """vfiokit.uio's calls one by one: policy "kernel" (the write to /dev/uioN) or "config"
    (the stock protocol, INTx Disable through sysfs). In the C loop's order, the next
    interrupt raised after the unmask: in this test bed a config-space unmask with the
    device's interrupt already pending is not delivered (docs/benchmarks.md)."""
    with UioDevice(bdf) as dev, dev.intx(policy) as intx:
        view = dev.map(0).cast("I")
        lat: list[float] = []
        clock = time.perf_counter
        end = clock() + SECONDS
        start = t0 = clock()
        while True:
            view[0x60 // 4] = 1
            intx.wait()
            view[0x64 // 4] = 1
            intx.unmask()
            t1 = clock()
            lat.append(t1 - t0)
            t0 = t1
            if t1 >= end:
                break
        took = clock() - start
        counts = dict(intx.counts)
        view.release()
    return {**_summary(lat, took), **counts}


def _burst(kind: str, intx: Intx, fd: int, view: memoryview, seconds: float) -> float:
    """Round trips per second of one loop for `seconds` on the fds given: "stdlib" (the
    builtins only), "calls" (intx.wait(), intx.unmask()), "iter" (intx.interrupts())."""
    import fcntl

    efd, req, arg = intx.efds[0], U.VFIO_DEVICE_SET_IRQS, bytearray(intx._unmask_template)
    read, ioctl = os.eventfd_read, fcntl.ioctl
    n = 0
    clock = time.perf_counter
    view[0x60 // 4] = 1
    end = clock() + seconds
    start = clock()
    if kind == "stdlib":
        while True:
            read(efd)
            view[0x64 // 4] = 1
            n += 1
            if clock() >= end:
                break
            view[0x60 // 4] = 1
            ioctl(fd, req, arg)
    elif kind == "calls":
        while True:
            intx.wait()
            view[0x64 // 4] = 1
            n += 1
            if clock() >= end:
                break
            view[0x60 // 4] = 1
            intx.unmask()
    else:
        for _ in intx.interrupts():
            view[0x64 // 4] = 1
            n += 1
            if clock() >= end:
                break
            view[0x60 // 4] = 1
    took = clock() - start
    intx.unmask()
    return n / took


def floor_comparison(bdf: str, rounds: int = 60, seconds: float = 0.25) -> dict[str, float]:
    """The API against the stdlib-only loop on the same fds, in short bursts taking turns
    (stdlib, calls, iter, stdlib, ...): the guest's speed under TCG jumps between two
    levels about 2x apart every few seconds, for every loop alike, so only runs made side
    by side compare. Each ratio is the median over the rounds of that round's ratio."""
    with open_device(bdf, backend="legacy") as vd:
        intx = vd.intx("kernel")
        view = vd.device.bar(0).mmap().cast("I")
        runs: dict[str, list[float]] = {"stdlib": [], "calls": [], "iter": []}
        for _ in range(rounds):
            for kind, rates in runs.items():
                rates.append(_burst(kind, intx, vd.device.fd, view, seconds))
        view.release()
    floor = runs["stdlib"]
    out = {f"{k}_rate": statistics.median(v) for k, v in runs.items()}
    for k in ("calls", "iter"):
        pairs = zip(runs[k], floor, strict=True)
        out[f"{k}_vs_stdlib"] = statistics.median(a / b for a, b in pairs)
    return out


def c_loop(bdf: str, mode: str) -> dict[str, float]:
    group = "-" if mode == "uio" else h.group_of(bdf)
    out = subprocess.run([C_LOOP, bdf, group, str(SECONDS), mode],
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    rounds, took, line, device, p50, p99 = (float(x) for x in out)
    return {"rate": rounds / took, "p50_us": p50, "p99_us": p99, "line": line, "device": device}


def traced_round_trips(bdf: str, policy: str, rounds: int, tracer: str) -> None:
    """`rounds` round trips with `tracer` on (its filters already set by the caller)."""
    with open_device(bdf, backend="legacy") as vd:
        intx = vd.intx(policy)
        view = vd.device.bar(0).mmap().cast("I")
        (TRACING / "current_tracer").write_text(tracer)
        (TRACING / "tracing_on").write_text("1")
        for _ in range(rounds):
            view[0x60 // 4] = 1
            intx.wait()
            view[0x64 // 4] = 1
            intx.unmask()
        (TRACING / "tracing_on").write_text("0")
        view.release()


def config_accesses(bdf: str, policy: str, rounds: int = 200) -> float:
    """Config-space accesses per round trip, counted with the function tracer on the
    platform's accessors (type-1 cycles on this q35 guest, ECAM where MMCONFIG is used),
    whether they come from pci_check_and_*_intx or from a VFIO config-region write."""
    available = set((TRACING / "available_filter_functions").read_text().split())
    candidates = ("pci_conf1_read", "pci_conf1_write", "pci_mmcfg_read", "pci_mmcfg_write")
    funcs = [f for f in candidates if f in available]
    if not funcs:
        raise RuntimeError("no PCI config accessor to trace in this kernel")
    (TRACING / "tracing_on").write_text("0")
    (TRACING / "current_tracer").write_text("nop")
    (TRACING / "set_ftrace_filter").write_text(" ".join(funcs) + "\n")
    assert set((TRACING / "set_ftrace_filter").read_text().split()) == set(funcs)
    (TRACING / "trace").write_text("")
    traced_round_trips(bdf, policy, rounds, "function")
    lines = [x for x in (TRACING / "trace").read_text().splitlines() if not x.startswith("#")]
    (TRACING / "current_tracer").write_text("nop")
    (TRACING / "set_ftrace_filter").write_text("\n")
    return len(lines) / rounds


# The kernel's side of one round trip: the hard-irq handler that masks, the unmask ioctl's
# handler, and (policy "state" at device level) the config-space write through the core.
KERNEL_FUNCS = {
    "mask": ("vfiokit_intx_handler", "vfio_intx_handler"),
    "unmask": ("vfiokit_intx_unmask", "__vfio_pci_intx_unmask"),
    "config_write": ("vfio_pci_core_write",),
}
_GRAPH_LINE = re.compile(r"([\d.]+) us\s+\|\s+(\w+)(?:\s*\[\w+\])?\(\);")


def kernel_costs(bdf: str, policy: str, rounds: int = 300) -> dict[str, float | None]:
    """Median time (µs) the kernel spends per call in each step, from the function_graph
    tracer at depth 1 (its own overhead included: compare modes, not absolutes)."""
    available = set((TRACING / "available_filter_functions").read_text().split())
    wanted = {f: step for step, fs in KERNEL_FUNCS.items() for f in fs if f in available}
    (TRACING / "tracing_on").write_text("0")
    (TRACING / "current_tracer").write_text("nop")
    (TRACING / "set_graph_function").write_text(" ".join(wanted) + "\n")
    (TRACING / "max_graph_depth").write_text("1")
    (TRACING / "trace").write_text("")
    traced_round_trips(bdf, policy, rounds, "function_graph")
    times: dict[str, list[float]] = {step: [] for step in KERNEL_FUNCS}
    for line in (TRACING / "trace").read_text().splitlines():
        m = _GRAPH_LINE.search(line)
        if m and m.group(2) in wanted:
            times[wanted[m.group(2)]].append(float(m.group(1)))
    (TRACING / "current_tracer").write_text("nop")
    (TRACING / "set_graph_function").write_text("\n")
    (TRACING / "max_graph_depth").write_text("0")
    return {step: (statistics.median(v) if v else None) for step, v in times.items()}


def case(name: str, bdf: str, driver: str, shared: bool, policy: str = "kernel",
         stdlib: bool = False, adaptive: bool = False) -> None:  # fmt: skip
    """policy "state": read vfiokit-pci's state, unmask at the device (config write) or the
    line (ioctl); "kernel": one SET_IRQS UNMASK, the kernel picks. Driver uio_pci_generic:
    bound with adaptive_intx as `adaptive` says, the irqcontrol write (no traces)."""
    if THREADED:
        name += " [threadirqs]"
    iface = os.listdir(f"/sys/bus/pci/devices/{NIC}/net")[0]
    subprocess.run(["ip", "link", "set", iface, "up" if shared else "down"], check=True)
    uio = driver == "uio_pci_generic"
    mode = (
        ("uio-config" if policy == "config" else "uio")
        if uio
        else ("state" if policy == "state" else "ioctl")
    )
    if uio:
        UIO_ADAPTIVE.write_text("1" if adaptive else "0")
    cfg: float | None = None
    kernel: dict[str, float | None] = {}
    try:
        with h.bound(bdf, driver):
            if uio:
                py = [uio_python_loop(bdf, policy) for _ in range(RUNS)]
            else:
                py = [python_loop(bdf, policy) for _ in range(RUNS)]
            floor = floor_comparison(bdf) if stdlib else None
            c = [c_loop(bdf, mode) for _ in range(RUNS)]
            if not uio:
                cfg = config_accesses(bdf, policy)
                kernel = kernel_costs(bdf, policy)
    finally:
        subprocess.run(["ip", "link", "set", iface, "down"], check=True)
        if uio:
            UIO_ADAPTIVE.write_text("0")

    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(json.dumps({
        "case": name, "driver": driver, "device": bdf, "shared": shared, "policy": policy,
        "python": {k: med(py, k) for k in ("rate", "p50_us", "p99_us")},
        "python_floor": floor,
        "c": {k: med(c, k) for k in ("rate", "p50_us", "p99_us")},
        "threaded": THREADED,
        "python_unmasks": {k: py[-1][k] for k in ("line", "device", "kernel")},
        "c_unmasks": {k: c[-1][k] for k in ("line", "device")},
        "config_accesses_per_irq": cfg,
        "kernel_us": kernel,
    }), flush=True)  # fmt: skip


def main() -> None:
    nointxmask = Path("/sys/module/vfio_pci/parameters/nointxmask").read_text().strip() == "Y"
    ko = Path(os.environ["VFIOKIT_KERNEL_OUT"]) / "vfiokit_pci.ko"
    if not Path("/sys/module/vfiokit_pci").exists():
        subprocess.run(["insmod", str(ko)], check=True)
    if nointxmask:
        case("stock vfio-pci, nointxmask, alone (line)", ALONE, "vfio-pci", False)
        return
    case("vfiokit-pci alone (line), unmask ioctl", ALONE, "vfiokit-pci", False,
         stdlib=not THREADED)  # fmt: skip
    case("vfiokit-pci alone (line), state + unmask", ALONE, "vfiokit-pci", False, "state")
    case("vfiokit-pci shared (device), unmask ioctl", SHARED, "vfiokit-pci", True)
    if not THREADED:
        case("vfiokit-pci shared (device), state + config write", SHARED, "vfiokit-pci", True,
             "state")  # fmt: skip
    case("stock vfio-pci alone (device)", ALONE, "vfio-pci", False)
    case("stock vfio-pci shared (device)", SHARED, "vfio-pci", True)
    case("uio_pci_generic adaptive alone (line)", ALONE, "uio_pci_generic", False,
         adaptive=True)  # fmt: skip
    case("uio_pci_generic adaptive shared (device)", SHARED, "uio_pci_generic", True,
         adaptive=True)  # fmt: skip
    case("stock uio_pci_generic alone (device), config write", ALONE, "uio_pci_generic", False,
         "config")  # fmt: skip


if __name__ == "__main__":
    main()
