"""The boot unit `bind --persist` writes: ExecStart names a vfiokit that is still there at
boot (the entry point, not whichever interpreter happened to run), RequiresMountsFor= for
what is not on the root file system, refused from /tmp, a warning for a home directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fakesys import FakeSys, FakeSysfsKernel
from unit import scenarios
from vfiokit import SysRoot, Unsupported
from vfiokit.binding import HostState, persist
from vfiokit.binding.persist import UNIT, Launcher, launcher, unit_text
from vfiokit.cli import app


def exec_start(text: str) -> str:
    (line,) = [x for x in text.splitlines() if x.startswith("ExecStart=")]
    return line.removeprefix("ExecStart=")


def mounts_for(text: str) -> list[str]:
    lines = [x for x in text.splitlines() if x.startswith("RequiresMountsFor=")]
    assert len(lines) <= 1
    return lines[0].removeprefix("RequiresMountsFor=").split() if lines else []


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A pip install in a virtualenv: bin/vfiokit with `#!bin/python`, the package in lib.
    (tmp_path is under /tmp, which launcher() refuses: not for these tests.)"""
    monkeypatch.setattr(persist, "VOLATILE", ())
    venv = tmp_path / "opt/vfiokit"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin/python"
    python.write_text("")  # never run; not a link to this host's interpreter
    script = venv / "bin/vfiokit"
    script.write_text(f"#!{python}\nfrom vfiokit.cli import main\nmain()\n")
    script.chmod(0o755)
    pkg = venv / "lib/site-packages/vfiokit"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    return {"venv": str(venv), "python": str(python), "script": str(script), "pkg": str(pkg)}


def test_exec_start_is_the_entry_point_that_runs(install: dict[str, str]) -> None:
    launch = launcher(argv0=install["script"], executable="/elsewhere/python3",
                      package_dir=install["pkg"], which=lambda _n: None,
                      on_root_fs=lambda _p: True)  # fmt: skip
    text = unit_text(launch)
    assert exec_start(text) == f"{install['script']} apply-persisted %I"
    assert "/elsewhere" not in text and mounts_for(text) == []
    assert "DefaultDependencies=no" in text and launch.warnings == ()


def test_requires_mounts_for_what_is_not_on_the_root_fs(install: dict[str, str]) -> None:
    venv = install["venv"]
    launch = launcher(argv0=install["script"], package_dir=install["pkg"],
                      on_root_fs=lambda p: not p.startswith(venv))  # fmt: skip
    text = unit_text(launch)
    assert mounts_for(text) == [f"{venv}/bin", install["pkg"]]
    # in [Unit], where systemd reads it
    assert text.index("RequiresMountsFor=") < text.index("[Service]")


def test_python_m_uses_the_entry_point_on_path_of_the_same_interpreter(
    install: dict[str, str],
) -> None:
    common = dict(argv0="/x/pytest/__main__.py", package_dir=install["pkg"],
                  on_root_fs=lambda _p: True)  # fmt: skip
    same = launcher(executable=install["python"], which=lambda _n: install["script"], **common)
    assert same.command == (install["script"],)
    other = launcher(executable="/usr/bin/python3.11", which=lambda _n: install["script"],
                     **common)  # fmt: skip
    assert other.command == ("/usr/bin/python3.11", "-m", "vfiokit")
    alone = launcher(executable="/usr/bin/python3.11", which=lambda _n: None, **common)
    assert exec_start(unit_text(alone)) == "/usr/bin/python3.11 -m vfiokit apply-persisted %I"


def test_refused_from_tmp(tmp_path: Path) -> None:
    script = tmp_path / "venv/bin/vfiokit"
    script.parent.mkdir(parents=True)
    script.write_text(f"#!{sys.executable}\n")
    script.chmod(0o755)
    assert str(tmp_path).startswith("/tmp/")
    with pytest.raises(Unsupported, match="does not survive a reboot"):
        launcher(argv0=str(script), on_root_fs=lambda _p: True)
    with pytest.raises(Unsupported, match="/run/user/1000"):
        launcher(
            argv0="python",
            executable="/run/user/1000/venv/bin/python",
            which=lambda _n: None,
            package_dir="/usr/lib/python3/dist-packages/vfiokit",
        )


def test_home_directory_warns_and_is_mounted_first() -> None:
    launch = launcher(argv0="python", executable="/home/alice/venv/bin/python",
                      which=lambda _n: None, package_dir="/home/alice/src/vfiokit",
                      on_root_fs=lambda p: not p.startswith("/home/"))  # fmt: skip
    assert len(launch.warnings) == 1 and "home directory" in launch.warnings[0]
    text = unit_text(launch)
    assert exec_start(text) == "/home/alice/venv/bin/python -m vfiokit apply-persisted %I"
    assert mounts_for(text) == ["/home/alice/venv/bin", "/home/alice/src/vfiokit"]


def test_percent_escaped_and_spaces_refused() -> None:
    text = unit_text(Launcher(("/opt/a%b/bin/vfiokit",), ("/srv/a%b",)))
    assert exec_start(text) == "/opt/a%%b/bin/vfiokit apply-persisted %I"
    assert mounts_for(text) == ["/srv/a%%b"]
    with pytest.raises(Unsupported, match="space"):
        launcher(argv0="python", executable="/opt/my venv/bin/python", which=lambda _n: None,
                 package_dir="/opt/vfiokit")  # fmt: skip


def test_cli_persist_refused_before_anything_changes(
    fake: FakeSys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenarios.non_viable_group(fake)
    (fake.root / "sys/bus/pci/drivers/vfio-pci").mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("VFIOKIT_SYSROOT", str(fake.root))
    monkeypatch.setenv("VFIOKIT_JOURNAL", str(tmp_path / "journal"))
    kernel = FakeSysfsKernel(fake, native={"0000:02:00.0": "e1000e"})
    monkeypatch.setattr("vfiokit.binding.binder.SysfsWriter", lambda _s: kernel)
    monkeypatch.setattr("vfiokit.binding.binder.HostState.read",
                        classmethod(lambda cls: HostState({"/dev/vda1": "/"}, {})))  # fmt: skip
    script = tmp_path / "vfiokit"  # run as /tmp/.../vfiokit
    script.write_text(f"#!{sys.executable}\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(script), "bind"])
    res = CliRunner().invoke(app, ["bind", "02:00.0", "--driver", "vfio-pci", "--persist"])
    assert res.exit_code == 5 and "does not survive a reboot" in res.output
    assert SysRoot(fake.root).link_name("/sys/bus/pci/devices/0000:02:00.0/driver") == "e1000e"
    assert not (fake.root / "etc").exists() and not (tmp_path / "journal").exists()
    res = CliRunner().invoke(app, ["bind", "02:00.0", "--driver", "vfio-pci", "--persist",
                                   "--dry-run"])  # fmt: skip
    assert res.exit_code == 5  # --dry-run tells as well
    # From a stable install the unit names it.
    monkeypatch.setattr(persist, "VOLATILE", ())
    res = CliRunner().invoke(app, ["bind", "02:00.0", "--driver", "vfio-pci", "--persist"])
    assert res.exit_code == 0, res.output
    unit = (fake.root / UNIT.lstrip("/")).read_text()
    assert exec_start(unit) == f"{script} apply-persisted %I"
    assert os.access(script, os.X_OK)
