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
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, which runs dpdk-devbind.py as installed


def timed(cmds: dict[str, tuple[list[str], dict[str, str]]]) -> dict[str, float]:
    """The median wall time of each command, the commands taking turns run by run (the
    guest's speed under TCG drifts within seconds; turns keep the comparison fair)."""
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(RUNS):
        for key, (cmd, env) in cmds.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, **env})
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    # The venv's site-packages, for vfiokit run by the system interpreter as pipx would.
    site = next(p for p in sys.path if p.endswith("site-packages"))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    medians = timed({
        "vfiokit_list_s": ([sys.executable, "-m", "vfiokit", "list"], {}),
        "dpdk_devbind_status_s": ([SYSTEM_PYTHON, DEVBIND, "--status"], {}),
        "vfiokit_list_system_python_s": ([SYSTEM_PYTHON, "-m", "vfiokit", "list"],
                                         {"PYTHONPATH": f"{repo}:{site}"}),
    })  # fmt: skip
    print(json.dumps({"list": {**medians, "runs": RUNS}}), flush=True)


if __name__ == "__main__":
    main()
