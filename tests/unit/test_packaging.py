"""pyproject.toml: dependency floors that exclude versions known not to work, and one
version source."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

import vfiokit

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"


def test_typer_floor_excludes_broken_releases() -> None:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    typer = next(Requirement(d) for d in deps if d.startswith("typer"))
    # 0.12.0-0.12.3: "Type not yet supported: str | None"; 0.12.4-0.15.3 with click >= 8.2:
    # boolean flags parse as set (checked with typer 0.12.4 + click 8.5.1).
    for broken in ("0.12.0", "0.12.3", "0.12.4", "0.15.3"):
        assert not typer.specifier.contains(broken), broken
    for good in ("0.15.4", "0.16.0", "0.28.0"):
        assert typer.specifier.contains(good), good


def _version() -> str:
    """The literal in vfiokit/_version.py, read without importing (what setuptools does)."""
    tree = ast.parse((ROOT / "vfiokit/_version.py").read_text())
    (assign,) = [n for n in tree.body if isinstance(n, ast.Assign)]
    assert isinstance(assign.value, ast.Constant)
    return assign.value.value


def test_one_version_source() -> None:
    project = tomllib.loads(PYPROJECT.read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "vfiokit._version.__version__"
    assert vfiokit.__version__ == _version()
    # The installed metadata (.venv's editable install) says the same; scripts/setup re-makes
    # the venv when _version.py changes.
    assert importlib.metadata.version("vfiokit") == _version()


def test_the_copies_of_the_version_match() -> None:
    """The module's own version (C and DKMS cannot read Python) and the docs that name it."""
    v = _version()
    dkms = (ROOT / "kmod/vfiokit_pci/dkms.conf").read_text()
    assert re.search(r'^PACKAGE_VERSION="([^"]+)"', dkms, re.M)[1] == v  # type: ignore[index]
    main_c = (ROOT / "kmod/vfiokit_pci/main.c").read_text()
    assert re.search(r'#define VFIOKIT_PCI_VERSION "([^"]+)"', main_c)[1] == v  # type: ignore[index]
    named = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        named += [(doc.name, m) for m in re.findall(r"vfiokit-pci[-/](\d+\.\d+\.\S*?\d)\b", text)]
        named += [(doc.name, m) for m in re.findall(r"shows version (\d+\.\d+\.\d+)", text)]
        named += [(doc.name, m) for m in re.findall(r"vfiokit-(\d+\.\d+\.\d+)[-.]", text)]
    assert named, "the docs name the version somewhere (the DKMS commands)"
    assert [n for n in named if n[1] != v] == []


def test_the_package_ships_its_types() -> None:
    """PEP 561: py.typed is in the package and in its package data."""
    data = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in data["vfiokit"]
    assert (PYPROJECT.parent / "vfiokit" / "py.typed").exists()
