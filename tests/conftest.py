import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fakesys
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))  # vmlib

from fakesys import FakeSys


@pytest.fixture
def fake(tmp_path: Path) -> FakeSys:
    return FakeSys(tmp_path / "root")


@pytest.fixture
def cli(fake: FakeSys, monkeypatch: pytest.MonkeyPatch):
    """Run the CLI on the fake host: its sysfs tree, and no mounts or interfaces of this
    machine's (HostState reads those through psutil)."""
    from typer.testing import CliRunner

    from vfiokit.binding import HostState
    from vfiokit.cli import app

    monkeypatch.setenv("VFIOKIT_SYSROOT", str(fake.root))
    monkeypatch.setattr(HostState, "read", classmethod(lambda cls: HostState({}, {})))
    return lambda *args: CliRunner().invoke(app, list(args))
