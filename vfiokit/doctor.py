"""`vfiokit doctor`: checks of the host (and optionally one device) for VFIO passthrough,
each with its result and, when it does not pass, the exact remedy. Read-only."""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from . import device as devmod
from . import intx, iommu, virt
from .errors import ExitCode, VfiokitError
from .sysroot import SysRoot

if TYPE_CHECKING:
    from .binding.inuse import HostState, Use

MEMLOCK_WANTED = 64 << 20  # enough for a small userspace driver; a VM needs its RAM size


class Status(StrEnum):
    OK = "ok"
    INFO = "info"
    WARN = "warn"
    FAIL = "fail"


@dataclass
class Check:
    id: str
    title: str
    status: Status
    detail: str
    remedy: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "title": self.title,
            "status": self.status.value,
            "detail": self.detail,
            "remedy": self.remedy,
        }


def exit_code(checks: list[Check]) -> ExitCode:
    statuses = {c.status for c in checks}
    if Status.FAIL in statuses:
        return ExitCode.CHECK_FAILED
    if Status.WARN in statuses:
        return ExitCode.CHECK_WARNED
    return ExitCode.OK


# ---------------------------------------------------------------------------------------------
# host checks


def kernel_module(sysroot: SysRoot, name: str) -> str:
    """'loaded', 'builtin', 'available' or 'missing' for kernel module `name`; 'unknown'
    where this kernel's /lib/modules/<release> is not there to say (a container)."""
    if sysroot.exists(f"/sys/module/{name}"):
        return "loaded"
    release = sysroot.read("/proc/sys/kernel/osrelease") or ""
    moddir = f"/lib/modules/{release}"
    if not release or not sysroot.exists(f"{moddir}/modules.dep"):
        return "unknown"
    builtin = sysroot.read(f"{moddir}/modules.builtin") or ""
    ko = name.replace("-", "_")
    alt = name.replace("_", "-")
    if any(line.rsplit("/", 1)[-1].split(".ko")[0] in (ko, alt) for line in builtin.splitlines()):
        return "builtin"
    dep = sysroot.read(f"{moddir}/modules.dep") or ""
    for line in dep.splitlines():
        path = line.split(":", 1)[0]
        if path.rsplit("/", 1)[-1].split(".ko")[0] in (ko, alt):
            return "available"
    return "missing"


VIOMMU_REMEDY = (
    "this is a VM ({vm}): give it a virtual IOMMU. QEMU: -machine q35,kernel-irqchip=split "
    "-device intel-iommu,intremap=on; libvirt: <iommu model='intel'/> in <devices> (with "
    "<driver intremap='on'/> inside it and <ioapic driver='qemu'/> in <features>); then "
    "intel_iommu=on on this guest's kernel command line"
)


def check_iommu(sysroot: SysRoot, state: iommu.IommuState) -> Check:
    if state.enabled:
        return Check(
            "iommu",
            "IOMMU",
            Status.OK,
            f"{state.kind or 'an IOMMU'} is on ({state.groups} groups, units: "
            f"{', '.join(state.units) or 'none listed'})",
        )
    return Check(
        "iommu",
        "IOMMU",
        Status.FAIL,
        "no IOMMU groups: the IOMMU is off or absent, VFIO can only run in unsafe no-IOMMU mode",
        VIOMMU_REMEDY.format(vm=vm)
        if (vm := virt.hypervisor(sysroot))
        else "enable VT-d / AMD-Vi in the firmware and add intel_iommu=on (Intel) or amd_iommu=on "
        "(AMD) to the kernel command line (/etc/default/grub GRUB_CMDLINE_LINUX, then "
        "update-grub and reboot)",
    )


def check_irq_remapping(state: iommu.IommuState, vm: str | None = None) -> Check:
    if state.interrupt_remapping:
        return Check(
            "irq_remap", "interrupt remapping", Status.OK, "IR-* interrupt domains present"
        )
    if not state.enabled:
        return Check(
            "irq_remap", "interrupt remapping", Status.INFO, "not applicable without an IOMMU"
        )
    return Check(
        "irq_remap",
        "interrupt remapping",
        Status.WARN,
        "the IOMMU does not remap interrupts: VFIO_SET_IOMMU fails with EPERM by default",
        f"this is a VM ({vm}): QEMU: -device intel-iommu,intremap=on (with "
        "-machine kernel-irqchip=split); libvirt: <driver intremap='on'/> in its <iommu>"
        if vm
        else "enable interrupt remapping in the firmware (with intel_iommu=on it is on where the "
        "hardware has it); only on a trusted host: vfio_iommu_type1.allow_unsafe_interrupts=1",
    )


