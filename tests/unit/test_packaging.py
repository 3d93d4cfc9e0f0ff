"""pyproject.toml: dependency floors that exclude versions known not to work."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_typer_floor_excludes_broken_releases() -> None:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    typer = next(Requirement(d) for d in deps if d.startswith("typer"))
    # 0.12.0-0.12.3: "Type not yet supported: str | None"; 0.12.4-0.15.3 with click >= 8.2:
    # boolean flags parse as set (checked with typer 0.12.4 + click 8.5.1).
    for broken in ("0.12.0", "0.12.3", "0.12.4", "0.15.3"):
        assert not typer.specifier.contains(broken), broken
    for good in ("0.15.4", "0.16.0", "0.28.0"):
        assert typer.specifier.contains(good), good


def test_the_package_ships_its_types() -> None:
    """PEP 561: py.typed is in the package and in its package data."""
    data = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in data["vfiokit"]
    assert (PYPROJECT.parent / "vfiokit" / "py.typed").exists()
