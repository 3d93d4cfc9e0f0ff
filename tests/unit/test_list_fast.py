"""`vfiokit list` without typer (vfiokit/cli/listing.py) is the same command as with it: the
same options, the same arguments for what it accepts, the same output, errors and exit
codes; whatever it declines goes to typer."""

from __future__ import annotations

import pytest
import typer

from fakesys import FakeSys
from unit import scenarios
from vfiokit.binding import HostState
from vfiokit.cli import errors, listing, main, typer_main

# Command lines the fast path takes, spelled as users do.
ACCEPTED = [
    ["list"],
    ["list", "--json"],
    ["--debug", "list"],
    ["list", "--tree"],
    ["list", "--tree", "--json"],
    ["list", "--class", "network", "--json"],
    ["list", "--class", "0200"],
    ["list", "--vendor", "8086", "--driver", "vfio_pci"],
    ["list", "--driver", "none", "--group", "7"],
    ["list", "--group", "1", "--vendor", "intel", "--class", "storage", "--json"],
    ["list", "--class", "netwrk"],  # an error, reported alike
    ["list", "--tree", "--class", "network", "--json"],  # an error, reported alike
]
# ... and those it leaves to typer (help, typos, other spellings, other verbs).
DECLINED = [
    [], ["-h"], ["--help"], ["--version"], ["list", "-h"], ["list", "--help"],
    ["list", "--bogus"], ["list", "extra"], ["list", "--class"], ["list", "--class", "--json"],
    ["list", "--class=network"], ["list", "--json", "--json"], ["list", "--debug"],
    ["--debug", "--debug", "list"], ["--json", "list"], ["show", "00:02.0"], ["doctor"],
    ["list", "--", "--json"],
]  # fmt: skip


@pytest.fixture
def host(fake: FakeSys, monkeypatch: pytest.MonkeyPatch) -> FakeSys:
    scenarios.non_viable_group(fake)
    monkeypatch.setenv("VFIOKIT_SYSROOT", str(fake.root))
    monkeypatch.setattr(HostState, "read", classmethod(lambda cls: HostState({}, {})))
    monkeypatch.setattr(errors, "DEBUG", False)
    return fake


def _list_command() -> typer.main.TyperCommand:
    group = typer.main.get_command(typer_main.make_app(["list"]))
    return group.commands["list"]  # type: ignore[attr-defined,no-any-return]


def test_same_options_as_typer() -> None:
    params = {p.opts[0]: p for p in _list_command().params}
    assert set(params) == set(listing.VALUE_OPTIONS) | set(listing.FLAG_OPTIONS)
    for opt, name in listing.VALUE_OPTIONS.items():
        assert (params[opt].name, params[opt].is_flag) == (name, False)  # type: ignore[attr-defined]
    for opt, name in listing.FLAG_OPTIONS.items():
        assert (params[opt].name, params[opt].is_flag) == (name, True)  # type: ignore[attr-defined]
    root = typer.main.get_command(typer_main.make_app(["list"]))
    flags = {p.opts[0]: p.name for p in root.params if getattr(p, "is_flag", False)}
    assert set(listing.ROOT_FLAGS.items()) <= set(flags.items())


@pytest.mark.parametrize("args", ACCEPTED, ids=" ".join)
def test_same_arguments_as_typer(host: FakeSys, monkeypatch: pytest.MonkeyPatch,
                                 args: list[str]) -> None:  # fmt: skip
    calls: list[dict[str, object]] = []
    monkeypatch.setattr(listing, "run", lambda **kw: calls.append({**kw, "debug": errors.DEBUG}))
    for entry in (main, typer_main.main):
        errors.DEBUG = False
        with pytest.raises(SystemExit) as info:
            entry(list(args))
        assert info.value.code == 0
    fast_call, typer_call = calls
    assert fast_call == typer_call
    parsed = listing.parse(list(args))
    assert parsed is not None and parsed == fast_call


@pytest.mark.parametrize("args", ACCEPTED, ids=" ".join)
def test_same_output_as_typer(host: FakeSys, capsys: pytest.CaptureFixture[str],
                              args: list[str]) -> None:  # fmt: skip
    results = []
    for entry in (main, typer_main.main):
        with pytest.raises(SystemExit) as info:
            entry(list(args))
        out = capsys.readouterr()
        results.append((info.value.code, out.out, out.err))
    assert results[0] == results[1]
    assert results[0][1] or results[0][2]  # it printed something


def test_the_fast_path_ran(host: FakeSys, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_typer(args: list[str]) -> None:
        raise AssertionError("typer ran")

    monkeypatch.setattr(typer_main, "main", no_typer)
    for args in ACCEPTED:
        with pytest.raises(SystemExit):
            main(list(args))


@pytest.mark.parametrize("args", DECLINED, ids=lambda a: " ".join(a) or "(none)")
def test_declined_goes_to_typer(args: list[str]) -> None:
    assert listing.parse(list(args)) is None


def test_completion_goes_to_typer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_VFIOKIT_COMPLETE", "complete_bash")
    assert listing.parse(["list"]) is None


def test_broken_pipe_exits_1(host: FakeSys, monkeypatch: pytest.MonkeyPatch) -> None:
    def gone(**kw: object) -> None:
        raise BrokenPipeError

    monkeypatch.setattr(listing, "run", gone)
    monkeypatch.setattr("sys.stdout", open("/dev/null", "w"))  # noqa: SIM115
    assert listing.fast(["list"]) == 1
