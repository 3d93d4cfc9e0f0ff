"""Turn the benchmark's JSON lines (bench/intx_bench.py, bench/list_bench.py,
bench/nvme_bench.py) into intx.json and markdown tables."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path


def _us(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


NVME_TITLE = (
    "NVMe 4 KiB random reads, QD1: kernel nvme driver vs vfiokit NVMe driver, both from Python"
)


def nvme_table(r: dict) -> list[str]:
    """The markdown lines for bench/nvme_bench.py's record: a title, one row per driver
    (the kernel's first, the reference of the ratio column), a note on how it was run."""
    k, v = r["kernel"], r["vfiokit"]
    rows = [
        ("kernel nvme driver (O_DIRECT `os.preadv` of the block device)", k),
        (f"vfiokit NVMe driver (vfio-pci, {r['backend']}, `Nvme.read_into`)", v),
    ]
    lines = [
        f"{NVME_TITLE}:",
        "",
        "| driver | k IOPS | vs kernel | p50 µs | p99 µs |",
        "|---|---|---|---|---|",
    ]
    for name, x in rows:
        lines.append(
            f"| {name} | {x['rate'] / 1000:.2f} | {x['rate'] / k['rate']:.2f}x | "
            f"{x['p50_us']:.1f} | {x['p99_us']:.1f} |"
        )
    lines += [
        "",
        f"{r['io_bytes']} bytes per read at aligned offsets from a seeded PRNG (seed "
        f"{r['seed']}, the same for both), one read at a time, on {r['device']} "
        f"({r['device_bytes'] // (1 << 20)} MiB); medians of {r['runs']} runs of "
        f"{r['seconds']:g} s. The vfiokit driver woke on its I/O vector "
        f"{r['vfiokit_wakeups_per_read']:.2f} times per read.",
    ]
    return lines


# #13's targets, C loop, same run: (what, row, reference row, minimum ratio). Each is
# checked for the primary handlers and again for the boots with threadirqs, whose rows
# carry the suffix " [threadirqs]".
TARGETS = [
    ("vfiokit-pci alone >= 1.10x stock device-level alone",
     "vfiokit-pci alone (line), unmask ioctl", "stock vfio-pci alone (device)", 1.10),
    ("vfiokit-pci alone >= 1.0x stock nointxmask (line, exclusive)",
     "vfiokit-pci alone (line), unmask ioctl", "stock vfio-pci, nointxmask, alone (line)", 1.0),
    ("vfiokit-pci shared >= 1.05x stock shared",
     "vfiokit-pci shared (device), unmask ioctl", "stock vfio-pci shared (device)", 1.05),
    ("state path >= 0.97x the plain unmask at line level",
     "vfiokit-pci alone (line), state + unmask", "vfiokit-pci alone (line), unmask ioctl", 0.97),
    ("uio_pci_generic adaptive alone vs stock (report only)",
     "uio_pci_generic adaptive alone (line)",
     "stock uio_pci_generic alone (device), config write", 0.0),
]  # fmt: skip
THREADED = " [threadirqs]"


def targets_table(by: dict[str, dict]) -> list[str]:
    """One line per target and mode whose two rows were measured: the C loops' ratio and
    whether it is met; a target without a minimum only reports its ratio."""
    lines = ["| target | mode | C k/s | reference C k/s | ratio | |", "|---|---|---|---|---|---|"]
    for what, row, ref, minimum in TARGETS:
        for mode, suffix in (("primary", ""), ("threadirqs", THREADED)):
            a = by.get(row + suffix)
            b = by.get(ref + suffix)
            if a is None or b is None:
                continue
            ratio = a["c"]["rate"] / b["c"]["rate"]
            verdict = "-" if not minimum else "met" if ratio >= minimum else "**missed**"
            lines.append(
                f"| {what} | {mode} | {a['c']['rate'] / 1000:.1f} | "
                f"{b['c']['rate'] / 1000:.1f} | {ratio:.2f}x | {verdict} |"
            )
    return lines


def main(src: str, out_json: str, out_md: str) -> None:
    lines_in = [json.loads(x) for x in Path(src).read_text().splitlines() if x.strip()]
    rows = [r for r in lines_in if "case" in r]
    listing = next((r["list"] for r in lines_in if "list" in r), None)
    nvme = next((r["nvme"] for r in lines_in if "nvme" in r), None)
    meta = {"host": platform.node(), "kernel_host": platform.release(),
            "accelerator": "TCG (QEMU 7.2, 1 vCPU)", "cases": rows, "list": listing,
            "nvme": nvme}  # fmt: skip
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
        ref = by.get("stock vfio-pci alone (device)" + (THREADED if r.get("threaded") else ""))
        ref = ref or base
        rel = f"{c['rate'] / ref['c']['rate']:.2f}x" if ref else "-"
        cfg = r["config_accesses_per_irq"]
        lines.append(
            f"| {r['case']} | {py['rate'] / 1000:.1f} | {c['rate'] / 1000:.1f} | "
            f"{py['rate'] / c['rate']:.2f} | {rel} | {c['p50_us']:.1f} | {c['p99_us']:.1f} | "
            f"{'-' if cfg is None else f'{cfg:.1f}'} | {_us(k.get('mask'))} | "
            f"{_us(k.get('unmask'))} | {_us(k.get('config_write'))} |"
        )
    targets = targets_table(by)
    if len(targets) > 2:
        lines += ["", "Targets (#13), C loop, same run:", "", *targets]
    raw = next((r for r in rows if r.get("python_floor")), None)
    if raw:
        f = raw["python_floor"]
        lines += [
            "",
            f"Python floor ({raw['case']}): a stdlib-only loop (os.eventfd_read, fcntl.ioctl "
            f"on the same fds) makes {f['stdlib_rate'] / 1000:.1f} k/s; beside it, in 0.25 s "
            f"bursts taking turns, the vfiokit API's `interrupts()` loop makes "
            f"{f['iter_rate'] / 1000:.1f} k/s = **{f['iter_vs_stdlib']:.2f}x** of it and its "
            f"wait()/unmask() calls {f['calls_rate'] / 1000:.1f} k/s = "
            f"{f['calls_vs_stdlib']:.2f}x (medians of the rounds' ratios).",
        ]
    if listing:
        lines += [
            "",
            f"Listing PCI devices (median of {listing['runs']} runs, a new process each): "
            f"`vfiokit list` {listing['vfiokit_list_s'] * 1000:.0f} ms (the venv's "
            f"interpreter), {listing.get('vfiokit_list_system_python_s', 0) * 1000:.0f} ms "
            f"(Debian's python3); `dpdk-devbind.py --status` "
            f"{listing['dpdk_devbind_status_s'] * 1000:.0f} ms (Debian's python3).",
        ]
    if nvme:
        lines += ["", *nvme_table(nvme)]
    Path(out_md).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
