import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fakesys
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))  # vmlib

from fakesys import FakeSys


@pytest.fixture
def fake(tmp_path: Path) -> FakeSys:
    return FakeSys(tmp_path / "root")
