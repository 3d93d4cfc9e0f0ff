"""Small, test-only VFIO and binding helpers for the VM tests of the test bed itself.

These use the stdlib only (fcntl, struct, os) with the ioctl numbers and layouts of
../shared/docs/kernel-reference.md §4, so that the test bed is proven independently of
the vfiokit API that is built on top of it. Every function writes to sysfs: they are only
ever called from tests/vm, whose conftest refuses to run outside the test VM.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import select
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

PCI = Path("/sys/bus/pci")

VFIO_GET_API_VERSION = 0x3B64
VFIO_CHECK_EXTENSION = 0x3B65
VFIO_SET_IOMMU = 0x3B66
VFIO_GROUP_GET_STATUS = 0x3B67
VFIO_GROUP_SET_CONTAINER = 0x3B68
VFIO_GROUP_GET_DEVICE_FD = 0x3B6A
VFIO_DEVICE_GET_REGION_INFO = 0x3B6C
VFIO_DEVICE_GET_IRQ_INFO = 0x3B6D
VFIO_DEVICE_SET_IRQS = 0x3B6E
VFIO_TYPE1v2_IOMMU = 3

IRQ_SET_DATA_NONE = 1
IRQ_SET_DATA_BOOL = 2
IRQ_SET_DATA_EVENTFD = 4
IRQ_SET_ACTION_MASK = 8
IRQ_SET_ACTION_UNMASK = 0x10
IRQ_SET_ACTION_TRIGGER = 0x20
INTX = 0

VFIO_DEVICE_FEATURE = 0x3B75
VFIO_DEVICE_FEATURE_GET = 1 << 16
VFIOKIT_FEATURE_INTX_STATE = 0xFA00
INTX_STATE = struct.Struct("8IQQ")  # kmod/vfiokit_pci/vfiokit_pci_uapi.h
INTX_STATE_FIELDS = (
    "version",
    "mode",
    "irq",
    "mask_device",
    "line_held",
    "dev_masked",
    "masked",
    "reserved",
    "line_count",
    "device_count",
)
CONFIG_REGION = 7
PCI_COMMAND = 4
COMMAND_INTX_DISABLE = 0x400

EDU_IRQ_STATUS = 0x24
EDU_IRQ_RAISE = 0x60
EDU_IRQ_ACK = 0x64


def driver_of(bdf: str) -> str | None:
    link = PCI / "devices" / bdf / "driver"
    return os.path.basename(os.readlink(link)) if link.is_symlink() else None


def _write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def bind(bdf: str, driver: str) -> None:
    """Bind through driver_override; the override is cleared again afterwards."""
    dev = PCI / "devices" / bdf
    if driver_of(bdf) == driver:
        return
    if driver_of(bdf):
        _write(dev / "driver" / "unbind", bdf)
    _write(dev / "driver_override", driver)
    try:
        _write(PCI / "drivers_probe", bdf)
    finally:
        _write(dev / "driver_override", "\n")
    if driver_of(bdf) != driver:
        raise RuntimeError(f"{bdf} did not bind to {driver} (driver now {driver_of(bdf)})")


# How long an unbind may take. vfio-pci's waits for every user of the device to let go,
# and a test that leaked an fd or a BAR mapping would otherwise hang the whole VM pass.
UNBIND_TIMEOUT = 60.0


def unbind(bdf: str) -> None:
    """Unbind the driver; fails (instead of hanging) if it waits longer than UNBIND_TIMEOUT.
    The stuck write stays behind in a daemon thread: the device is unusable afterwards."""
    if not driver_of(bdf):
        return
    path = PCI / "devices" / bdf / "driver" / "unbind"
    errors: list[BaseException] = []

    def write() -> None:
        try:
            _write(path, bdf)
        except BaseException as exc:  # handed to the caller
            errors.append(exc)

    t = threading.Thread(target=write, name=f"unbind {bdf}", daemon=True)
    t.start()
    t.join(UNBIND_TIMEOUT)
    if t.is_alive():
        raise AssertionError(
            f"unbinding {bdf} still waits after {UNBIND_TIMEOUT:.0f} s: something keeps the "
            "device open (a leaked fd, or an mmap of a BAR outliving its device)"
        )
    if errors:
        raise errors[0]


@contextlib.contextmanager
def bound(bdf: str, driver: str) -> Iterator[None]:
    before = driver_of(bdf)
    bind(bdf, driver)
    try:
        yield
    finally:
        unbind(bdf)
        if before:
            bind(bdf, before)


def group_of(bdf: str) -> str:
    return os.path.basename(os.readlink(PCI / "devices" / bdf / "iommu_group"))


class VfioDevice:
    """A device opened through the legacy container/group uAPI, with BAR0 mmapped."""

    def __init__(self, bdf: str):
        self.bdf = bdf
        self.container = os.open("/dev/vfio/vfio", os.O_RDWR | os.O_CLOEXEC)
        self.group = os.open(f"/dev/vfio/{group_of(bdf)}", os.O_RDWR | os.O_CLOEXEC)
        assert fcntl.ioctl(self.container, VFIO_GET_API_VERSION) == 0
        assert fcntl.ioctl(self.container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) > 0
        status = bytearray(struct.pack("II", 8, 0))
        fcntl.ioctl(self.group, VFIO_GROUP_GET_STATUS, status, True)
        assert struct.unpack("II", status)[1] & 1, "group not viable"
        fcntl.ioctl(self.group, VFIO_GROUP_SET_CONTAINER, struct.pack("i", self.container))
        fcntl.ioctl(self.container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)
        self.fd = fcntl.ioctl(
            self.group, VFIO_GROUP_GET_DEVICE_FD, bytearray(bdf.encode() + b"\0"), True
        )
        self.efd: int | None = None
        info = bytearray(struct.pack("IIIIQQ", 32, 0, 0, 0, 0, 0))
        fcntl.ioctl(self.fd, VFIO_DEVICE_GET_REGION_INFO, info, True)
        _, _flags, _, _, size, offset = struct.unpack("IIIIQQ", info)
        self.bar0 = mmap.mmap(
            self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=offset
        )
        self.bar0_view = memoryview(self.bar0).cast("I")

    def read32(self, off: int) -> int:
        return self.bar0_view[off // 4]

    def write32(self, off: int, value: int) -> None:
        self.bar0_view[off // 4] = value

    def irq_info(self, index: int = INTX) -> tuple[int, int]:
        buf = bytearray(struct.pack("IIII", 16, 0, index, 0))
        fcntl.ioctl(self.fd, VFIO_DEVICE_GET_IRQ_INFO, buf, True)
        _, flags, _, count = struct.unpack("IIII", buf)
        return flags, count

    def enable_intx(self) -> int:
        if self.efd is not None:
            os.close(self.efd)
        self.efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        arg = struct.pack(
            "5Ii", 24, IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, INTX, 0, 1, self.efd
        )
        fcntl.ioctl(self.fd, VFIO_DEVICE_SET_IRQS, arg)
        return self.efd

    def unmask_intx(self) -> None:
        arg = struct.pack("5I", 20, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK, INTX, 0, 1)
        fcntl.ioctl(self.fd, VFIO_DEVICE_SET_IRQS, arg)

    def disable_intx(self) -> None:
        arg = struct.pack("5I", 20, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, INTX, 0, 0)
        fcntl.ioctl(self.fd, VFIO_DEVICE_SET_IRQS, arg)

    def intx_state(self) -> dict[str, int]:
        """vfiokit-pci's private INTx state feature."""
        buf = bytearray(
            struct.pack(
                "II", 8 + INTX_STATE.size, VFIO_DEVICE_FEATURE_GET | VFIOKIT_FEATURE_INTX_STATE
            )
        )
        buf += bytes(INTX_STATE.size)
        fcntl.ioctl(self.fd, VFIO_DEVICE_FEATURE, buf, True)
        return dict(zip(INTX_STATE_FIELDS, INTX_STATE.unpack_from(buf, 8), strict=True))

    def config_offset(self) -> int:
        info = bytearray(struct.pack("IIIIQQ", 32, 0, CONFIG_REGION, 0, 0, 0))
        fcntl.ioctl(self.fd, VFIO_DEVICE_GET_REGION_INFO, info, True)
        return struct.unpack("IIIIQQ", info)[5]

    def read_command(self) -> int:
        return int.from_bytes(os.pread(self.fd, 2, self.config_offset() + PCI_COMMAND), "little")

    def write_command(self, value: int) -> None:
        os.pwrite(self.fd, value.to_bytes(2, "little"), self.config_offset() + PCI_COMMAND)

    def unmask_by_config(self) -> None:
        """The config-space unmask of vfio-pci: toggle INTx Disable (set, then clear).

        Only a change of INTx Disable masks or unmasks; a write that leaves it clear (the
        read-modify-write of a driver setting Bus Master) leaves the interrupt masked.
        """
        cmd = self.read_command() & ~COMMAND_INTX_DISABLE
        self.write_command(cmd | COMMAND_INTX_DISABLE)
        self.write_command(cmd)

    def set_irqs(
        self, flags: int, index: int = INTX, start: int = 0, count: int = 1, data: bytes = b""
    ) -> int:
        """VFIO_DEVICE_SET_IRQS; 0 or the errno (for comparing drivers)."""
        try:
            self.set_irqs_raw(20 + len(data), flags, index, start, count, data)
        except OSError as exc:
            return exc.errno or -1
        return 0

    def config_read(self, off: int, size: int) -> bytes:
        return os.pread(self.fd, size, self.config_offset() + off)

    def config_write(self, off: int, data: bytes) -> None:
        os.pwrite(self.fd, data, self.config_offset() + off)

    def set_irqs_raw(
        self, argsz: int, flags: int, index: int, start: int, count: int, data: bytes = b""
    ) -> None:
        fcntl.ioctl(
            self.fd,
            VFIO_DEVICE_SET_IRQS,
            struct.pack("5I", argsz, flags, index, start, count) + data,
        )

    def wait_irq(self, timeout: float = 2.0) -> int:
        """Read the eventfd: the number of interrupts signalled (0 on time-out)."""
        assert self.efd is not None
        r, _, _ = select.select([self.efd], [], [], timeout)
        if not r:
            return 0
        return int.from_bytes(os.read(self.efd, 8), "little")

    def close(self) -> None:
        if self.efd is not None:
            with contextlib.suppress(OSError):
                self.disable_intx()
            os.close(self.efd)
            self.efd = None
        self.bar0_view.release()
        self.bar0.close()
        for fd in (self.fd, self.group, self.container):
            os.close(fd)

    def __enter__(self) -> VfioDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def i32(fd: int) -> bytes:
    return struct.pack("=i", fd)


