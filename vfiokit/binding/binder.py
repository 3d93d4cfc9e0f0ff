"""Binding devices to a VFIO driver, group-aware and transactional, and putting them back.

plan_bind() only reads: which devices of the named devices' IOMMU groups must move, which
are left alone (bridges, devices already on a VFIO driver) and which are in use. bind()
executes a plan: it journals each device's prior state before touching it, binds through
driver_override, verifies, and on any failure restores everything it did. restore() puts
journaled devices back, also after a run that was killed half-way.
"""

from __future__ import annotations

import errno as E
import functools
import os
import subprocess
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Protocol

from .. import device as devmod
from .. import iommu
from ..doctor import kernel_module
from ..errors import Busy, NotFound, PermissionDenied, Unsupported, VfiokitError
from ..sysroot import SysRoot
from .inuse import HostState, InUse, Use
from .journal import Entry, Journal
from .nodes import NodeOps, RealNodeOps, apply_states, node_states, vfio_nodes

# uio_pci_generic: no IOMMU group needed, and none isolates the device's DMA: the in-tree
# user of adaptive INTx masking beside VFIO (docs/binding.md, vfiokit.uio).
UIO = "uio_pci_generic"
DRIVERS = ("vfiokit-pci", "vfio-pci", UIO)
_MODULES = {"vfiokit-pci": "vfiokit_pci", "vfio-pci": "vfio-pci", UIO: "uio_pci_generic"}


class Writer(Protocol):
    def write(self, rel: str, text: str) -> None: ...


class SysfsWriter:
    """Writes to the kernel's sysfs (the real one, or a SysRoot's tree)."""

    def __init__(self, sysroot: SysRoot):
        self.sysroot = sysroot

    def write(self, rel: str, text: str) -> None:
        try:
            with open(self.sysroot.path(rel), "w") as f:
                f.write(text)
        except OSError as exc:
            if exc.errno in (E.EACCES, E.EPERM):
                raise PermissionDenied(
                    f"writing {rel}: permission denied", errno=exc.errno, remedy="run as root"
                ) from exc
            raise VfiokitError(f"writing {text.strip()!r} to {rel} failed: {exc.strerror}",
                               errno=exc.errno) from exc  # fmt: skip


@dataclass
class Step:
    address: str
    driver: str | None
    override: str | None
    reason: str
    sriov_numvfs: int | None = None


@dataclass
class Plan:
    target: str
    requested: list[str]
    steps: list[Step] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    uses: list[Use] = field(default_factory=list)
    groups: dict[str, str] = field(default_factory=dict)  # address -> group

    def refusals(self, force: bool) -> list[Use]:
        return [u for u in self.uses if u.fatal or not force]

    def to_dict(self) -> dict[str, object]:
        return {
            "driver": self.target,
            "requested": self.requested,
            "steps": [s.__dict__ for s in self.steps],
            "skipped": [{"address": a, "why": w} for a, w in self.skipped],
            "in_use": [u.to_dict() for u in self.uses],
        }


def default_driver(sysroot: SysRoot) -> str:
    """vfiokit-pci where its module is there (and the kernel patched), else vfio-pci."""
    if sysroot.exists("/sys/bus/pci/drivers/vfiokit-pci"):
        return "vfiokit-pci"
    if kernel_module(sysroot, "vfiokit_pci") == "available":
        return "vfiokit-pci"
    return "vfio-pci"


def plan_bind(sysroot: SysRoot, addresses: list[str], driver: str | None = None,
              host: HostState | None = None) -> Plan:  # fmt: skip
    target = driver or default_driver(sysroot)
    if target not in DRIVERS:
        raise Unsupported(f"unknown driver {target!r}", remedy=f"one of {', '.join(DRIVERS)}")
    wanted = [devmod.resolve(sysroot, a) for a in addresses]
    inuse = InUse(sysroot, host)
    plan = Plan(target, wanted)
    if target == UIO:  # the devices named, nothing else: uio knows no IOMMU groups
        for addr in dict.fromkeys(wanted):
            dev = devmod.read_device(sysroot, addr)
            if dev.driver == target:
                plan.skipped.append((addr, f"already bound to {target}"))
                continue
            plan.uses.extend(inuse.of(dev))
            plan.steps.append(Step(addr, dev.driver, dev.driver_override, "requested",
                                   dev.sriov_numvfs or None))  # fmt: skip
        return plan
    seen: set[str] = set()
    for addr in wanted:
        dev = devmod.read_device(sysroot, addr)
        if dev.iommu_group is None:
            raise Unsupported(
                f"{addr} has no IOMMU group: VFIO cannot take it",
                remedy="enable the IOMMU (`vfiokit doctor`)",
            )
        group = iommu.read_group(sysroot, dev.iommu_group)
        for m in group.members:
            if m.address in seen:
                continue
            seen.add(m.address)
            plan.groups[m.address] = group.number
            why = (
                "requested" if m.address in wanted else f"in IOMMU group {group.number} with {addr}"
            )
            if m.driver == target:
                plan.skipped.append((m.address, f"already bound to {target}"))
                continue
            if m.address not in wanted and (
                iommu.is_vfio_driver(m.driver) or m.driver in iommu.HARMLESS_DRIVERS
            ):
                plan.skipped.append((m.address, f"left on {m.driver}: does not block the group"))
                continue
            if m.address not in wanted and m.driver is None:
                plan.skipped.append((m.address, "no driver: does not block the group"))
                continue
            member = dev if m.address == addr else devmod.read_device(sysroot, m.address)
            plan.uses.extend(inuse.of(member))
            plan.steps.append(Step(m.address, m.driver, member.driver_override, why,
                                   member.sriov_numvfs or None))  # fmt: skip
    return plan


