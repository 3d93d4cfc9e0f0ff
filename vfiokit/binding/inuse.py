"""Is a device in use by the host? Network interfaces that are up with addresses, block
devices that are mounted, held (dm, md) or used as swap, processes holding its nodes open,
and the device that holds the root file system (which vfiokit never takes, --force or not).

This is the one verdict on "in use": `bind` refuses on it, `list` shows it (USED BY) and
`doctor` never proposes a bind it would refuse. :class:`InUse` reads the host once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from ..device import PciDevice
from ..iommu import is_vfio_driver
from ..sysroot import SysRoot


@dataclass(frozen=True)
class Use:
    address: str
    what: str
    fatal: bool = False  # the root file system: refused even with --force
    short: str = ""  # a few words for a table column: "root fs", "enp3s0 192.0.2.7"

    def to_dict(self) -> dict[str, object]:
        return {"address": self.address, "what": self.what, "short": self.short or self.what,
                "fatal": self.fatal}  # fmt: skip


@dataclass
class HostState:
    """What is mounted and which interfaces are up: read once per plan (psutil)."""

    mounts: dict[str, str]  # device (path, or a 9p mount tag) -> mount point
    net: dict[str, tuple[bool, list[str]]]  # interface -> (up, IP addresses)

    @classmethod
    def read(cls) -> HostState:
        mounts = {p.device: p.mountpoint for p in psutil.disk_partitions(all=True)}
        stats = psutil.net_if_stats()
        net = {}
        for iface, addrs in psutil.net_if_addrs().items():
            ips = [a.address for a in addrs if a.family.name in ("AF_INET", "AF_INET6")]
            net[iface] = (bool(stats.get(iface) and stats[iface].isup), ips)
        return cls(mounts, net)


def _pci_of(path: Path) -> str | None:
    """The PCI address among the ancestors of a sysfs device path."""
    for part in reversed(path.parts):
        if len(part) == 12 and part[4] == ":" and part[7] == ":" and part[10] == ".":
            return part
    return None


def _block_pcis(sysroot: SysRoot, name: str, depth: int = 0) -> set[str]:
    """PCI devices under a block device, following dm/md slaves down to the disks."""
    link = sysroot.path(f"/sys/class/block/{name}")
    if not link.exists():
        return set()
    slaves = sysroot.listdir(f"/sys/class/block/{name}/slaves")
    if slaves and depth < 8:
        return set().union(*(_block_pcis(sysroot, s, depth + 1) for s in slaves))
    pci = _pci_of(link.resolve())
    return {pci} if pci else set()


def _ninep_tags(sysroot: SysRoot) -> dict[str, str]:
    """virtio-9p mount tag -> PCI address of its virtio device."""
    out = {}
    for vdev in sysroot.listdir("/sys/bus/virtio/devices"):
        base = f"/sys/bus/virtio/devices/{vdev}"
        tag = sysroot.read(f"{base}/mount_tag")
        pci = _pci_of(sysroot.path(base).resolve())
        if tag and pci:
            out[tag.rstrip("\x00")] = pci
    return out


def _source_pcis(sysroot: SysRoot, source: str) -> set[str]:
    """PCI devices behind a mount source: /dev/X, UUID=..., PARTUUID=..., LABEL=... or a
    9p mount tag."""
    for key in ("UUID", "PARTUUID", "LABEL"):
        if source.startswith(key + "="):
            source = f"/dev/disk/by-{key.lower()}/{source.split('=', 1)[1]}"
    if source.startswith("/dev/"):
        return _block_pcis(sysroot, sysroot.path(source).resolve().name)
    pci = _ninep_tags(sysroot).get(source)
    return {pci} if pci else set()


def root_devices(sysroot: SysRoot, host: HostState) -> set[str]:
    """The PCI devices that hold the root file system: from the mount table, and from the
    kernel's root= (which is all there is to go on under an overlay or a chroot)."""
    sources = [d for d, mnt in host.mounts.items() if mnt == "/"]
    for word in (sysroot.read("/proc/cmdline") or "").split():
        if word.startswith("root="):
            sources.append(word[5:])
    return set().union(*(_source_pcis(sysroot, src) for src in sources)) if sources else set()


