"""The binding journal: the state of each device before vfiokit touched it, written (and
fsynced) before anything changes, so `vfiokit restore` can undo a bind even after the
process that made it was killed. One JSON file per device under /run/vfiokit/journal.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_DIR = "/run/vfiokit/journal"


@dataclass
class Entry:
    address: str
    driver: str | None  # the driver before vfiokit bound the device
    driver_override: str | None
    target: str  # the driver vfiokit binds it to
    pid: int
    time: float
    sriov_numvfs: int | None = None  # VFs the native driver had: re-created on restore
    # Owner and mode of its VFIO nodes when it was already on a VFIO driver ("group" /
    # "cdev" -> [uid, gid, mode]): re-applied after the driver change and on restore.
    nodes: dict[str, list[int]] | None = None

    @classmethod
    def new(cls, address: str, driver: str | None, override: str | None, target: str,
            sriov_numvfs: int | None = None,
            nodes: dict[str, list[int]] | None = None) -> Entry:  # fmt: skip
        return cls(address, driver, override, target, os.getpid(), time.time(), sriov_numvfs,
                   nodes)  # fmt: skip


def write_durably(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace `path` with `text` atomically and fsync it and its folder: after a crash the
    file is either the old one or the new one, never half of either."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755 if mode & 0o044 else 0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class Journal:
    def __init__(self, directory: str | os.PathLike[str] | None = None):
        self.dir = Path(directory or os.environ.get("VFIOKIT_JOURNAL", DEFAULT_DIR))

    def _path(self, address: str) -> Path:
        return self.dir / f"{address}.json"

    def record(self, entry: Entry) -> None:
        """Write the entry durably; an existing entry (an earlier, unrestored bind) wins."""
        path = self._path(entry.address)
        if path.exists():
            return
        write_durably(path, json.dumps(asdict(entry)))

    def get(self, address: str) -> Entry | None:
        try:
            return Entry(**json.loads(self._path(address).read_text()))
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return None

    def remove(self, address: str) -> None:
        self._path(address).unlink(missing_ok=True)

    def entries(self) -> list[Entry]:
        if not self.dir.is_dir():
            return []
        out = []
        for p in sorted(self.dir.glob("*.json")):
            e = self.get(p.stem)
            if e is not None:
                out.append(e)
        return out
