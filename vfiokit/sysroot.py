"""The one door to the host's kernel interfaces: sysfs, procfs and /dev.

Everything vfiokit reads about the host goes through a :class:`SysRoot`. Its ``root`` is
``/`` on a real machine; tests point it at a fake tree built in a temporary folder (see
tests/fakesys.py). The environment variable ``VFIOKIT_SYSROOT`` does the same for the CLI.
Reading never needs root; missing files read as ``None`` where absence is meaningful.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import from_oserror


class SysRoot:
    def __init__(self, root: str | os.PathLike[str] | None = None):
        self.root = Path(root if root is not None else os.environ.get("VFIOKIT_SYSROOT", "/"))

    @property
    def is_host(self) -> bool:
        """True when this is the real machine's root (pyudev and the hwdb apply)."""
        return self.root.resolve() == Path("/")

    def path(self, rel: str) -> Path:
        """The path of ``rel`` (an absolute host path such as ``/sys/bus/pci``) in this root."""
        return self.root / rel.lstrip("/")

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    def read(self, rel: str) -> str | None:
        """The stripped text of a file, or None if it does not exist or cannot be read."""
        try:
            return self.path(rel).read_text(errors="replace").strip()
        except (FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError):
            return None
        except OSError as exc:  # e.g. EIO/ENODEV from a sysfs show() method
            if exc.errno in (5, 19, 22, 25, 95):
                return None
            raise from_oserror(exc, "reading") from exc

    def read_bytes(self, rel: str, limit: int = 4096) -> bytes | None:
        try:
            with self.path(rel).open("rb") as f:
                return f.read(limit)
        except (FileNotFoundError, PermissionError, NotADirectoryError):
            return None

    def read_int(self, rel: str, base: int = 0) -> int | None:
        text = self.read(rel)
        if text is None or text == "":
            return None
        try:
            return int(text, base)
        except ValueError:
            return None

    def listdir(self, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(self.path(rel)))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return []

    def link_name(self, rel: str) -> str | None:
        """The last component of a symlink's target (a driver's or a group's name)."""
        path = self.path(rel)
        if not path.is_symlink():
            return None
        return os.path.basename(os.path.realpath(path))

    def stat(self, rel: str) -> os.stat_result | None:
        try:
            return self.path(rel).stat()
        except OSError:
            return None
