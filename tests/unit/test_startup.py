"""Each verb imports only what it needs: `vfiokit list` must start as fast as it can (issue
#15: 2.87 s against dpdk-devbind.py's 1.98 s in the test bed's guest, mostly imports)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fakesys import FakeSys
from unit import scenarios

PROBE = """
import sys
from vfiokit.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(code, " ".join(sorted(sys.modules)), file=sys.stderr)
"""

# What no read-only verb may load: the binder and the other verbs' code, rich (typer's, for
# --help only). psutil is the in-use scan's, which `list` and `doctor` run.
NEVER = {"vfiokit.binding.binder", "vfiokit.cli.bind_cmds", "vfiokit.cli.assign_cmds",
         "rich"}  # fmt: skip


def modules(fake: FakeSys, *args: str) -> set[str]:
    res = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                         env={"VFIOKIT_SYSROOT": str(fake.root), "PATH": "/usr/bin:/bin"},
                         check=False)  # fmt: skip
    code, *loaded = res.stderr.strip().splitlines()[-1].split()
    # It ran: output, no usage error (2) or crash (doctor's verdict is its exit code).
    assert res.stdout and code not in ("1", "2") and "Traceback" not in res.stderr, res.stderr
    return set(loaded)


# `list` with a plain command line runs without typer (vfiokit/cli/listing.py): typer's
# import alone took 2.9 s of 5.6 s in the guest.
NO_TYPER = {"typer", "vfiokit.cli.typer_main", "vfiokit.cli.inspect_cmds"}


@pytest.mark.parametrize(
    ("args", "ran", "also_never"),
    [
        (
            ["list"],
            "vfiokit.cli.listing",
            {"vfiokit.doctor", "vfiokit.topology", "vfiokit.intx", "vfiokit.binding.assign",
             "difflib", *NO_TYPER},
        ),
        (["list", "--json", "--class", "network"], "vfiokit.cli.listing",
         {"vfiokit.doctor", "vfiokit.binding.assign", *NO_TYPER}),
        (["--debug", "list", "--tree"], "vfiokit.cli.listing",
         {"vfiokit.doctor", "vfiokit.binding.assign", *NO_TYPER}),
        # What the fast path declines still runs, through typer, and loads no more.
        (["list", "--class=network"], "vfiokit.cli.inspect_cmds",
         {"vfiokit.doctor", "vfiokit.binding.assign"}),
        (["doctor"], "vfiokit.cli.inspect_cmds",
         {"vfiokit.binding.inuse", "vfiokit.binding.assign"}),
        (["show", "03:00.0"], "vfiokit.cli.inspect_cmds",
         {"vfiokit.doctor", "vfiokit.binding.inuse"}),  # assign: its record
    ],
)  # fmt: skip
def test_read_only_verbs_import_little(fake: FakeSys, args: list[str], ran: str,
                                       also_never: set[str]) -> None:  # fmt: skip
    scenarios.alone_in_group(fake)
    loaded = modules(fake, *args)
    assert ran in loaded  # it did run
    assert (NEVER | also_never) & loaded == set()


def test_help_still_lists_every_verb(fake: FakeSys) -> None:
    from vfiokit.cli import VERBS

    res = subprocess.run([sys.executable, "-m", "vfiokit", "--help"], capture_output=True,
                         text=True, env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"},
                         check=False)  # fmt: skip
    assert res.returncode == 0
    listed = [v for v in VERBS if f" {v} " in res.stdout]
    assert listed == list(VERBS)
