"""`vfiokit list` without typer (vfiokit/cli/listing.py) is the same command as with it: the
same options, the same arguments for what it accepts, the same output, errors and exit
codes; whatever it declines goes to typer."""

from __future__ import annotations

import io
import os
import subprocess
import sys

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
    ["list", "--class", ""],
    ["list", "--vendor", "list"],
    ["list", "--driver", "tree"],
    ["list", "--group", "é"],
    ["--debug", "list", "--class", "netwrk"],
    ["--debug", "list", "--json", "--group", "99"],
]
# ... and those it leaves to typer (help, typos, other spellings, other verbs).
DECLINED = [
    [], ["-h"], ["--help"], ["--version"], ["list", "-h"], ["list", "--help"],
    ["list", "--bogus"], ["list", "extra"], ["list", "--class"], ["list", "--class", "--json"],
    ["list", "--class=network"], ["list", "--json", "--json"], ["list", "--debug"],
    ["--debug", "--debug", "list"], ["--json", "list"], ["show", "00:02.0"], ["doctor"],
    ["list", "--", "--json"], ["list", "--class", "-"], ["list", "--class", "--"],
    ["list", "--class", "--tree"], ["list", "--group", "-1"], ["list", "--tree", "--tree"],
    ["list", "--json", "--debug"], ["list", "--jso"], ["--debug"],
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


def _shape(p: object) -> tuple[object, ...]:
    """What of a click option the fast parser relies on."""
    return tuple(getattr(p, a) for a in ("name", "is_flag", "opts", "secondary_opts",
                                         "envvar", "callback", "multiple", "nargs", "default",
                                         "is_eager"))  # fmt: skip


def test_same_options_as_typer() -> None:
    params = {p.opts[0]: p for p in _list_command().params}
    assert set(params) == set(listing.VALUE_OPTIONS) | set(listing.FLAG_OPTIONS)
    for opt, name in listing.VALUE_OPTIONS.items():
        assert _shape(params[opt]) == (name, False, [opt], [], None, None, False, 1, None, False)
    for opt, name in listing.FLAG_OPTIONS.items():
        assert _shape(params[opt]) == (name, True, [opt], [], None, None, False, 1, False, False)
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
        # --debug: the same traceback but for the frames of the way in
        kept = ("error:", "  remedy:", "hint:", "vfiokit.")
        err = [ln for ln in out.err.splitlines() if ln.startswith(kept)]
        results.append((info.value.code, out.out, err, "Traceback" in out.err))
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
def test_declined_goes_to_typer(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    assert listing.parse(list(args)) is None
    went: list[list[str]] = []
    monkeypatch.setattr(listing, "run", lambda **kw: pytest.fail("the fast path ran"))
    monkeypatch.setattr(typer_main, "main", went.append)
    main(list(args))
    assert went == [args]


def test_ctrl_c_exits_130_quietly(host: FakeSys, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    def interrupted(**kw: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(listing, "run", interrupted)
    for entry in (main, typer_main.main):  # typer's behaviour is the reference
        with pytest.raises(SystemExit) as info:
            entry(["list"])
        assert info.value.code == 130
        assert capsys.readouterr() == ("", "")


class _Bytes(io.BytesIO):
    tty = False

    def isatty(self) -> bool:
        return self.tty


class _Stream(io.TextIOWrapper):
    """A terminal or a pipe, as click sees it (it may re-wrap the buffer of an ASCII one)."""

    def __init__(self, encoding: str, tty: bool) -> None:
        buf = _Bytes()
        buf.tty = tty
        super().__init__(buf, encoding=encoding)


@pytest.mark.parametrize("tty", [False, True])
@pytest.mark.parametrize("encoding", ["utf-8", "ascii"])
@pytest.mark.parametrize("text", ["plain", "Gesellschaft für Systemautomation, IceQ X²",
                                  "red \x1b[31mname\x1b[0m here", ""])  # fmt: skip
def test_echo_writes_what_typer_echo_writes(monkeypatch: pytest.MonkeyPatch, tty: bool,
                                            encoding: str, text: str) -> None:  # fmt: skip
    written = []
    for echo in (listing.echo, typer.echo):
        stream = _Stream(encoding, tty)
        monkeypatch.setattr("sys.stdout", stream)
        echo(text)
        written.append(stream.buffer.getvalue())  # flushed: nothing left in the wrapper
    assert written[0] == written[1]
    assert written[0]


def test_a_closed_pipe_exits_1_quietly(tmp_path, host: FakeSys) -> None:
    """`vfiokit list | true` with Python's buffered stdout: exit 1 and nothing on stderr."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    r, w = os.pipe()
    os.close(r)
    code = "from vfiokit.cli import main; main(['list'])"
    res = subprocess.run([sys.executable, "-c", code], stdout=w, stderr=subprocess.PIPE,
                         env=env, check=False)  # fmt: skip
    os.close(w)
    assert res.returncode == 1
    assert b"Error" not in res.stderr and b"Exception" not in res.stderr, res.stderr


def test_completion_goes_to_typer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_VFIOKIT_COMPLETE", "complete_bash")
    assert listing.parse(["list"]) is None


def test_broken_pipe_exits_1(host: FakeSys, monkeypatch: pytest.MonkeyPatch) -> None:
    def gone(**kw: object) -> None:
        raise BrokenPipeError

    monkeypatch.setattr(listing, "run", gone)
    monkeypatch.setattr("sys.stdout", open("/dev/null", "w"))  # noqa: SIM115
    assert listing.fast(["list"]) == 1
