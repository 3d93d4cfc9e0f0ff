"""The CLI on fake hosts: output, --json, filters, errors and exit codes."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fakesys import FakeSys
from unit import scenarios
from vfiokit.binding import HostState
from vfiokit.cli import app
from vfiokit.errors import ExitCode


@pytest.fixture
def run(fake: FakeSys, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VFIOKIT_SYSROOT", str(fake.root))
    # The fake host's mounts and interfaces, not this machine's (psutil).
    monkeypatch.setattr(HostState, "read", classmethod(lambda cls: HostState({}, {})))
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, list(args))

    return invoke


def test_list_table_and_json(fake: FakeSys, run) -> None:
    scenarios.non_viable_group(fake)
    res = run("list")
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert lines[0].split()[:4] == ["ADDRESS", "IDS", "CLASS", "DRIVER"]
    assert any(line.startswith("0000:00:1b.0") and "snd_hda_intel" in line for line in lines)
    data = json.loads(run("list", "--json").stdout)["devices"]
    assert {d["address"] for d in data} == {"0000:00:1c.0", "0000:00:1b.0", "0000:02:00.0"}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--class", "network"], {"0000:02:00.0"}),
        (["--class", "0403"], {"0000:00:1b.0"}),
        (["--driver", "pcieport"], {"0000:00:1c.0"}),
        (["--vendor", "8086"], {"0000:00:1c.0", "0000:00:1b.0", "0000:02:00.0"}),
        (["--vendor", "10ec"], set()),
        (["--group", "2"], {"0000:00:1c.0", "0000:00:1b.0", "0000:02:00.0"}),
    ],
)
def test_list_filters(fake: FakeSys, run, args: list[str], expected: set[str]) -> None:
    scenarios.non_viable_group(fake)
    res = run("list", "--json", *args)
    assert res.exit_code == 0
    assert {d["address"] for d in json.loads(res.stdout)["devices"]} == expected


def test_show(fake: FakeSys, run) -> None:
    bdf = scenarios.shared_line_no_masking(fake)
    res = run("show", "05:00.0")
    assert res.exit_code == 0
    assert "intx masking     no (kernel quirk" in res.stdout
    assert "devices      0000:05:00.0, 0000:06:00.0" in res.stdout
    data = json.loads(run("show", bdf, "--json").stdout)
    assert data["intx_line"]["shared"] is True
    assert data["iommu_group_detail"]["group"] == "9"


def test_bad_address_is_one_line_usage_error(fake: FakeSys, run) -> None:
    scenarios.no_iommu(fake)
    res = run("show", "00:04")
    assert res.exit_code == ExitCode.USAGE
    assert res.stdout == ""
    assert res.stderr.splitlines()[0] == "error: invalid PCI address '00:04'"
    assert "Traceback" not in res.stderr


def test_missing_device_json_error(fake: FakeSys, run) -> None:
    scenarios.no_iommu(fake)
    res = run("show", "00:05.0", "--json")
    assert res.exit_code == ExitCode.NOT_FOUND
    err = json.loads(res.stdout)
    assert err["error"] == "NotFound" and err["exit_code"] == 3 and err["remedy"]


def test_doctor_exit_codes(fake: FakeSys, run) -> None:
    bdf = scenarios.shared_line_no_masking(fake)
    res = run("doctor", bdf)
    assert res.exit_code == ExitCode.CHECK_FAILED
    assert "[FAIL] INTx line" in res.stdout and "remedy:" in res.stdout
    data = json.loads(run("doctor", bdf, "--json").stdout)
    assert data["exit_code"] == 10
    assert {c["id"] for c in data["checks"]} >= {"iommu", "group", "intx", "memlock"}


def test_doctor_unknown_device(fake: FakeSys, run) -> None:
    scenarios.no_iommu(fake)
    assert run("doctor", "00:09.0").exit_code == ExitCode.NOT_FOUND


def test_python_dash_m(fake: FakeSys) -> None:
    scenarios.no_iommu(fake)
    env = {"VFIOKIT_SYSROOT": str(fake.root), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "vfiokit", "show", "zz"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == ExitCode.USAGE
    assert out.stderr.startswith("error: invalid PCI address 'zz'")
