#!/usr/bin/env python3
"""INTx round trips on an edu device, per masking mode, from Python and from C.
Runs inside the test-bed VM (bench/run starts it); prints one JSON object per case.

A round trip: raise at BAR0 0x60, wait for the eventfd, ack at 0x64, unmask. The C loop
(bench/intx_loop.c) makes exactly the syscalls the Python driver makes.
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
from vfiokit.vfio import open_device

ALONE, SHARED, NIC = "0000:00:06.0", "0000:00:04.0", "0000:00:0c.0"
SECONDS = float(os.environ.get("BENCH_SECONDS", "2"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
C_LOOP = os.environ["BENCH_C_LOOP"]
TRACING = Path("/sys/kernel/tracing")


def python_loop(bdf: str, policy: str) -> dict[str, float]:
    with open_device(bdf, backend="legacy") as vd:
        intx = vd.intx(policy)
        view = vd.device.bar(0).mmap().cast("I")
        lat: list[float] = []
        clock = time.perf_counter
        end = clock() + SECONDS
        start = clock()
        while clock() < end:
            t0 = clock()
            view[0x60 // 4] = 1
            intx.wait()
            view[0x64 // 4] = 1
            intx.unmask()
            lat.append(clock() - t0)
        took = clock() - start
        counts = dict(intx.counts)
        view.release()
    lat.sort()
    return {"rate": len(lat) / took, "p50_us": lat[len(lat) // 2] * 1e6,
            "p99_us": lat[len(lat) * 99 // 100] * 1e6, **counts}  # fmt: skip


def stdlib_loop(bdf: str) -> dict[str, float]:
    """The same round trip with the stdlib only (os.eventfd_read, fcntl.ioctl on the fds
    vfiokit opened): the floor for Python, to see what the API layers cost on top of it.
    Its timing loop repeats python_loop's on purpose: each loop is the code measured, and a
    shared helper would add a call per round trip to both."""
    import fcntl

    from vfiokit.vfio import uapi as U

    with open_device(bdf, backend="legacy") as vd:
        intx = vd.intx("kernel")
        efd, fd = intx.efds[0], vd.device.fd
        req = U.VFIO_DEVICE_SET_IRQS
        arg = U.vfio_irq_set.new(
            flags=U.VFIO_IRQ_SET_DATA_NONE | U.VFIO_IRQ_SET_ACTION_UNMASK,
            index=U.VFIO_PCI_INTX_IRQ_INDEX,
            start=0,
            count=1,
        ).to_bytes()
        view = vd.device.bar(0).mmap().cast("I")
        read, ioctl = os.eventfd_read, fcntl.ioctl
        lat: list[float] = []
        clock = time.perf_counter
        end = clock() + SECONDS
        start = clock()
        while clock() < end:
            t0 = clock()
            view[0x60 // 4] = 1
            read(efd)
            view[0x64 // 4] = 1
            ioctl(fd, req, arg)
            lat.append(clock() - t0)
        took = clock() - start
        view.release()
    lat.sort()
    return {"rate": len(lat) / took, "p50_us": lat[len(lat) // 2] * 1e6,
            "p99_us": lat[len(lat) * 99 // 100] * 1e6}  # fmt: skip


def c_loop(bdf: str, mode: str) -> dict[str, float]:
    out = subprocess.run([C_LOOP, bdf, h.group_of(bdf), str(SECONDS), mode],
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
         stdlib: bool = False) -> None:  # fmt: skip
    """policy "state": read vfiokit-pci's state, unmask at the device (config write) or the
    line (ioctl); "kernel": one SET_IRQS UNMASK, the kernel picks."""
    iface = os.listdir(f"/sys/bus/pci/devices/{NIC}/net")[0]
    subprocess.run(["ip", "link", "set", iface, "up" if shared else "down"], check=True)
    mode = "state" if policy == "state" else "ioctl"
    try:
        with h.bound(bdf, driver):
            py = [python_loop(bdf, policy) for _ in range(RUNS)]
            raw = [stdlib_loop(bdf) for _ in range(RUNS)] if stdlib else []
            c = [c_loop(bdf, mode) for _ in range(RUNS)]
            cfg = config_accesses(bdf, policy)
            kernel = kernel_costs(bdf, policy)
    finally:
        subprocess.run(["ip", "link", "set", iface, "down"], check=True)

    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(json.dumps({
        "case": name, "driver": driver, "device": bdf, "shared": shared, "policy": policy,
        "python": {k: med(py, k) for k in ("rate", "p50_us", "p99_us")},
        "python_stdlib": {k: med(raw, k) for k in ("rate", "p50_us", "p99_us")} if raw else None,
        "c": {k: med(c, k) for k in ("rate", "p50_us", "p99_us")},
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
    case("vfiokit-pci alone (line), unmask ioctl", ALONE, "vfiokit-pci", False, stdlib=True)
    case("vfiokit-pci alone (line), state + unmask", ALONE, "vfiokit-pci", False, "state")
    case("vfiokit-pci shared (device), unmask ioctl", SHARED, "vfiokit-pci", True)
    case("vfiokit-pci shared (device), state + config write", SHARED, "vfiokit-pci", True,
         "state")  # fmt: skip
    case("stock vfio-pci alone (device)", ALONE, "vfio-pci", False)
    case("stock vfio-pci shared (device)", SHARED, "vfio-pci", True)


if __name__ == "__main__":
    main()
