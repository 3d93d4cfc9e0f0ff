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
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(" ".join(sorted(sys.modules)), file=sys.stderr)
"""

# What no read-only verb may load: the binder and the other verbs' code, rich (typer's, for
# --help only). psutil is the in-use scan's, which `list` and `doctor` run.
NEVER = {"vfiokit.binding.binder", "vfiokit.cli.bind_cmds", "vfiokit.cli.assign_cmds",
         "rich"}  # fmt: skip


def modules(fake: FakeSys, *args: str) -> set[str]:
    res = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                         env={"VFIOKIT_SYSROOT": str(fake.root), "PATH": "/usr/bin:/bin"},
                         check=False)  # fmt: skip
    return set(res.stderr.strip().splitlines()[-1].split())


@pytest.mark.parametrize(
    ("args", "also_never"),
    [
        (
            ["list"],
            {"vfiokit.doctor", "vfiokit.topology", "vfiokit.intx", "vfiokit.binding.assign"},
        ),
        (["list", "--json"], {"vfiokit.doctor", "vfiokit.binding.assign"}),
        (["list", "--tree"], {"vfiokit.doctor", "vfiokit.binding.assign"}),
        (["doctor"], {"vfiokit.binding.inuse", "vfiokit.binding.assign"}),
        (["show", "03:00.0"], {"vfiokit.doctor", "vfiokit.binding.inuse"}),  # assign: its record
    ],
)
def test_read_only_verbs_import_little(fake: FakeSys, args: list[str],
                                       also_never: set[str]) -> None:  # fmt: skip
    scenarios.alone_in_group(fake)
    loaded = modules(fake, *args)
    assert "vfiokit.cli.inspect_cmds" in loaded  # it did run
    assert (NEVER | also_never) & loaded == set()


def test_help_still_lists_every_verb(fake: FakeSys) -> None:
    from vfiokit.cli import VERBS

    res = subprocess.run([sys.executable, "-m", "vfiokit", "--help"], capture_output=True,
                         text=True, env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"},
                         check=False)  # fmt: skip
    assert res.returncode == 0
    listed = [v for v in VERBS if f" {v} " in res.stdout]
    assert listed == list(VERBS)
