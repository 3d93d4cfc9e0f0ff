"""Every JSON document the CLI prints is an object that starts with `schema` (docs/json.md)."""

import json

import pytest

from fakesys import FakeSys
from unit import scenarios
from vfiokit.cli.output import SCHEMA


@pytest.fixture
def run(cli):
    return cli


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["list", "--json"], "devices"),
        (["show", "03:00.0", "--json"], "address"),
        (["doctor", "--json"], "checks"),
        (["show", "1f:00.0", "--json"], "error"),  # no such device
        (["show", "zz", "--json"], "error"),  # not an address
        (["restore", "--json"], "error"),  # neither devices nor --all
        (["bind", "03:00.0", "--dry-run", "--driver", "vfio-pci", "--json"], "steps"),
        (["assign", "03:00.0", "--json"], "error"),  # nothing to do
    ],
)
def test_schema_first(fake: FakeSys, run, args: list[str], key: str) -> None:
    scenarios.alone_in_group(fake)
    doc = json.loads(run(*args).stdout)
    assert isinstance(doc, dict)
    assert next(iter(doc)) == "schema" and doc["schema"] == SCHEMA == 1
    assert key in doc


def test_list_devices_is_the_array_it_was(fake: FakeSys, run) -> None:
    bdf = scenarios.alone_in_group(fake)
    doc = json.loads(run("list", "--json").stdout)
    assert set(doc) == {"schema", "devices"}
    assert [d["address"] for d in doc["devices"]] == [bdf]
    assert {"in_use", "persisted", "ids", "class_name"} <= set(doc["devices"][0])