def check_modules(sysroot: SysRoot) -> list[Check]:
    out = []
    for name, needed in (
        ("vfio", True),
        ("vfio_pci", True),
        ("vfio_iommu_type1", False),
        ("iommufd", False),
    ):
        st = kernel_module(sysroot, name)
        if name == "vfio" and st == "missing" and sysroot.exists("/dev/vfio/vfio"):
            st = "builtin"
        if (
            name == "vfio_pci"
            and st == "missing"
            and sysroot.exists("/sys/bus/pci/drivers/vfio-pci")
        ):
            st = "builtin"
        if name == "iommufd" and st == "missing" and sysroot.exists("/dev/iommu"):
            st = "builtin"
        if st in ("loaded", "builtin"):
            out.append(Check(f"module_{name}", f"module {name}", Status.OK, st))
        elif st == "unknown":
            release = sysroot.read("/proc/sys/kernel/osrelease") or "?"
            out.append(Check(f"module_{name}", f"module {name}", Status.INFO,
                             f"not loaded; whether this kernel has it is unknown: "
                             f"/lib/modules/{release} is not here (a container?)",
                             f"on the host: modprobe {name.replace('_', '-')}"))  # fmt: skip
        elif st == "available":
            out.append(
                Check(
                    f"module_{name}",
                    f"module {name}",
                    Status.WARN if needed else Status.INFO,
                    "available but not loaded",
                    f"modprobe {name.replace('_', '-')}",
                )
            )
        else:
            why = {
                "vfio_iommu_type1": "the legacy container uAPI needs it (iommufd can replace it)",
                "iommufd": "the /dev/iommu + VFIO cdev uAPI needs it (the legacy one works "
                "without)",
            }.get(name, "needed for any VFIO use")
            out.append(
                Check(
                    f"module_{name}",
                    f"module {name}",
                    Status.FAIL if needed else Status.INFO,
                    f"not present in this kernel: {why}",
                    "use a kernel built with CONFIG_VFIO_PCI (Debian's stock kernels have it)"
                    if needed
                    else None,
                )
            )
    return out


def check_dev_vfio(sysroot: SysRoot) -> Check:
    node = sysroot.path("/dev/vfio/vfio")
    if not node.exists():
        return Check(
            "dev_vfio",
            "/dev/vfio",
            Status.WARN,
            "/dev/vfio/vfio does not exist (vfio not loaded)",
            "modprobe vfio-pci",
        )
    if os.access(node, os.R_OK | os.W_OK):
        groups = [g for g in sysroot.listdir("/dev/vfio") if g not in ("vfio", "devices")]
        usable = [g for g in groups if os.access(sysroot.path(f"/dev/vfio/{g}"), os.R_OK | os.W_OK)]
        return Check(
            "dev_vfio",
            "/dev/vfio",
            Status.OK,
            f"container node usable; {len(usable)} of {len(groups)} group nodes usable by "
            "this user",
        )
    return Check(
        "dev_vfio",
        "/dev/vfio",
        Status.WARN,
        "this user cannot open /dev/vfio/vfio",
        "run as root, or give this user the device with `vfiokit assign BDF --user NAME`",
    )


def check_memlock(limits: tuple[int, int] | None = None, ipc_lock: bool | None = None,
                  user: str | None = None) -> Check:  # fmt: skip
    """RLIMIT_MEMLOCK of this process. `ipc_lock`: CAP_IPC_LOCK in its effective set (from
    /proc/self/status; root in a container may well lack it), None when not known."""
    soft, hard = limits if limits is not None else resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY:
        return Check("memlock", "RLIMIT_MEMLOCK", Status.OK, "unlimited")
    human = f"{soft >> 20} MiB" if soft >= 1 << 20 else f"{soft >> 10} KiB"
    if ipc_lock:
        return Check("memlock", "RLIMIT_MEMLOCK", Status.OK,
                     f"{human}; this process has CAP_IPC_LOCK: not limited")  # fmt: skip
    if soft >= MEMLOCK_WANTED:
        return Check("memlock", "RLIMIT_MEMLOCK", Status.OK, f"{human}")
    from .binding.memlock import Limit

    who = user or _user_name()
    nocap = " and no CAP_IPC_LOCK" if ipc_lock is False and os.geteuid() == 0 else ""
    return Check(
        "memlock",
        "RLIMIT_MEMLOCK",
        Status.WARN,
        f"{human}{nocap}: VFIO DMA mappings pin memory and fail with ENOMEM beyond this limit",
        f"raise it for {who}: " + Limit(who, soft, hard, "this process").remedy(),
    )


