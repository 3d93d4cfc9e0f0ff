"""Is this host a virtual machine, and is it in a container without the capabilities root
usually has? Read from the SysRoot: DMI strings, /proc/cpuinfo, /proc/self/status."""

from __future__ import annotations

from .sysroot import SysRoot

CAP_IPC_LOCK = 14  # linux/capability.h
_VM_MARKS = ("QEMU", "KVM", "VMware", "VirtualBox", "Xen", "Bochs", "Virtual Machine")


def hypervisor(sysroot: SysRoot) -> str | None:
    """What the DMI strings say the machine is (e.g. "QEMU Standard PC (Q35 + ICH9, 2009)")
    when it is a VM, "a hypervisor" when only the CPU's hypervisor flag says so, else None."""
    vendor = sysroot.read("/sys/class/dmi/id/sys_vendor") or ""
    product = sysroot.read("/sys/class/dmi/id/product_name") or ""
    if any(m in vendor or m in product for m in _VM_MARKS):
        return " ".join(x for x in (vendor, product) if x)
    for line in (sysroot.read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("flags") and "hypervisor" in line.split(":", 1)[-1].split():
            return "a hypervisor"
    return None


def has_capability(sysroot: SysRoot, bit: int) -> bool | None:
    """Whether this process has capability `bit` in its effective set (CapEff), None when
    /proc/self/status does not say."""
    for line in (sysroot.read("/proc/self/status") or "").splitlines():
        if line.startswith("CapEff:"):
            try:
                return bool(int(line.split()[1], 16) >> bit & 1)
            except (IndexError, ValueError):
                return None
    return None