def eventfd() -> int:
    return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)


def signalled(efds: int | list[int], timeout: float = 0.3, settle: float = 0.02) -> int:
    """Wait up to `timeout` for the first signal on any of `efds`, let `settle` pass, and
    return the sum of their counts (draining them)."""
    fds = [efds] if isinstance(efds, int) else efds
    r, _, _ = select.select(fds, [], [], timeout)
    if not r:
        return 0
    time.sleep(settle)
    total = 0
    for fd in fds:
        with contextlib.suppress(BlockingIOError):
            total += int.from_bytes(os.read(fd, 8), "little")
    return total


def sysfs_config(bdf: str, off: int, size: int) -> int:
    """The device's real config space (sysfs), little-endian."""
    with open(PCI / "devices" / bdf / "config", "rb") as f:
        f.seek(off)
        return int.from_bytes(f.read(size), "little")


def dmesg() -> str:
    import subprocess

    return subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout


def irq_count(irq: int) -> int:
    for line in Path("/proc/interrupts").read_text().splitlines()[1:]:
        label, _, rest = line.partition(":")
        if label.strip() == str(irq):
            return sum(int(t) for t in rest.split() if t.isdigit())
    return 0


def wait_for(pred, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return bool(pred())


def masked_state(dev: VfioDevice, timeout: float = 2.0) -> dict[str, int]:
    """vfiokit-pci's INTx state once the mask its handler chose shows (the line held or the
    device masked). Under threadirqs the handler signals the eventfd from its thread, and
    genirq holds the line only when that thread returns (irq_finalize_oneshot()): a look
    right after the signal may find the interrupt masked in the driver's view and the line
    not held yet. The user's view (`masked`) is 1 at every look."""
    end = time.monotonic() + timeout
    while True:
        st = dev.intx_state()
        assert st["masked"] == 1, st
        if st["line_held"] or st["dev_masked"] or time.monotonic() > end:
            return st
        time.sleep(0.002)