def _user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def genirq_patched(sysroot: SysRoot) -> bool:
    return any(
        sysroot.exists(f"/sys/kernel/irq/{n}/mask_device")
        for n in sysroot.listdir("/sys/kernel/irq")
    )


def check_patch(sysroot: SysRoot) -> Check:
    if genirq_patched(sysroot):
        return Check(
            "genirq_patch",
            "vfiokit genirq patch",
            Status.OK,
            "present: INTx is masked at the line while a device is alone on it",
        )
    return Check(
        "genirq_patch",
        "vfiokit genirq patch",
        Status.INFO,
        "absent: stock VFIO decides once per device (device-level masking if it supports "
        "INTx Disable, else an exclusive line); the patch adds line-level masking while alone "
        "and sharing for the rest",
        "optional: build the patched kernel from kmod/patches (docs/install.md)",
    )


def check_vfiokit_module(sysroot: SysRoot) -> Check:
    if sysroot.exists("/sys/bus/pci/drivers/vfiokit-pci") or sysroot.exists(
        "/sys/module/vfiokit_pci"
    ):
        return Check("vfiokit_pci", "vfiokit_pci module", Status.OK, "loaded")
    return Check(
        "vfiokit_pci",
        "vfiokit_pci module",
        Status.INFO,
        "not loaded: vfio-pci will be used",
        "optional, with the patched kernel: modprobe vfiokit_pci (docs/install.md)",
    )


# ---------------------------------------------------------------------------------------------
# device checks


def check_group(sysroot: SysRoot, dev: devmod.PciDevice, in_use: list[Use] | None = None) -> Check:
    """`in_use`: the device's own in-use verdict, for the no-group case (no remedy that leads
    to a bind of the root disk's controller)."""
    if dev.iommu_group is None:
        never = any(u.fatal for u in in_use or [])
        return Check(
            "group",
            "IOMMU group",
            Status.FAIL,
            f"{dev.address} has no IOMMU group",
            None if never else "enable the IOMMU (see the iommu check)",
        )
    group = iommu.read_group(sysroot, dev.iommu_group)
    blockers = group.blockers(taking={dev.address})
    others = [m.address for m in group.members if m.address != dev.address]
    if not blockers:
        return Check(
            "group",
            "IOMMU group",
            Status.OK,
            f"group {group.number} can be made viable"
            + (f" (with {', '.join(others)})" if others else " (alone in it)"),
        )
    names = "; ".join(f"{m.address} is {why}" for m, why in blockers)
    return Check(
        "group",
        "IOMMU group",
        Status.WARN,
        f"group {group.number} is not viable while {names}",
        "bind those members to vfio-pci as well (`vfiokit bind` takes the whole group), or move "
        "the device to a slot with its own group (ACS)",
    )


def check_intx(sysroot: SysRoot, dev: devmod.PciDevice, patched: bool) -> Check:
    if not dev.intx_pin:
        detail = "no INTx pin: MSI/MSI-X only" if dev.intx_pin == 0 else "INTx pin unknown"
        return Check("intx", "INTx line", Status.INFO, detail)
    if not dev.irq:
        return Check("intx", "INTx line", Status.INFO, "no IRQ routed to the INTx pin")
    if dev.enabled is False:
        return Check(
            "intx",
            "INTx line",
            Status.INFO,
            f"not enabled by any driver: IRQ {dev.irq} is the firmware's legacy routing; the "
            "kernel assigns the real line when a driver (vfio-pci) enables the device",
            f"check again after `vfiokit bind {dev.address}`",
        )
    line = intx.read_line(sysroot, dev.irq)
    others = [d for d in line.devices if d != dev.address]
    handlers = [a for a, d in line.handler_devices.items() if d != dev.address]
    where = f"IRQ {line.irq} ({line.chip or '?'}, {line.trigger or '?'})"
    if not others and not handlers:
        mode = "line level (vfiokit patch)" if patched else "static choice of vfio-pci"
        return Check("intx", "INTx line", Status.OK, f"{where}: alone on its line; masking: {mode}")
    sharers = ", ".join(others + [h for h in handlers if h not in others])
    if dev.intx_masking is False:
        return Check(
            "intx",
            "INTx line",
            Status.FAIL,
            f"{where} is shared with {sharers} and {dev.address} cannot mask INTx at the "
            f"device ({dev.intx_masking_reason}): vfio-pci needs the line exclusively and "
            f"enabling INTx fails with EBUSY ('genirq: Flags mismatch irq {line.irq}')",
            "drive the device with MSI/MSI-X, unbind the other devices on the line, or move the "
            "card to a slot on another line",
        )
    known = "" if dev.intx_masking else f" (INTx Disable support: {dev.intx_masking_reason})"
    return Check(
        "intx",
        "INTx line",
        Status.OK,
        f"{where} shared with {sharers}; masked at the device (PCI 2.3 INTx Disable){known}",
    )


