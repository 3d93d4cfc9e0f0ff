"""Turn bench/intx_bench.py's JSON lines into intx.json and a markdown table."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path


def main(src: str, out_json: str, out_md: str) -> None:
    rows = [json.loads(x) for x in Path(src).read_text().splitlines() if x.strip()]
    meta = {"host": platform.node(), "kernel_host": platform.release(),
            "accelerator": "TCG (QEMU 7.2, 1 vCPU)", "cases": rows}  # fmt: skip
    Path(out_json).write_text(json.dumps(meta, indent=2) + "\n")
    by = {r["case"]: r for r in rows}
    base = by.get("stock vfio-pci alone (device)")
    lines = [
        "| case | Python k/s | C k/s | Python/C | C vs stock alone | p50 C µs | p99 C µs "
        "| cfg accesses/irq |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        py, c = r["python"], r["c"]
        rel = f"{c['rate'] / base['c']['rate']:.2f}x" if base else "-"
        lines.append(
            f"| {r['case']} | {py['rate'] / 1000:.1f} | {c['rate'] / 1000:.1f} | "
            f"{py['rate'] / c['rate']:.2f} | {rel} | {c['p50_us']:.1f} | {c['p99_us']:.1f} | "
            f"{r['config_accesses_per_irq']:.1f} |"
        )
    Path(out_md).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
