"""Letting a non-root user drive a device bound to VFIO, and taking it back.

A user needs to open the device's group node /dev/vfio/<group> (legacy uAPI), or its cdev
/dev/vfio/devices/vfioN and /dev/iommu (iommufd). assign() makes the user (and optionally a
group) the owner of the device's nodes, opens the two shared nodes /dev/vfio/vfio and
/dev/iommu to everyone (they grant nothing on their own: the kernel's VFIO documentation
expects /dev/vfio/vfio at 0666, and /dev/iommu only maps the caller's own memory, charged
to the caller's memlock limit), and writes a udev rule so that the nodes come back with the
same owner whenever the kernel re-creates them (a re-bind, a reboot). The prior owner and
mode of every node are recorded under /run/vfiokit/assign before anything changes, and
unassign() puts them back.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import device as devmod
from .. import iommu
from ..errors import InvalidArgument, NotFound, PermissionDenied
from ..sysroot import SysRoot
from .journal import write_durably
from .nodes import NodeOps, RealNodeOps

STATE_DIR = "/run/vfiokit/assign"
RULES_DIR = "/etc/udev/rules.d"
SHARED_NODES = ("/dev/vfio/vfio", "/dev/iommu")
_SHARED_RULE = "70-vfiokit-shared.rules"


@dataclass
class NodeState:
    path: str
    uid: int
    gid: int
    mode: int


@dataclass
class Assignment:
    address: str
    iommu_group: str
    user: str | None
    uid: int
    group: str | None
    gid: int
    mode: int
    nodes: list[NodeState] = field(default_factory=list)  # prior state of each node
    rule: str | None = None

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["mode"] = f"{self.mode:04o}"
        d["nodes"] = [{**asdict(n), "mode": f"{n.mode:04o}"} for n in self.nodes]
        return d


def device_nodes(sysroot: SysRoot, address: str) -> tuple[str, list[str]]:
    """The IOMMU group and the nodes that are the device's own: its group node and, with
    iommufd, its VFIO cdev."""
    dev = devmod.read_device(sysroot, address)
    if not iommu.is_vfio_driver(dev.driver):
        raise InvalidArgument(
            f"{address} is not bound to a VFIO driver (driver: {dev.driver or 'none'})",
            remedy=f"vfiokit bind {address}",
        )
    group = dev.iommu_group
    nodes = [f"/dev/vfio/{group}"]
    for cdev in sysroot.listdir(f"/sys/bus/pci/devices/{address}/vfio-dev"):
        nodes.append(f"/dev/vfio/devices/{cdev}")
    missing = [n for n in nodes if not sysroot.exists(n)]
    if missing or group is None:
        raise NotFound(f"{address}: {', '.join(missing) or 'its IOMMU group'} does not exist",
                       remedy="is devtmpfs mounted on /dev? `vfiokit doctor`")  # fmt: skip
    return group, nodes


def group_member_path(address: str) -> str:
    """What udev tests for a group node (/dev/vfio/$kernel) that holds `address`."""
    return f"/sys/kernel/iommu_groups/$kernel/devices/{address}"


def udev_rule(a: Assignment, cdevs: bool) -> str:
    who = []
    if a.user:
        who.append(f'OWNER="{a.user}"')
    if a.group:
        who.append(f'GROUP="{a.group}"')
    who.append(f'MODE="{a.mode:04o}"')
    attrs = ", ".join(who)
    lines = [
        f"# Written by `vfiokit assign {a.address}`; `vfiokit unassign {a.address}` removes it.",
        f"# The group node is matched by its member {a.address}, not by its number: a device",
        "# added again (hot-plug, PCI rescan) may come back in a group with a new number.",
        f'SUBSYSTEM=="vfio", TEST=="{group_member_path(a.address)}", {attrs}',
    ]
    if cdevs:
        lines.append(f'SUBSYSTEM=="vfio-dev", KERNELS=="{a.address}", {attrs}')
    return "\n".join(lines) + "\n"


SHARED_RULE_TEXT = (
    "# Written by `vfiokit assign`: these two nodes grant nothing on their own (the device\n"
    "# nodes do); DMA mappings count against the caller's memlock limit.\n"
    'SUBSYSTEM=="misc", KERNEL=="vfio", MODE="0666"\n'
    'SUBSYSTEM=="misc", KERNEL=="iommu", MODE="0666"\n'
)


class Assigner:
    def __init__(self, sysroot: SysRoot | None = None, ops: NodeOps | None = None,
                 state_dir: str | None = None):  # fmt: skip
        self.sysroot = sysroot or SysRoot()
        self.ops = ops or RealNodeOps(self.sysroot)
        self.state = Path(state_dir or os.environ.get("VFIOKIT_ASSIGN_STATE", STATE_DIR))

    def _rule_path(self, address: str) -> Path:
        return self.sysroot.path(f"{RULES_DIR}/70-vfiokit-assign-{address}.rules")

    def _record(self, address: str) -> Path:
        return self.state / f"{address}.json"

    def get(self, address: str) -> Assignment | None:
        try:
            d = json.loads(self._record(address).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        d["nodes"] = [NodeState(**n) for n in d["nodes"]]
        return Assignment(**d)

    def assignments(self) -> list[Assignment]:
        out = [self.get(p.stem) for p in sorted(self.state.glob("0*.json"))]
        return [a for a in out if a is not None]

    def _check_root(self) -> None:
        if os.geteuid() != 0 and self.sysroot.is_host:
            raise PermissionDenied("assigning a device needs root", remedy="run as root (sudo)")

    def assign(self, address: str, user: str | None, group: str | None = None,
               persist: bool = True) -> Assignment:  # fmt: skip
        """Make `user` (and/or members of `group`) able to open the device's VFIO nodes."""
        if not user and not group:
            raise InvalidArgument("name a --user, a --group or both", remedy="--user NAME")
        address = devmod.resolve(self.sysroot, address)
        self._check_root()
        uid, gid = _ids(user, group)
        iommu_group, nodes = device_nodes(self.sysroot, address)
        previous = self.get(address)
        mode = 0o660 if group else 0o600
        a = Assignment(address, iommu_group, user, uid, group, gid, mode)
        # The prior state is what was there before the first assign: re-assigning keeps it.
        a.nodes = previous.nodes if previous else [self._state_of(n) for n in nodes]
        shared = [n for n in SHARED_NODES if self.sysroot.exists(n)]
        self._record_shared(shared)
        cdevs = any("/devices/" in n for n in nodes)
        if persist:
            a.rule = str(self._rule_path(address))
        write_durably(self._record(address), json.dumps(asdict(a)))
        for n in nodes:
            self.ops.chown(n, uid, gid)
            self.ops.chmod(n, mode)
        for n in shared:
            st = self.ops.stat(n)
            if st is not None and st[2] & 0o666 != 0o666:
                self.ops.chmod(n, st[2] | 0o666)
        if persist:
            write_durably(self._rule_path(address), udev_rule(a, cdevs), mode=0o644)
            write_durably(self.sysroot.path(f"{RULES_DIR}/{_SHARED_RULE}"), SHARED_RULE_TEXT,
                          mode=0o644)  # fmt: skip
        return a

    def unassign(self, address: str) -> Assignment | None:
        """Give the nodes back their prior owner and mode and remove the udev rule. Without
        a record (e.g. after a reboot) the nodes go back to the kernel's root:root 0600."""
        address = devmod.resolve(self.sysroot, address)
        self._check_root()
        a = self.get(address)
        rule = self._rule_path(address)
        if a is None and not rule.exists():
            return None
        if a is None:
            try:
                _g, nodes = device_nodes(self.sysroot, address)
            except (InvalidArgument, NotFound):
                nodes = []
            prior = [NodeState(n, 0, 0, 0o600) for n in nodes]
        else:
            prior = a.nodes
        for n in prior:
            if self.sysroot.exists(n.path):
                self.ops.chown(n.path, n.uid, n.gid)
                self.ops.chmod(n.path, n.mode)
        rule.unlink(missing_ok=True)
        self._record(address).unlink(missing_ok=True)
        if not self.assignments() and not list(self.sysroot.path(RULES_DIR).glob(
                "70-vfiokit-assign-*.rules")):  # fmt: skip
            self._restore_shared()
        return a

    # -- the shared nodes: recorded once, restored when the last assignment goes ----------
    def _state_of(self, node: str) -> NodeState:
        st = self.ops.stat(node)
        if st is None:
            raise NotFound(f"{node} does not exist")
        return NodeState(node, *st)

    def _record_shared(self, shared: list[str]) -> None:
        path = self.state / "shared.json"
        if path.exists():
            return
        write_durably(path, json.dumps([asdict(self._state_of(n)) for n in shared]))

    def _restore_shared(self) -> None:
        path = self.state / "shared.json"
        try:
            nodes = [NodeState(**n) for n in json.loads(path.read_text())]
        except (FileNotFoundError, json.JSONDecodeError):
            nodes = []
        for n in nodes:
            if self.sysroot.exists(n.path):
                self.ops.chmod(n.path, n.mode)
        path.unlink(missing_ok=True)
        self.sysroot.path(f"{RULES_DIR}/{_SHARED_RULE}").unlink(missing_ok=True)


def _ids(user: str | None, group: str | None) -> tuple[int, int]:
    try:
        pw = pwd.getpwnam(user) if user else None
    except KeyError:
        raise NotFound(f"no such user: {user}", remedy="see `getent passwd`") from None
    try:
        gr = grp.getgrnam(group) if group else None
    except KeyError:
        raise NotFound(f"no such group: {group}", remedy="see `getent group`") from None
    uid = pw.pw_uid if pw else 0
    gid = gr.gr_gid if gr else (pw.pw_gid if pw else 0)
    return uid, gid
