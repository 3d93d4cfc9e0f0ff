#!/usr/bin/env python3
"""NVMe 4 KiB random reads at queue depth 1, from Python: through the kernel's nvme driver
(O_DIRECT preadv of /dev/nvmeXn1) and through vfiokit's NVMe driver on vfio-pci, in the
same guest, on the same controller (the topology's "nvme"), at the same LBAs.
Runs inside the test-bed VM (bench/run starts it); prints one JSON object.

Both loops read into one page-aligned buffer made before the clock starts (an anonymous
mmap for O_DIRECT, a DmaBuffer for vfiokit), one synchronous read at a time, at 4 KiB
aligned offsets drawn from a seeded PRNG. Each runs BENCH_SECONDS seconds, BENCH_RUNS
times; the record holds the medians. The controller is bound to the kernel's nvme driver
before and, on every path, after.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import mmap
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECONDS = float(os.environ.get("BENCH_SECONDS", "2"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
BACKEND = os.environ.get("BENCH_NVME_BACKEND", "auto")
IO_BYTES = 4096
SEED = 14  # issue #14
OFFSETS = 1 << 16  # the loops cycle through this many offsets


def random_offsets(seed: int, device_bytes: int, count: int, io_bytes: int = IO_BYTES) -> list[int]:
    """`count` byte offsets, multiples of `io_bytes`, each read of `io_bytes` inside the
    device; the same for the same arguments (both drivers read the same places)."""
    slots = device_bytes // io_bytes
    if slots < 1:
        raise ValueError(f"a {device_bytes}-byte device holds no {io_bytes}-byte read")
    rng = random.Random(seed)
    return [rng.randrange(slots) * io_bytes for _ in range(count)]


def summary(latencies: list[float], took: float) -> dict[str, float]:
    """Reads per second over `took` seconds, and the p50/p99 latency in µs, of one run
    (the same percentiles as bench/intx_bench.py)."""
    lat = sorted(latencies)
    return {"rate": len(lat) / took, "p50_us": lat[len(lat) // 2] * 1e6,
            "p99_us": lat[len(lat) * 99 // 100] * 1e6}  # fmt: skip


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in ("rate", "p50_us", "p99_us")}


def timed_loop(call: Callable[[int], object], items: list[int]) -> tuple[list[float], float]:
    """Call `call` on `items` in turn, round and round, for SECONDS: each call's latency
    and the whole loop's length, in seconds."""
    at = itertools.cycle(items)
    lat: list[float] = []
    clock = time.perf_counter
    end = clock() + SECONDS
    start = clock()
    while clock() < end:
        item = next(at)
        t0 = clock()
        call(item)
        lat.append(clock() - t0)
    return lat, clock() - start


def kernel_loop(dev: str, offsets: list[int]) -> dict[str, float]:
    """Synchronous O_DIRECT 4 KiB reads of the block device, one at a time."""
    fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
    try:
        with mmap.mmap(-1, IO_BYTES) as buf:  # page-aligned, as O_DIRECT wants
            bufs = [buf]
            preadv = os.preadv
            short = [0]

            def read(off: int) -> None:
                short[0] += preadv(fd, bufs, off) != IO_BYTES

            lat, took = timed_loop(read, offsets)
    finally:
        os.close(fd)
    if short[0]:
        raise RuntimeError(f"{dev}: {short[0]} short O_DIRECT reads")
    return summary(lat, took)


def vfiokit_loops(
    bdf: str, offsets: list[int], device_bytes: int
) -> tuple[dict[str, float], str, float]:
    """RUNS runs of the same loop through vfiokit.drivers.nvme (the device bound to
    vfio-pci by the caller): the runs' medians, the backend and the I/O vector's wake-ups
    per read."""
    from vfiokit.drivers.nvme import Nvme
    from vfiokit.vfio import open_device

    with open_device(bdf, backend=BACKEND) as vd, Nvme(vd) as nvme:
        bs = nvme.namespace.block_size
        if nvme.namespace.size != device_bytes or IO_BYTES % bs:
            raise RuntimeError(
                f"{bdf}: namespace of {nvme.namespace.size} bytes in {bs}-byte blocks, "
                f"the kernel's block device has {device_bytes} bytes"
            )
        count = IO_BYTES // bs
        lbas = [off // bs for off in offsets]
        runs = []
        reads = 0
        with vd.dma_buffer(IO_BYTES) as buf:
            read_into = nvme.read_into
            before = nvme.interrupts[1]
            for _ in range(RUNS):
                lat, took = timed_loop(lambda lba: read_into(buf, lba, count), lbas)
                reads += len(lat)
                runs.append(summary(lat, took))
            wakeups = (nvme.interrupts[1] - before) / reads
        backend = str(vd.context.backend)
    return medians(runs), backend, wakeups


def device_bytes_of(dev: str) -> int:
    return int(Path(f"/sys/block/{os.path.basename(dev)}/size").read_text()) * 512


def refuse_outside_the_vm() -> None:
    """The VM tests' own check (tests/vm/conftest.py): this script rebinds a device."""
    spec = importlib.util.spec_from_file_location("vm_conftest", ROOT / "tests/vm/conftest.py")
    assert spec is not None and spec.loader is not None
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    ok, why = conftest.in_test_vm()
    if not ok:
        sys.exit(f"nvme_bench: refusing to run outside the test VM ({why}); bench/run starts it")


def main() -> None:
    refuse_outside_the_vm()
    # Imported here, not above: the unit tests import this file for its pure functions.
    sys.path[:0] = [str(ROOT / "tests" / "vm"), str(ROOT / "scripts")]
    from test_nvme import block_device  # the VM tests' wait for /dev/nvmeXn1

    import helpers as h
    from vmlib import qemu

    bdf = qemu.load().by_name("nvme").address
    h.bind(bdf, "nvme")
    try:
        dev = block_device(bdf)
        size = device_bytes_of(dev)
        offsets = random_offsets(SEED, size, OFFSETS)
        kernel = medians([kernel_loop(dev, offsets) for _ in range(RUNS)])
        with h.bound(bdf, "vfio-pci"):
            vfiokit, backend, wakeups = vfiokit_loops(bdf, offsets, size)
    finally:
        h.bind(bdf, "nvme")  # a no-op unless an error came between the binds
        block_device(bdf)
    print(json.dumps({"nvme": {
        "device": bdf, "io_bytes": IO_BYTES, "queue_depth": 1, "device_bytes": size,
        "seed": SEED, "seconds": SECONDS, "runs": RUNS, "backend": backend,
        "kernel": kernel, "vfiokit": vfiokit, "vfiokit_wakeups_per_read": wakeups,
    }}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
