"""Turn the benchmark's JSON lines (bench/intx_bench.py, bench/list_bench.py) into
intx.json and a markdown table."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path


def _us(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def main(src: str, out_json: str, out_md: str) -> None:
    lines_in = [json.loads(x) for x in Path(src).read_text().splitlines() if x.strip()]
    rows = [r for r in lines_in if "case" in r]
    listing = next((r["list"] for r in lines_in if "list" in r), None)
    meta = {"host": platform.node(), "kernel_host": platform.release(),
            "accelerator": "TCG (QEMU 7.2, 1 vCPU)", "cases": rows, "list": listing}  # fmt: skip
    Path(out_json).write_text(json.dumps(meta, indent=2) + "\n")
    by = {r["case"]: r for r in rows}
    base = by.get("stock vfio-pci alone (device)")
    lines = [
        "| case | Python k/s | C k/s | Python/C | C vs stock alone | p50 C µs | p99 C µs "
        "| cfg accesses/irq | kernel mask µs | kernel unmask µs | cfg write µs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        py, c = r["python"], r["c"]
        k = r.get("kernel_us") or {}
        rel = f"{c['rate'] / base['c']['rate']:.2f}x" if base else "-"
        lines.append(
            f"| {r['case']} | {py['rate'] / 1000:.1f} | {c['rate'] / 1000:.1f} | "
            f"{py['rate'] / c['rate']:.2f} | {rel} | {c['p50_us']:.1f} | {c['p99_us']:.1f} | "
            f"{r['config_accesses_per_irq']:.1f} | {_us(k.get('mask'))} | "
            f"{_us(k.get('unmask'))} | {_us(k.get('config_write'))} |"
        )
    raw = next((r for r in rows if r.get("python_stdlib")), None)
    if raw:
        lines += [
            "",
            f"Python floor ({raw['case']}): a stdlib-only loop (os.eventfd_read, fcntl.ioctl "
            f"on the same fds) makes {raw['python_stdlib']['rate'] / 1000:.1f} k/s = "
            f"{raw['python_stdlib']['rate'] / raw['c']['rate']:.2f} of the C loop; the "
            f"vfiokit API {raw['python']['rate'] / 1000:.1f} k/s = "
            f"{raw['python']['rate'] / raw['python_stdlib']['rate']:.2f} of that floor.",
        ]
    if listing:
        lines += [
            "",
            f"Listing PCI devices (median of {listing['runs']} runs, a new process each): "
            f"`vfiokit list` {listing['vfiokit_list_s'] * 1000:.0f} ms, "
            f"`dpdk-devbind.py --status` {listing['dpdk_devbind_status_s'] * 1000:.0f} ms.",
        ]
    Path(out_md).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
