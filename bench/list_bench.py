#!/usr/bin/env python3
"""`vfiokit list` against `dpdk-devbind.py --status` in the same guest: the median wall
time of BENCH_LIST_RUNS runs of each (a fresh process every time, as a user runs them).
Runs inside the test-bed VM (bench/run starts it); prints one JSON object."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

RUNS = int(os.environ.get("BENCH_LIST_RUNS", "5"))
DEVBIND = os.environ["BENCH_DPDK_DEVBIND"]


def timed(cmd: list[str]) -> float:
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    vfiokit = timed([sys.executable, "-m", "vfiokit", "list"])
    devbind = timed(["python3", DEVBIND, "--status"])
    print(json.dumps({"list": {"vfiokit_list_s": vfiokit, "dpdk_devbind_status_s": devbind,
                               "runs": RUNS}}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
