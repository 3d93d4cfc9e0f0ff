"""Every ```python block of docs/api.md runs, in the guest, against the edu at 00:06.0."""

from __future__ import annotations

import re
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


def test_the_doc_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("n", range(len(BLOCKS)))
def test_example_runs(topology, n: int) -> None:
    dev = topology.by_name("edu_alone")
    with h.bound(dev.address, "vfiokit-pci"):
        exec(compile(BLOCKS[n], f"docs/api.md example {n + 1}", "exec"), {})
