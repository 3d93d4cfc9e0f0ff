"""CLI conventions: --version, -h, usage errors as JSON under --json, help that says what
the code does, one way to print booleans and hex."""

from __future__ import annotations

import json
import re

import pytest

from fakesys import FakeSys
from unit import scenarios
from vfiokit import __version__
from vfiokit.cli import main
from vfiokit.errors import ExitCode


@pytest.fixture
def run(cli):
    return cli


def flat(text: str) -> str:
    """Help text without rich's box drawing and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_version(run) -> None:
    res = run("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"vfiokit {__version__}"


@pytest.mark.parametrize("args", [["-h"], ["list", "-h"], ["bind", "-h"]])
def test_h_is_help(run, args: list[str]) -> None:
    res = run(*args)
    assert res.exit_code == 0 and "Usage:" in res.stdout and "--help" in res.stdout


def test_click_usage_errors_are_json_under_json(fake: FakeSys, monkeypatch, capsys) -> None:
    monkeypatch.setenv("VFIOKIT_SYSROOT", str(fake.root))
    with pytest.raises(SystemExit) as info:
        main(["list", "--bogus", "--json"])
    assert info.value.code == ExitCode.USAGE
    err = json.loads(capsys.readouterr().out)
    assert err["exit_code"] == 2 and "--bogus" in err["message"]
    assert err["remedy"] == "vfiokit list --help"
    with pytest.raises(SystemExit) as info:
        main(["list", "--bogus"])
    out = capsys.readouterr()
    assert info.value.code == 2 and out.out == "" and "No such option" in out.err


def test_main_passes_exit_codes_through(fake: FakeSys, monkeypatch, capsys) -> None:
    scenarios.no_iommu(fake)
    monkeypatch.setenv("VFIOKIT_SYSROOT", str(fake.root))
    with pytest.raises(SystemExit) as info:
        main(["show", "00:09.0", "--json"])
    assert info.value.code == ExitCode.NOT_FOUND
    assert json.loads(capsys.readouterr().out)["error"] == "NotFound"


def test_restore_help_and_code_agree(run) -> None:
    helptext = flat(run("restore", "--help").stdout)
    assert "default: --all" not in helptext
    assert "or pass --all" in helptext
    res = run("restore")
    assert res.exit_code == ExitCode.USAGE and "--all" in res.stderr


def test_assign_help_says_what_changes(run) -> None:
    helptext = flat(run("assign", "--help").stdout)
    assert "--qemu and --libvirt alone change nothing" in helptext
    assert "udev rule" in helptext


def test_memlock_needs_user(fake: FakeSys, run) -> None:
    bdf = scenarios.alone_in_group(fake)
    res = run("assign", bdf, "--qemu", "--memlock", "4G")
    assert res.exit_code == ExitCode.USAGE and "needs --user" in res.stderr
    err = json.loads(run("assign", bdf, "--group", "kvm", "--memlock", "4G", "--json").stdout)
    assert err["exit_code"] == 2


def test_show_is_yes_no_and_hex(fake: FakeSys, run) -> None:
    scenarios.alone_in_group(fake)
    fake.add_irq(17, "", mask_device=1)
    out = run("show", "03:00.0").stdout
    assert "True" not in out and "False" not in out
    assert re.search(r"^revision +01$", out, re.M)
    assert re.search(r"^enabled +yes$", out, re.M)
    assert re.search(r"^msi +\[7c\] vectors=4, is_64bit=yes", out, re.M)
    assert re.search(r"^msi-x +\[8c\] table_size=5, table_bar=3, table_offset=0x2000", out, re.M)
    assert re.search(r"^  shared +no$", out, re.M)
    assert re.search(r"^  mask_device +yes$", out, re.M)


def test_address_errors_are_all_hex(run) -> None:
    res = run("show", "00:20.0")
    assert res.stderr.splitlines()[0] == "error: PCI device 0x20 out of range (0x0..0x1f)"
