"""A complete userspace driver for QEMU's `edu` device, written as the example to copy.

The device (QEMU docs/specs/edu.rst, PCI 1234:11e8) has one 1 MiB BAR:

    0x00 identification 0xRRrr00ed      0x04 liveness: reads back the inverse
    0x08 factorial: write n, read n!    0x20 status: 0x01 busy, 0x80 interrupt when done
    0x24 interrupt status               0x60 raise interrupt   0x64 acknowledge
    0x80 DMA source  0x88 destination  0x90 count  0x98 command (1 start, 2 to RAM, 4 irq)
    0x40000 the device's 4 KiB DMA buffer; it addresses 28 bits of DMA.
    (QEMU 7.2: a transfer must not end on the buffer's last byte, see DMA_MAX_END.)

    from vfiokit.vfio import open_device
    from vfiokit.drivers.edu import Edu

    with open_device("0000:00:04.0", dma_limit=Edu.DMA_LIMIT) as vd:
        edu = Edu(vd)
        print(edu.identify(), edu.factorial(10))
        assert edu.dma_roundtrip(b"hello") == b"hello"
"""

from __future__ import annotations

import time

from ..errors import VfiokitError
from ..vfio import Intx, VfioDevice

ID = 0x00
LIVENESS = 0x04
FACTORIAL = 0x08
STATUS = 0x20
IRQ_STATUS = 0x24
IRQ_RAISE = 0x60
IRQ_ACK = 0x64
DMA_SRC = 0x80
DMA_DST = 0x88
DMA_COUNT = 0x90
DMA_CMD = 0x98

STATUS_BUSY = 0x01
STATUS_IRQ_ON_DONE = 0x80
IRQ_FACTORIAL = 0x001
IRQ_DMA = 0x100
DMA_START, DMA_TO_RAM, DMA_IRQ = 0x1, 0x2, 0x4
BUFFER = 0x40000
BUFFER_SIZE = 4096
# QEMU up to 7.2 rejects a transfer that ends exactly at the end of the buffer (an
# off-by-one in edu_check_range) and aborts the whole VM with a hardware error: never end
# a transfer on the last byte.
DMA_MAX_END = BUFFER_SIZE - 1
PCI_COMMAND = 0x04
PCI_COMMAND_MEMORY_MASTER = 0x6


class EduError(VfiokitError):
    """The device misbehaved (wrong identity, dead, timed out)."""


