"""Draw bench/results/intx.json as a PNG: round-trip rate per case (C loop and Python
driver side by side) and the C loop's p50/p99 latency. Needs matplotlib (the `bench`
extra: pip install -e '.[bench]'; bench/run installs it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(src: str, out_png: str) -> None:
    meta = json.loads(Path(src).read_text())
    cases = meta["cases"]
    names = [c["case"].replace(", ", ",\n").replace(" (", "\n(") for c in cases]
    c_rate = [c["c"]["rate"] / 1000 for c in cases]
    py_rate = [c["python"]["rate"] / 1000 for c in cases]
    p50 = [c["c"]["p50_us"] for c in cases]
    p99 = [c["c"]["p99_us"] for c in cases]
    x = range(len(cases))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(13, 0.8 * len(cases)), 9), sharex=True)
    w = 0.38
    top.bar([i - w / 2 for i in x], c_rate, w, label="C loop")
    top.bar([i + w / 2 for i in x], py_rate, w, label="Python driver")
    stock = next((c["c"]["rate"] / 1000 for c in cases
                  if c["case"] == "stock vfio-pci alone (device)"), None)  # fmt: skip
    if stock:
        top.axhline(stock, color="grey", linestyle=":", label="stock vfio-pci alone (C)")
    top.set_ylabel("INTx round trips (k/s)")
    top.legend()
    top.set_title(f"INTx round trips by masking mode, edu in the test-bed VM "
                  f"({meta['accelerator']})")  # fmt: skip
    bottom.bar([i - w / 2 for i in x], p50, w, label="p50")
    bottom.bar([i + w / 2 for i in x], p99, w, label="p99")
    bottom.set_ylabel("C loop latency (µs)")
    bottom.legend()
    bottom.set_xticks(list(x), names, fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)


if __name__ == "__main__":
    main(*sys.argv[1:3])