def check_driver(dev: devmod.PciDevice, in_use: list[Use] | None = None,
                 planned: bool = True) -> Check:  # fmt: skip
    """The current driver, and `vfiokit bind` as the remedy only where bind would take the
    device: `in_use` is the binder's own verdict on its plan (the device and the members of
    its group it would move). `planned` False: no plan (no IOMMU group), `in_use` is then
    the device's own verdict, and no remedy leads to a bind it would refuse."""
    if iommu.is_vfio_driver(dev.driver):
        return Check("driver", "driver", Status.OK, f"bound to {dev.driver}")
    bound = f"bound to {dev.driver}" if dev.driver else "no driver"
    in_use = in_use or []
    fatal = [u for u in in_use if u.fatal]
    if not planned:
        nogroup = f"{bound}; VFIO cannot take a device without an IOMMU group"
        if fatal:
            return Check("driver", "driver", Status.INFO,
                         f"{nogroup}, and vfiokit never takes this one: {fatal[0].what} (the "
                         "host would lose it)")  # fmt: skip
        if in_use:
            what = "; ".join(u.what for u in in_use)
            return Check("driver", "driver", Status.INFO,
                         f"{nogroup}, and it is in use by the host ({what}): taking it would "
                         "cut the host off it")  # fmt: skip
        return Check("driver", "driver", Status.INFO, nogroup,
                     "enable the IOMMU first (see the iommu check)")  # fmt: skip
    if fatal:
        return Check("driver", "driver", Status.INFO,
                     f"{bound}; {fatal[0].address} is in use: {fatal[0].what}: vfiokit never "
                     "takes it (the host would lose it)")  # fmt: skip
    if in_use:
        what = "; ".join(f"{u.address}: {u.what}" for u in in_use)
        return Check("driver", "driver", Status.INFO,
                     f"{bound}; in use by the host ({what}): taking it would cut the host off it",
                     f"only once the host no longer needs it (move the address, unmount, stop "
                     f"the process): vfiokit bind {dev.address}")  # fmt: skip
    return Check("driver", "driver", Status.INFO, bound, f"vfiokit bind {dev.address}")


def _plan_uses(sysroot: SysRoot, dev: devmod.PciDevice,
               host: HostState | None) -> tuple[list[Use], bool]:  # fmt: skip
    """What the binder's plan for `dev` finds in use, and whether there is a plan at all;
    without one (no IOMMU group), the in-use verdict on the device alone."""
    from .binding.binder import plan_bind
    from .binding.inuse import InUse

    if dev.iommu_group is not None:
        try:
            return plan_bind(sysroot, [dev.address], host=host).uses, True
        except VfiokitError:
            pass
    return InUse(sysroot, host).of(dev), False


def run(sysroot: SysRoot, address: str | None = None,
        host: HostState | None = None) -> list[Check]:  # fmt: skip
    """All checks; with `address` (canonical), the device checks as well. `host`: the
    mounts and interfaces (tests; read with psutil when None)."""
    state = iommu.read_state(sysroot)
    patched = genirq_patched(sysroot)
    steps: list[Callable[[], Check | list[Check]]] = [
        lambda: check_iommu(sysroot, state),
        lambda: check_irq_remapping(state, virt.hypervisor(sysroot)),
        lambda: check_modules(sysroot),
        lambda: check_dev_vfio(sysroot),
        lambda: check_memlock(ipc_lock=virt.has_capability(sysroot, virt.CAP_IPC_LOCK)),
        lambda: check_patch(sysroot),
        lambda: check_vfiokit_module(sysroot),
    ]
    if address is not None:
        dev = devmod.read_device(sysroot, address)
        used, planned = _plan_uses(sysroot, dev, host)
        steps += [
            lambda: check_group(sysroot, dev, None if planned else used),
            lambda: check_intx(sysroot, dev, patched),
            lambda: check_driver(dev, used, planned),
        ]
    checks: list[Check] = []
    for step in steps:
        result = step()
        checks.extend(result if isinstance(result, list) else [result])
    return checks