class Edu:
    VENDOR, DEVICE = 0x1234, 0x11E8
    DMA_LIMIT = (1 << 28) - 1

    def __init__(self, vd: VfioDevice, *, irq: bool = True, policy: str = "state"):
        self.vd = vd
        bar = vd.device.bar(0)
        self._view = bar.mmap().cast("I")  # 32-bit registers, straight to the device
        self._bar = bar
        ident = self._view[ID // 4]
        if ident & 0xFF != 0xED:
            raise EduError(f"{vd.address} is not an edu device (id register {ident:#010x})")
        # Memory decoding and bus mastering (for DMA).
        cmd = vd.device.config.read(PCI_COMMAND, 2)
        vd.device.config.write(PCI_COMMAND, cmd | PCI_COMMAND_MEMORY_MASTER, 2)
        self.intx: Intx | None = vd.intx(policy) if irq else None

    # -- registers --------------------------------------------------------------------------
    def read(self, reg: int) -> int:
        return self._view[reg // 4]

    def write(self, reg: int, value: int) -> None:
        self._view[reg // 4] = value

    def identify(self) -> tuple[int, int]:
        """(major, minor) version of the device."""
        ident = self.read(ID)
        return ident >> 24, (ident >> 16) & 0xFF

    def alive(self, probe: int = 0x5A5AA5A5) -> bool:
        self.write(LIVENESS, probe)
        return self.read(LIVENESS) == (~probe & 0xFFFFFFFF)

    # -- interrupts -------------------------------------------------------------------------
    def raise_irq(self, bits: int) -> None:
        self.write(IRQ_RAISE, bits)

    def wait_irq(self, timeout: float = 2.0) -> int:
        """Wait for the interrupt, acknowledge it at the device, unmask; the status bits."""
        if self.intx is None:
            raise EduError("this Edu was opened without interrupts")
        if not self.intx.wait(timeout):
            raise EduError(f"no interrupt from {self.vd.address} within {timeout} s")
        status = self.read(IRQ_STATUS)
        self.write(IRQ_ACK, status)
        self.intx.unmask()
        return status

    # -- work ------------------------------------------------------------------------------
    def factorial(self, n: int, *, timeout: float = 2.0) -> int:
        """n! (mod 2**32), computed by the device; completion by interrupt if enabled."""
        if self.intx is not None:
            self.write(STATUS, STATUS_IRQ_ON_DONE)
            self.write(FACTORIAL, n)
            if not self.wait_irq(timeout) & IRQ_FACTORIAL:
                raise EduError("interrupt without the factorial bit")
        else:
            self.write(STATUS, 0)
            self.write(FACTORIAL, n)
            self._poll(STATUS, STATUS_BUSY, timeout)
        return self.read(FACTORIAL)

    def _poll(self, reg: int, busy: int, timeout: float) -> None:
        end = time.monotonic() + timeout
        while self.read(reg) & busy:
            if time.monotonic() > end:
                raise EduError(f"register {reg:#x} still busy after {timeout} s")
            time.sleep(0.0005)

    def _dma(self, src: int, dst: int, count: int, to_ram: bool, timeout: float) -> None:
        if count <= 0:
            raise EduError(f"edu DMA moves at least one byte, not {count}")
        self._bar.write(DMA_SRC, src, 8)
        self._bar.write(DMA_DST, dst, 8)
        self._bar.write(DMA_COUNT, count, 8)
        cmd = DMA_START | (DMA_TO_RAM if to_ram else 0)
        if self.intx is not None:
            self._bar.write(DMA_CMD, cmd | DMA_IRQ, 8)
            if not self.wait_irq(timeout) & IRQ_DMA:
                raise EduError("interrupt without the DMA bit")
        else:
            self._bar.write(DMA_CMD, cmd, 8)
            self._poll(DMA_CMD, DMA_START, timeout)

    @staticmethod
    def _check_window(offset: int, size: int) -> None:
        if offset < 0 or size <= 0 or offset + size > DMA_MAX_END:
            raise EduError(
                f"edu DMA window {offset}+{size} must lie within bytes 0..{DMA_MAX_END - 1} of "
                "its buffer (QEMU 7.2 aborts on a transfer that ends on the last byte)"
            )

    def dma_to_device(self, data: bytes, offset: int = 0, *, timeout: float = 2.0) -> None:
        """Copy `data` from host memory into the device's buffer, through the IOMMU."""
        self._check_window(offset, len(data))
        with self.vd.dma_buffer(len(data)) as buf:
            buf.view[: len(data)] = data
            self._dma(buf.iova, BUFFER + offset, len(data), False, timeout)

    def dma_from_device(self, size: int, offset: int = 0, *, timeout: float = 2.0) -> bytes:
        """Copy `size` bytes of the device's buffer into host memory and return them."""
        self._check_window(offset, size)
        with self.vd.dma_buffer(size) as buf:
            self._dma(BUFFER + offset, buf.iova, size, True, timeout)
            return bytes(buf.view[:size])

    def dma_in(self, iova: int, size: int, offset: int = 0, *, timeout: float = 2.0) -> None:
        """Copy `size` bytes at `iova` (any buffer of the device's DMA space, an
        IommuContext's shared ones too) into the device's buffer at `offset`."""
        self._check_window(offset, size)
        self._dma(iova, BUFFER + offset, size, False, timeout)

    def dma_out(self, iova: int, size: int, offset: int = 0, *, timeout: float = 2.0) -> None:
        """Copy `size` bytes of the device's buffer at `offset` to `iova`."""
        self._check_window(offset, size)
        self._dma(BUFFER + offset, iova, size, True, timeout)

    def dma_roundtrip(self, data: bytes) -> bytes:
        self.dma_to_device(data)
        return self.dma_from_device(len(data))

    def close(self) -> None:
        """Release the BAR mapping. Until then the mapping keeps the device open, even
        after the VfioDevice is closed: an unbind of its driver then waits for it."""
        self._view.release()

    def __enter__(self) -> Edu:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