class Binder:
    """Executes plans against sysfs, with a journal. All waits are bounded."""

    def __init__(self, sysroot: SysRoot | None = None, writer: Writer | None = None,
                 journal: Journal | None = None, progress: Callable[[str], None] | None = None,
                 timeout: float = 5.0, nodes: NodeOps | None = None):  # fmt: skip
        self.sysroot = sysroot or SysRoot()
        self.nodes = nodes or RealNodeOps(self.sysroot)
        self.writer = writer or SysfsWriter(self.sysroot)
        self.journal = journal or Journal()
        self.progress = progress or (lambda _msg: None)
        self.timeout = timeout

    # -- primitives -------------------------------------------------------------------------
    def require_root(self, what: str) -> None:
        """Say so before anything happens, not at the first sysfs write (or, for restore,
        after reading a journal that only root can see)."""
        if os.geteuid() != 0 and isinstance(self.writer, SysfsWriter) and self.sysroot.is_host:
            raise PermissionDenied(f"{what} needs root", remedy="run as root (sudo)")

    def _driver(self, addr: str) -> str | None:
        return self.sysroot.link_name(f"/sys/bus/pci/devices/{addr}/driver")

    def _wait(self, pred: Callable[[], bool], what: str) -> None:
        end = time.monotonic() + self.timeout
        while not pred():
            if time.monotonic() > end:
                raise VfiokitError(f"timed out waiting for {what}", errno=E.ETIMEDOUT)
            time.sleep(0.02)

    def _probe_as(self, addr: str, driver: str | None) -> None:
        """Unbind, then probe with driver_override = driver (None: the kernel's choice)."""
        base = f"/sys/bus/pci/devices/{addr}"
        if self._driver(addr):
            self.writer.write(f"{base}/driver/unbind", addr)
        self.writer.write(f"{base}/driver_override", driver or "\n")
        try:
            self.writer.write("/sys/bus/pci/drivers_probe", addr)
        except VfiokitError:
            if driver is not None:
                raise
        if driver is not None:
            self._wait(lambda: self._driver(addr) == driver, f"{addr} to bind to {driver}")

    def ensure_driver(self, driver: str) -> None:
        if self.sysroot.exists(f"/sys/bus/pci/drivers/{driver}"):
            return
        res = subprocess.run(["modprobe", _MODULES[driver]], capture_output=True, text=True,
                             check=False)  # fmt: skip
        if res.returncode != 0 or not self.sysroot.exists(f"/sys/bus/pci/drivers/{driver}"):
            raise NotFound(
                f"driver {driver} is not available: {res.stderr.strip() or 'modprobe failed'}",
                remedy="install the module (docs/install.md) or use --driver vfio-pci",
            )

    # -- verbs ------------------------------------------------------------------------------
    def bind(self, plan: Plan, force: bool = False, keep_override: bool = False) -> list[str]:
        """Execute the plan; all or nothing. keep_override leaves driver_override set to the
        VFIO driver (persisted bindings: no native driver may take the device later)."""
        refusals = plan.refusals(force)
        if refusals:
            fatal = any(u.fatal for u in refusals)
            u = refusals[0]
            raise Busy(
                f"{u.address} is in use: {u.what}",
                remedy="this device is never taken" if fatal else "stop using it, or pass --force",
            )
        self.require_root("binding")
        self.ensure_driver(plan.target)
        done: list[Step] = []
        keep: dict[str, dict[str, list[int]]] = {}  # node owners to give back after the move
        try:
            for step in plan.steps:
                states = None
                if iommu.is_vfio_driver(step.driver):  # e.g. vfio-pci -> vfiokit-pci
                    group = plan.groups.get(step.address)
                    states = node_states(self.nodes, vfio_nodes(self.sysroot, step.address,
                                                                group)) or None  # fmt: skip
                self.journal.record(Entry.new(step.address, step.driver, step.override,
                                              plan.target, step.sriov_numvfs, states))  # fmt: skip
                if states:
                    keep[step.address] = states
                done.append(step)
                self.progress(f"{step.address}: {step.driver or 'no driver'} -> {plan.target}")
                self._probe_as(step.address, plan.target)
                # A stale override would keep the native driver away after an unbind.
                self.writer.write(f"/sys/bus/pci/devices/{step.address}/driver_override",
                                  plan.target if keep_override else "\n")  # fmt: skip
            if self.sysroot.is_host:
                for node in self._nodes(plan):
                    self._wait(functools.partial(self.sysroot.exists, node), node)
            for addr, states in keep.items():
                self._reapply_nodes(addr, plan.groups.get(addr), states)
        except BaseException:
            self.progress("failed: restoring what was changed")
            for step in reversed(done):
                self.restore_one(step.address)
            raise
        return [s.address for s in plan.steps]

    def _nodes(self, plan: Plan) -> list[str]:
        """The nodes udev/devtmpfs must create: each group's, and each moved device's VFIO
        cdev where the kernel has them (iommufd)."""
        if plan.target == UIO:
            pci = "/sys/bus/pci/devices"
            uio = [self.sysroot.listdir(f"{pci}/{s.address}/uio") for s in plan.steps]
            return [f"/dev/{n}" for names in uio for n in names]
        nodes = [f"/dev/vfio/{g}" for g in sorted(set(plan.groups.values()))]
        for step in plan.steps:
            for cdev in self.sysroot.listdir(f"/sys/bus/pci/devices/{step.address}/vfio-dev"):
                nodes.append(f"/dev/vfio/devices/{cdev}")
        return nodes

    def _reapply_nodes(self, addr: str, group: str | None, states: dict[str, list[int]]) -> None:
        """The kernel re-created the device's VFIO nodes as root:root 0600: give them the
        owner and mode they had (a user `vfiokit assign` let in keeps access)."""
        for path in apply_states(self.nodes, vfio_nodes(self.sysroot, addr, group), states):
            self.progress(f"{addr}: {path}: owner and mode as before")

    def restore_one(self, addr: str) -> bool:
        """Put a journaled device back as it was; False if it has no journal entry."""
        entry = self.journal.get(addr)
        if entry is None:
            return False
        self.progress(
            f"{addr}: {self._driver(addr) or 'no driver'} -> {entry.driver or 'no driver'}"
        )
        if entry.driver is None:
            if self._driver(addr):
                self.writer.write(f"/sys/bus/pci/devices/{addr}/driver/unbind", addr)
        elif self._driver(addr) != entry.driver:
            self._probe_as(addr, entry.driver)
        self.writer.write(f"/sys/bus/pci/devices/{addr}/driver_override",
                          entry.driver_override or "\n")  # fmt: skip
        if entry.nodes and iommu.is_vfio_driver(entry.driver):
            group = self.sysroot.link_name(f"/sys/bus/pci/devices/{addr}/iommu_group")
            if self.sysroot.is_host and group is not None:
                self._wait(lambda: self.sysroot.exists(f"/dev/vfio/{group}"), f"/dev/vfio/{group}")
            self._reapply_nodes(addr, group, entry.nodes)
        vfs = self.sysroot.read_int(f"/sys/bus/pci/devices/{addr}/sriov_numvfs", 10)
        if entry.sriov_numvfs and entry.driver and vfs is not None and vfs != entry.sriov_numvfs:
            self.progress(f"{addr}: re-creating {entry.sriov_numvfs} VFs")
            if vfs:
                self.writer.write(f"/sys/bus/pci/devices/{addr}/sriov_numvfs", "0")
            self.writer.write(f"/sys/bus/pci/devices/{addr}/sriov_numvfs", str(entry.sriov_numvfs))
        self.journal.remove(addr)
        return True

    def restore(self, addresses: list[str] | None = None) -> list[str]:
        """Restore the named devices, or every journaled one. Idempotent."""
        self.require_root("restoring")
        todo = addresses if addresses is not None else [e.address for e in self.journal.entries()]
        return [a for a in todo if self.restore_one(a)]

    def unbind(self, addresses: list[str], forget: Collection[str] = ()) -> list[str]:
        """Give devices back: to their journaled driver, else to the kernel's choice.

        `forget`: the addresses whose persisted binding is being removed. A driver_override
        naming a VFIO driver (set at boot by the persist rule) is cleared on them, and a
        device left without a driver is offered to the kernel's choice."""
        self.require_root("unbinding")
        out = []
        for addr in addresses:
            addr = devmod.resolve(self.sysroot, addr)
            restored = self.restore_one(addr)
            if addr in forget:
                base = f"/sys/bus/pci/devices/{addr}"
                if self.sysroot.read(f"{base}/driver_override") in DRIVERS:
                    self.writer.write(f"{base}/driver_override", "\n")
                    if restored and self._driver(addr) is None:
                        self._probe_as(addr, None)
            if restored:
                out.append(addr)
                continue
            if self._driver(addr) is None:
                continue
            self.progress(f"{addr}: {self._driver(addr)} -> the kernel's choice")
            self._probe_as(addr, None)
            out.append(addr)
        return out