def device_nodes(sysroot: SysRoot, dev: PciDevice) -> set[str]:
    """The /dev nodes of a device and everything below it (disks, partitions, DRM cards,
    its VFIO cdev), plus its VFIO group node while it is bound to a VFIO driver."""
    nodes = set()
    if is_vfio_driver(dev.driver) and dev.iommu_group is not None:
        nodes.add(f"/dev/vfio/{dev.iommu_group}")
    top = sysroot.path(f"/sys/bus/pci/devices/{dev.address}").resolve()
    for here, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if d not in ("subsystem", "driver", "firmware_node")]
        if "uevent" in files and "dev" in files:
            try:
                uevent = (Path(here) / "uevent").read_text()
            except OSError:
                continue
            for line in uevent.splitlines():
                if line.startswith("DEVNAME="):
                    nodes.add("/dev/" + line[8:])
    return nodes


def node_holders(sysroot: SysRoot, nodes: set[str]) -> list[tuple[int, str, str]]:
    """(pid, command, node) for every other process with one of `nodes` open: one pass
    over /proc/*/fd, however many devices the nodes belong to."""
    if not nodes:
        return []
    out = []
    for pid in sysroot.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        seen: set[str] = set()
        for fd in sysroot.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(sysroot.path(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
            if target in nodes and target not in seen:
                seen.add(target)
                out.append((int(pid), sysroot.read(f"/proc/{pid}/comm") or "?", target))
    return out


def uses(sysroot: SysRoot, dev: PciDevice, host: HostState, root_pcis: set[str],
         holders: list[tuple[int, str, str]] | None = None) -> list[Use]:  # fmt: skip
    """Why `dev` is in use (empty: it is not). `holders`: node_holders() of many devices'
    nodes at once (InUse.of_all), else this device's are looked up."""
    out: list[Use] = []
    nodes = device_nodes(sysroot, dev)
    found = node_holders(sysroot, nodes) if holders is None else holders
    for pid, comm, node in (h for h in found if h[2] in nodes):
        out.append(Use(dev.address, f"{node} is open in process {pid} ({comm})",
                       short=f"pid {pid} ({comm})"))  # fmt: skip
    if dev.address in root_pcis:
        out.append(Use(dev.address, "it holds the root file system", fatal=True, short="root fs"))
    for tag, pci in _ninep_tags(sysroot).items():
        if pci == dev.address and tag in host.mounts:
            out.append(Use(dev.address, f"9p share {tag} is mounted on {host.mounts[tag]}",
                           short=f"9p {host.mounts[tag]}"))  # fmt: skip
    for iface in dev.net_interfaces:
        up, ips = host.net.get(iface, (False, []))
        if up and ips:
            out.append(Use(dev.address, f"network interface {iface} is up with {ips[0]}",
                           short=f"{iface} {ips[0]}"))  # fmt: skip
    mounted = {Path(d).name: m for d, m in host.mounts.items() if d.startswith("/dev/")}
    swaps = (sysroot.read("/proc/swaps") or "").splitlines()[1:]
    swap_devs = {Path(line.split()[0]).name for line in swaps if line.split()}
    for blk in dev.block_devices:
        names = [blk] + [n for n in sysroot.listdir(f"/sys/class/block/{blk}") if n.startswith(blk)]
        for name in names:
            if name in mounted:
                out.append(Use(dev.address, f"block device {name} is mounted on {mounted[name]}",
                               short=f"{name} on {mounted[name]}"))  # fmt: skip
            if name in swap_devs:
                out.append(Use(dev.address, f"block device {name} is used as swap",
                               short=f"{name} swap"))  # fmt: skip
            held = sysroot.listdir(f"/sys/class/block/{name}/holders")
            if held:
                out.append(Use(dev.address, f"block device {name} is held by {', '.join(held)}",
                               short=f"{name} held by {', '.join(held)}"))  # fmt: skip
    return out


class InUse:
    """The host read once (mounts, interfaces, the root file system's devices); then the
    in-use verdict of any device, or of many with one pass over /proc."""

    def __init__(self, sysroot: SysRoot, host: HostState | None = None):
        self.sysroot = sysroot
        self.host = host if host is not None else HostState.read()
        self.root_pcis = root_devices(sysroot, self.host)

    def of(self, dev: PciDevice) -> list[Use]:
        return uses(self.sysroot, dev, self.host, self.root_pcis)

    def of_all(self, devices: list[PciDevice]) -> dict[str, list[Use]]:
        nodes = set().union(*(device_nodes(self.sysroot, d) for d in devices)) if devices else set()
        holders = node_holders(self.sysroot, nodes)
        return {d.address: uses(self.sysroot, d, self.host, self.root_pcis, holders)
                for d in devices}  # fmt: skip
