"""The VFIO device nodes of a device and their owner and mode.

A device bound to a VFIO driver has a group node /dev/vfio/<group> and, with iommufd, a
cdev /dev/vfio/devices/vfioN. The kernel re-creates both (root:root 0600) whenever the
device changes driver; `vfiokit assign` changes them, the binder journals and re-applies
them. Everything here goes through NodeOps, so tests can record instead of chown.
"""

from __future__ import annotations

import os
import stat
from typing import Protocol

from ..sysroot import SysRoot


class NodeOps(Protocol):
    """What is done to device nodes (paths are host paths; a fake records calls)."""

    def stat(self, path: str) -> tuple[int, int, int] | None: ...  # uid, gid, mode
    def chown(self, path: str, uid: int, gid: int) -> None: ...
    def chmod(self, path: str, mode: int) -> None: ...


class RealNodeOps:
    def __init__(self, sysroot: SysRoot):
        self.sysroot = sysroot

    def stat(self, path: str) -> tuple[int, int, int] | None:
        st = self.sysroot.stat(path)
        return None if st is None else (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.chown(self.sysroot.path(path), uid, gid)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self.sysroot.path(path), mode)


def vfio_nodes(sysroot: SysRoot, address: str, group: str | None) -> dict[str, str]:
    """{"group": path, "cdev": path} for the nodes the device has now."""
    out = {}
    if group is not None and sysroot.exists(f"/dev/vfio/{group}"):
        out["group"] = f"/dev/vfio/{group}"
    for cdev in sysroot.listdir(f"/sys/bus/pci/devices/{address}/vfio-dev"):
        if sysroot.exists(f"/dev/vfio/devices/{cdev}"):
            out["cdev"] = f"/dev/vfio/devices/{cdev}"
    return out


def node_states(ops: NodeOps, nodes: dict[str, str]) -> dict[str, list[int]]:
    """kind -> [uid, gid, mode] of each node."""
    out = {}
    for kind, path in nodes.items():
        st = ops.stat(path)
        if st is not None:
            out[kind] = list(st)
    return out


def apply_states(ops: NodeOps, nodes: dict[str, str], states: dict[str, list[int]]) -> list[str]:
    """Give the nodes (as they are now) the recorded owner and mode; the paths changed."""
    done = []
    for kind, (uid, gid, mode) in states.items():
        path = nodes.get(kind)
        if path is None or ops.stat(path) == (uid, gid, mode):
            continue
        ops.chown(path, uid, gid)
        ops.chmod(path, mode)
        done.append(path)
    return done
