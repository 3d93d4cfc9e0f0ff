"""`vfiokit list` filters: what cannot match is exit 2 with the valid choices, on stderr or
as JSON; `vfio_pci` and `vfio-pci` are one driver."""

from __future__ import annotations

import json

import pytest

from fakesys import FakeSys
from unit import scenarios
from vfiokit.errors import ExitCode


@pytest.fixture
def run(cli):
    return cli


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--class", "netwrk"], "did you mean network"),
        (["--class", "serial"], "did you mean serial-bus"),
        (["--driver", "e1000"], "no PCI driver 'e1000'"),
        (["--group", "abc"], "not an IOMMU group number"),
        (["--group", "99"], "no IOMMU group 99"),
        (["--vendor", "intel"], "vendor names are unknown here"),
    ],
)
def test_bad_filters_are_usage_errors(fake: FakeSys, run, args: list[str], says: str) -> None:
    scenarios.non_viable_group(fake)
    res = run("list", *args)
    assert res.exit_code == ExitCode.USAGE
    assert res.stdout == ""
    assert says in res.stderr and "remedy:" in res.stderr
    err = json.loads(run("list", "--json", *args).stdout)
    assert err["exit_code"] == 2 and says in err["message"]


def test_errors_name_the_choices(fake: FakeSys, run) -> None:
    scenarios.non_viable_group(fake)
    assert "serial-bus" in run("list", "--class", "x").stderr
    assert "snd_hda_intel" in run("list", "--driver", "nope").stderr
    assert "the IOMMU groups here: 2" in run("list", "--group", "3").stderr


def test_vfio_pci_spelled_either_way(fake: FakeSys, run) -> None:
    bdf = scenarios.alone_in_group(fake)
    fake.bind(bdf, "vfio-pci")
    for spelling in ("vfio-pci", "vfio_pci"):
        res = run("list", "--json", "--driver", spelling)
        assert res.exit_code == 0
        assert [d["address"] for d in json.loads(res.stdout)["devices"]] == [bdf]
    assert run("list", "--driver", "vfiokit-pci").exit_code == 0  # not loaded, still valid


def test_vendor_by_name_with_pci_ids(fake: FakeSys, run) -> None:
    scenarios.non_viable_group(fake)
    fake.write("usr/share/misc/pci.ids", "8086  Intel Corporation\n\t10d3  82574L\n")
    res = run("list", "--json", "--vendor", "intel")
    assert res.exit_code == 0 and len(json.loads(res.stdout)["devices"]) == 3
    bad = run("list", "--vendor", "realtek")
    assert bad.exit_code == 2 and "Intel Corporation (8086)" in bad.stderr


def test_group_ranges(fake: FakeSys, run) -> None:
    scenarios.alone_in_group(fake)
    for g in ("1", "2", "3", "9"):
        (fake.root / f"sys/kernel/iommu_groups/{g}/devices").mkdir(parents=True)
    assert "1-3, 7, 9" in run("list", "--group", "5").stderr
