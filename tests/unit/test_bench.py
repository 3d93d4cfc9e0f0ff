"""The benchmark's pure parts: bench/nvme_bench.py's read offsets and statistics, and the
NVMe table bench/report.py adds to intx.md (and the record it adds to intx.json)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


nvme_bench = load("nvme_bench")
report = load("report")

RECORD = {
    "device": "0000:00:19.0",
    "io_bytes": 4096,
    "queue_depth": 1,
    "device_bytes": 64 << 20,
    "seed": 14,
    "seconds": 2.0,
    "runs": 3,
    "backend": "iommufd",
    "kernel": {"rate": 8000.0, "p50_us": 110.0, "p99_us": 250.0},
    "vfiokit": {"rate": 4000.0, "p50_us": 230.0, "p99_us": 600.0},
    "vfiokit_wakeups_per_read": 1.0,
}


def test_offsets_are_aligned_inside_the_device_and_repeatable() -> None:
    size = (64 << 20) + 512  # a tail shorter than a read: never read
    offs = nvme_bench.random_offsets(7, size, 10_000)
    assert len(offs) == 10_000
    assert all(o % 4096 == 0 and 0 <= o <= size - 4096 - 512 for o in offs)
    assert offs == nvme_bench.random_offsets(7, size, 10_000)
    assert offs != nvme_bench.random_offsets(8, size, 10_000)
    assert len(set(offs)) > 7_000  # ~7490 of the 16384 slots expected: spread, not a few


def test_offsets_reach_both_ends_of_a_small_device() -> None:
    offs = nvme_bench.random_offsets(1, 4 * 4096, 200)
    assert set(offs) == {0, 4096, 8192, 12288}
    with pytest.raises(ValueError, match="no 4096-byte read"):
        nvme_bench.random_offsets(1, 4095, 1)


def test_summary_is_rate_and_percentiles_in_microseconds() -> None:
    lat = [i * 1e-6 for i in range(200, 0, -1)]  # 1..200 µs, unsorted
    s = nvme_bench.summary(lat, 0.5)
    assert s["rate"] == pytest.approx(400.0)
    assert s["p50_us"] == pytest.approx(101.0)
    assert s["p99_us"] == pytest.approx(199.0)
    assert nvme_bench.medians([s, {**s, "rate": 100.0}, {**s, "rate": 900.0}])["rate"] == 400.0


def test_nvme_table_has_the_kernel_as_reference() -> None:
    lines = report.nvme_table(RECORD)
    assert lines[0].startswith(
        "NVMe 4 KiB random reads, QD1: kernel nvme driver vs vfiokit NVMe driver"
    )
    rows = [x for x in lines if x.startswith("| ") and "driver |" not in x]
    assert len(rows) == 2
    kernel, vfiokit = ([c.strip() for c in r.strip("|").split("|")] for r in rows)
    assert kernel[0].startswith("kernel nvme driver") and kernel[1:] == [
        "8.00", "1.00x", "110.0", "250.0"
    ]  # fmt: skip
    assert "iommufd" in vfiokit[0] and vfiokit[1:] == ["4.00", "0.50x", "230.0", "600.0"]
    assert "medians of 3 runs of 2 s" in lines[-1] and "64 MiB" in lines[-1]


def test_report_adds_the_nvme_table_after_the_rest(tmp_path: Path) -> None:
    src = tmp_path / "intx.jsonl"
    listing = {"list": {"vfiokit_list_s": 0.2, "dpdk_devbind_status_s": 0.3, "runs": 5}}
    src.write_text(json.dumps(listing) + "\n" + json.dumps({"nvme": RECORD}) + "\n")
    report.main(str(src), str(tmp_path / "intx.json"), str(tmp_path / "intx.md"))
    md = (tmp_path / "intx.md").read_text()
    assert md.index("Listing PCI devices") < md.index(report.NVME_TITLE)
    assert json.loads((tmp_path / "intx.json").read_text())["nvme"] == RECORD

    src.write_text(json.dumps(listing) + "\n")  # no NVMe record: no table
    report.main(str(src), str(tmp_path / "intx.json"), str(tmp_path / "intx.md"))
    assert report.NVME_TITLE not in (tmp_path / "intx.md").read_text()
    assert json.loads((tmp_path / "intx.json").read_text())["nvme"] is None


def _row(case: str, c_rate: float, threaded: bool = False) -> dict:
    return {"case": case + (" [threadirqs]" if threaded else ""), "threaded": threaded,
            "python": {"rate": 1.0, "p50_us": 1.0, "p99_us": 1.0},
            "c": {"rate": c_rate, "p50_us": 1.0, "p99_us": 1.0},
            "config_accesses_per_irq": None, "kernel_us": {}}  # fmt: skip


def test_targets_table_judges_each_mode_against_its_own_reference() -> None:
    by = {r["case"]: r for r in [
        _row("vfiokit-pci alone (line), unmask ioctl", 110_000.0),
        _row("stock vfio-pci alone (device)", 100_000.0),
        _row("stock vfio-pci, nointxmask, alone (line)", 120_000.0),
        _row("vfiokit-pci alone (line), unmask ioctl", 50_000.0, threaded=True),
        _row("stock vfio-pci alone (device)", 40_000.0, threaded=True),
        _row("uio_pci_generic adaptive alone (line)", 30_000.0),
        _row("stock uio_pci_generic alone (device), config write", 20_000.0),
    ]}  # fmt: skip
    rows = [[c.strip() for c in x.strip("|").split("|")] for x in report.targets_table(by)[2:]]
    assert rows == [
        ["vfiokit-pci alone >= 1.10x stock device-level alone", "primary", "110.0", "100.0",
         "1.10x", "met"],
        ["vfiokit-pci alone >= 1.10x stock device-level alone", "threadirqs", "50.0", "40.0",
         "1.25x", "met"],
        # No threaded nointxmask run: that mode's line is left out, not judged against
        # the primary run.
        ["vfiokit-pci alone >= 1.0x stock nointxmask (line, exclusive)", "primary", "110.0",
         "120.0", "0.92x", "**missed**"],
        ["uio_pci_generic adaptive alone vs stock (report only)", "primary", "30.0", "20.0",
         "1.50x", "-"],
    ]  # fmt: skip
