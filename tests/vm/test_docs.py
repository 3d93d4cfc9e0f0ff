"""Every ```python block of docs/api.md runs, in the guest, against the edu at 00:06.0 (and
the multi-device example against the edus at 00:04.0 and 00:08.0; the NVMe example against
the NVMe controller at 00:19.0, on vfio-pci, given back to nvme afterwards; the uio example
against the edu at 00:06.0 on uio_pci_generic, masked adaptively)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import helpers as h
from test_adaptive import nointxmask

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)

pytestmark = [
    pytest.mark.skipif(nointxmask(), reason="this boot forces vfio_pci.nointxmask=1"),
    pytest.mark.usefixtures("vfiokit_modules"),
]


@contextlib.contextmanager
def adaptive_uio() -> Iterator[None]:
    param = Path("/sys/module/uio_pci_generic/parameters/adaptive_intx")
    param.write_text("1")
    try:
        yield
    finally:
        param.write_text("0")


def test_the_doc_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("n", range(len(BLOCKS)))
def test_example_runs(topology, n: int) -> None:
    edus = [topology.by_name(n).address for n in ("edu_alone", "edu_a", "edu_b")]
    uio = "UioDevice(" in BLOCKS[n]  # the uio example: edu_alone on uio_pci_generic
    with contextlib.ExitStack() as stack:
        if uio:
            stack.enter_context(adaptive_uio())
        for i, bdf in enumerate(edus):
            stack.enter_context(h.bound(bdf, "uio_pci_generic" if uio and i == 0 else
                                        "vfiokit-pci"))  # fmt: skip
        if "Nvme(" in BLOCKS[n]:
            stack.enter_context(h.bound(topology.by_name("nvme").address, "vfio-pci"))
        exec(compile(BLOCKS[n], f"docs/api.md example {n + 1}", "exec"), {})
