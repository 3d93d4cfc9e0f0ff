"""Shell completion: PCI addresses from the (fake) sysfs, user and group names, and bash's
colons (COMP_WORDBREAKS splits `0000:03:00.0` into five words)."""

import grp
import pwd
import subprocess
import sys
from types import SimpleNamespace

import pytest

from fakesys import FakeSys
from unit import scenarios
from vfiokit.cli import complete


@pytest.fixture
def host(fake: FakeSys, monkeypatch: pytest.MonkeyPatch) -> FakeSys:
    monkeypatch.setenv("VFIOKIT_SYSROOT", str(fake.root))
    scenarios.non_viable_group(fake)  # 0000:00:1c.0, 0000:00:1b.0, 0000:02:00.0
    fake.add_pci("0001:00:00.0", **scenarios.NIC)
    return fake


@pytest.mark.parametrize(
    ("incomplete", "expected"),
    [
        ("", ["0000:00:1b.0", "0000:00:1c.0", "0000:02:00.0", "0001:00:00.0"]),
        ("0000:00", ["0000:00:1b.0", "0000:00:1c.0"]),
        ("0001", ["0001:00:00.0"]),
        ("02", ["02:00.0"]),  # the short form, for domain 0000 only
        ("00:1c", ["00:1c.0"]),
        ("zz", []),
    ],
)
def test_pci_addresses(host: FakeSys, incomplete: str, expected: list[str]) -> None:
    assert complete.pci_addresses(incomplete) == expected


def test_users_and_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    people = [SimpleNamespace(pw_name=n) for n in ("root", "alice", "albert", "alice")]
    teams = [SimpleNamespace(gr_name=n) for n in ("kvm", "kmem", "video")]
    monkeypatch.setattr(pwd, "getpwall", lambda: people)
    monkeypatch.setattr(grp, "getgrall", lambda: teams)
    assert complete.users("al") == ["albert", "alice"]
    assert complete.users("") == ["albert", "alice", "root"]
    assert complete.groups("k") == ["kmem", "kvm"]


@pytest.mark.parametrize(
    ("words", "cword", "joined", "at"),
    [
        (["vfiokit", "show", "0000", ":", "03"], 4, ["vfiokit", "show", "0000:03"], 2),
        (["vfiokit", "show", "0000", ":"], 3, ["vfiokit", "show", "0000:"], 2),
        (["vfiokit", "bind", "03", ":", "00.0"], 5, ["vfiokit", "bind", "03:00.0"], 3),
        (["vfiokit", "bind", "03", ":", "00.0", "04"], 5, ["vfiokit", "bind", "03:00.0", "04"], 3),
        (["vfiokit", "sh"], 1, ["vfiokit", "sh"], 1),
    ],
)
def test_join_colon_words(words: list[str], cword: int, joined: list[str], at: int) -> None:
    assert complete.join_colon_words(words, cword) == (joined, at)


def test_after_last_colon() -> None:
    assert complete.after_last_colon(["0000:03:00.0"], "0000:0") == ["03:00.0"]
    assert complete.after_last_colon(["03:00.0"], "03") == ["03:00.0"]
    assert complete.after_last_colon(["root"], "") == ["root"]


def _complete(fake: FakeSys, env: dict[str, str]) -> list[str]:
    res = subprocess.run(
        [sys.executable, "-m", "vfiokit"],
        env={"VFIOKIT_SYSROOT": str(fake.root), "_VFIOKIT_COMPLETE": "", **env},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def test_bash_completes_addresses_across_colons(host: FakeSys) -> None:
    # bash has split `vfiokit show 0000:00:1` at the colons; it replaces the text after
    # the last one, so that is what comes back.
    words = "vfiokit show 0000 : 00 : 1"
    got = _complete(host, {"_VFIOKIT_COMPLETE": "complete_bash",
                           "COMP_WORDS": words, "COMP_CWORD": "6"})  # fmt: skip
    assert got == ["1b.0", "1c.0"]
    got = _complete(host, {"_VFIOKIT_COMPLETE": "complete_bash",
                           "COMP_WORDS": "vfiokit sh", "COMP_CWORD": "1"})  # fmt: skip
    assert got == ["show"]


def test_zsh_and_fish_get_whole_addresses(host: FakeSys) -> None:
    fish = _complete(host, {"_VFIOKIT_COMPLETE": "complete_fish",
                            "_TYPER_COMPLETE_FISH_ACTION": "get-args",
                            "_TYPER_COMPLETE_ARGS": "vfiokit unbind 0001"})  # fmt: skip
    assert fish == ["0001:00:00.0"]
    zsh = _complete(host, {"_VFIOKIT_COMPLETE": "complete_zsh",
                           "_TYPER_COMPLETE_ARGS": "vfiokit doctor 02"})  # fmt: skip
    assert "02\\\\:00.0" in " ".join(zsh)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_scripts_for_every_shell(fake: FakeSys, shell: str) -> None:
    script = " ".join(_complete(fake, {"_VFIOKIT_COMPLETE": f"source_{shell}"}))
    assert "_VFIOKIT_COMPLETE=complete_" + shell in script


def test_show_completion_is_on(fake: FakeSys) -> None:
    env = {"VFIOKIT_SYSROOT": str(fake.root)}
    res = subprocess.run([sys.executable, "-m", "vfiokit", "--help"], capture_output=True,
                         text=True, check=False, env=env)  # fmt: skip
    assert "--install-completion" in res.stdout and "--show-completion" in res.stdout


def test_install_completion_writes_to_home(fake: FakeSys, tmp_path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {"VFIOKIT_SYSROOT": str(fake.root), "HOME": str(home),
           "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}  # fmt: skip
    res = subprocess.run([sys.executable, "-m", "vfiokit", "--install-completion", "bash"],
                         capture_output=True, text=True, check=False, env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    script = home / ".bash_completions" / "vfiokit.sh"
    assert "_VFIOKIT_COMPLETE=complete_bash" in script.read_text()
    assert str(script) in (home / ".bashrc").read_text()
