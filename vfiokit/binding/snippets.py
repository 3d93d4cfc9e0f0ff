"""What to give a VMM for a device bound to VFIO: QEMU arguments and a libvirt hostdev."""

from __future__ import annotations

from ..address import PciAddress


def qemu_args(addresses: list[str], iommufd: bool = False) -> list[str]:
    """QEMU arguments that pass the devices through (one -device each).

    With iommufd, one `-object iommufd` is shared by all devices (QEMU >= 9.0); otherwise
    QEMU opens /dev/vfio/<group> through the legacy container.
    """
    out: list[str] = []
    if iommufd:
        out += ["-object", "iommufd,id=iommufd0"]
    for i, addr in enumerate(addresses):
        opts = f"vfio-pci,host={addr},id=hostdev{i}"
        if iommufd:
            opts += ",iommufd=iommufd0"
        out += ["-device", opts]
    return out


def libvirt_hostdev(address: str) -> str:
    """A <hostdev> element for `virsh attach-device` or a domain's <devices>.

    managed='no': vfiokit already bound the device, so libvirt must not re-bind it.
    """
    a = PciAddress.parse(address)
    return (
        "<hostdev mode='subsystem' type='pci' managed='no'>\n"
        "  <driver name='vfio'/>\n"
        "  <source>\n"
        f"    <address domain='0x{a.domain:04x}' bus='0x{a.bus:02x}' slot='0x{a.device:02x}'"
        f" function='0x{a.function:x}'/>\n"
        "  </source>\n"
        "</hostdev>\n"
    )
