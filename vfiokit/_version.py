"""The version of vfiokit: the one place it is written (pyproject.toml reads it from here,
setuptools' `attr:`; the kmod/ files and docs that repeat it are checked by
tests/unit/test_packaging.py)."""

__version__ = "0.1.0"
