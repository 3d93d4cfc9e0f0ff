"""The parsers of /proc/interrupts, /sys/kernel/irq/<N>/actions and pci.ids."""

import os
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vfiokit import intx, names

# Read from the test-bed guest (q35, 1 vCPU) and a 2-CPU host.
PROC_1CPU = (
    "           CPU0       \n"
    + """\
  0:         58  IR-IO-APIC   2-edge      timer
 20:          2  IR-IO-APIC  20-fasteoi   eth0, vfio-intx(0000:00:04.0), vfio-intx(0000:00:08.0)
 26:       1383  IR-PCI-MSIX-0000:00:1a.0   1-edge      virtio0-requests
NMI:          0   Non-maskable interrupts
ERR:          0
"""
)
PROC_2CPU = (
    "           CPU0       CPU1       \n"
    + """\
 24:          1          0  IO-APIC   5-edge      ACPI:Ged
 27:          0          0  IO-APIC  22-fasteoi
LOC:      49071      52288   Local timer interrupts
"""
)


def test_proc_interrupts() -> None:
    p = intx.parse_proc_interrupts(PROC_1CPU)
    assert sorted(p) == [0, 20, 26]
    line = p[20]
    assert line.counts == (2,) and line.chip == "IR-IO-APIC" and line.hwirq_type == "20-fasteoi"
    assert line.actions == ("eth0", "vfio-intx(0000:00:04.0)", "vfio-intx(0000:00:08.0)")
    q = intx.parse_proc_interrupts(PROC_2CPU)
    assert q[24].total == 1 and q[24].actions == ("ACPI:Ged",)
    assert q[27].actions == ()


def test_actions_and_vfio_names() -> None:
    assert intx.parse_actions("eth0,vfio-intx(0000:00:04.0)\n") == (
        "eth0",
        "vfio-intx(0000:00:04.0)",
    )
    assert intx.parse_actions("") == ()
    assert intx.vfio_handler_device("vfio-intx(0000:00:04.0)") == "0000:00:04.0"
    assert intx.vfio_handler_device("vfiokit-intx(0000:00:06.0)") == "0000:00:06.0"
    assert intx.vfio_handler_device("eth0") is None


PCI_IDS = """# comment
8086  Intel Corporation
\t100e  82540EM Gigabit Ethernet Controller
\t\t8086 001e  PRO/1000 MT Desktop Adapter
1234  Technical Corp.
\t11e8  QEMU edu device
zzzz  broken line
C 02  Network controller
\t00  Ethernet controller
"""


def test_pci_ids() -> None:
    find = names.find_in_pci_ids
    assert find(PCI_IDS, 0x8086, 0x100E) == (
        "Intel Corporation",
        "82540EM Gigabit Ethernet Controller",
    )
    assert find(PCI_IDS, 0x1234, 0x11E8) == ("Technical Corp.", "QEMU edu device")
    assert find(PCI_IDS, 0x1234, None) == ("Technical Corp.", None)
    assert find(PCI_IDS, 0x8086, 0x11E8) == ("Intel Corporation", None)  # another vendor's
    assert find(PCI_IDS, 0x8086, 0x0001) == ("Intel Corporation", None)  # subsystem line
    assert find(PCI_IDS, 0xABCD, 0x0000) == (None, None)


@given(st.text(max_size=2000))
def test_proc_interrupts_never_raises(text: str) -> None:
    for irq, line in intx.parse_proc_interrupts(text).items():
        assert irq >= 0 and all(c >= 0 for c in line.counts)


@given(
    st.lists(st.text(alphabet=st.characters(blacklist_characters=",\n"), max_size=12), max_size=6)
)
def test_actions_roundtrip(handlers: list[str]) -> None:
    cleaned = [h.strip() for h in handlers if h.strip()]
    assert intx.parse_actions(",".join(handlers)) == tuple(cleaned)


@given(st.text(max_size=2000), st.integers(0, 0xFFFF), st.none() | st.integers(0, 0xFFFF))
def test_pci_ids_never_raises(text: str, vendor: int, device: int | None) -> None:
    v, d = names.find_in_pci_ids(text, vendor, device)
    assert d is None or v is not None  # a device name only under its vendor


def _indexed_lookup(text: str, vendor: int, device: int | None) -> tuple[str | None, str | None]:
    """The lookup as it was (every vendor indexed by one regex pass): the reference."""
    found = [(int(m.group(1), 16), m.group(2).strip(), m.end())
             for m in re.finditer(r"^([0-9a-f]{4})  (.+)$", text, re.M)]  # fmt: skip
    index: dict[int, tuple[str, int, int]] = {}
    for i, (v, name, start) in enumerate(found):
        index.setdefault(v, (name, start, found[i + 1][2] if i + 1 < len(found) else len(text)))
    if vendor not in index:
        return None, None
    name, start, end = index[vendor]
    if device is None:
        return name, None
    d = re.compile(rf"^\t{device:04x}  (.+)$", re.M).search(text, start, end)
    return name, (d.group(1).strip() if d else None)


_IDS_LINE = st.sampled_from(["8086  Intel", "\t100e  NIC", "1234  Tech", "\t11e8  edu",
                             "\t\t8086 0001  sub", "# c", "C 02  Net", "\t00  Eth", "1234  ",
                             "8086  Again", "\t100e  ", "zz", "", "\t8086  dev"])  # fmt: skip


@given(st.lists(_IDS_LINE, max_size=30), st.sampled_from([0x8086, 0x1234, 0x100E, 0xABCD]),
       st.none() | st.sampled_from([0x100E, 0x11E8, 0x8086, 0x0001, 0x0000]))  # fmt: skip
def test_pci_ids_lookup_is_the_indexed_one(lines: list[str], vendor: int,
                                           device: int | None) -> None:  # fmt: skip
    text = "\n".join(lines) + "\n"
    assert names.find_in_pci_ids(text, vendor, device) == _indexed_lookup(text, vendor, device)


def test_pci_ids_lookup_on_debians_file() -> None:
    path = next((p for p in names.PCI_IDS_PATHS if os.path.exists(p)), None)
    if path is None:
        pytest.skip("no pci.ids on this machine")
    text = names._pci_ids_text(path)
    for vendor, device in ((0x8086, 0x100E), (0x1AF4, 0x1041), (0x10EC, 0x8169), (0xFFFF, 0)):
        assert names.find_in_pci_ids(text, vendor, device) == _indexed_lookup(text, vendor,
                                                                              device)  # fmt: skip
