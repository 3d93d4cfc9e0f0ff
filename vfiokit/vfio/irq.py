"""Interrupts of a VFIO device, delivered through eventfds.

* :class:`Intx` — the legacy INTx interrupt with adaptive unmasking: after each interrupt
  the driver handles its device, then calls :meth:`Intx.unmask`, which reads how the
  interrupt was masked (vfiokit-pci's state page, mapped read-only: no syscall; or its
  device feature, one ioctl, from a module without the page) and unmasks that way: at the
  device (toggle INTx Disable in the command register through the config region: set, then
  clear, which is vfio-pci's own config-space unmask) or at the line
  (``VFIO_DEVICE_SET_IRQS`` ``ACTION_UNMASK``). The kernel makes either safe if the state
  changed in between. On stock vfio-pci the mode is vfio-pci's static choice and the unmask
  is always the ioctl. Policy "eventfd" unmasks as QEMU does: a write to an eventfd the
  kernel watches (``ACTION_UNMASK`` with ``DATA_EVENTFD``), no ioctl per interrupt.
* :class:`Vectors` — MSI or MSI-X, one eventfd per vector.

The per-interrupt path does no allocation and no sysfs access: buffers are built once.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno as E
import mmap
import threading
import weakref
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from types import FrameType

from ..errors import InvalidArgument, Unsupported, VfiokitError
from . import uapi as U
from .device import Device, Region
from .sys import error_for, raw_error, warn_unclosed

_SET_IRQS, _FEATURE = U.VFIO_DEVICE_SET_IRQS, U.VFIO_DEVICE_FEATURE  # hot path: no lookups
_BYTE = [bytes([i]) for i in range(256)]  # made once: the device unmask writes these
PCI_COMMAND_HI = 5  # the command register's high byte: INTx Disable is its bit 2
INTX_DISABLE_HI = 0x04
# The byte of mask_device (0 or 1) that holds its value: the low one, little-endian.
_PAGE_MASK_DEVICE = U.vfiokit_intx_page.mask_device.offset


@dataclass(frozen=True)
class IntxState:
    """vfiokit-pci's view of the INTx line (see docs/vfiokit-pci.md)."""

    mode: int
    irq: int
    mask_device: bool
    line_held: bool
    dev_masked: bool
    masked: bool
    line_count: int
    device_count: int

    @classmethod
    def parse(cls, data: bytes) -> IntxState:
        s = U.vfiokit_intx_state.parse(data)
        return cls(
            s.mode,
            s.irq,
            bool(s.mask_device),
            bool(s.line_held),
            bool(s.dev_masked),
            bool(s.masked),
            s.line_count,
            s.device_count,
        )


POLICIES = ("state", "kernel", "eventfd")


def _check_policy(value: str) -> None:
    if value not in POLICIES:
        raise InvalidArgument(f"unknown unmask policy {value!r} ({', '.join(POLICIES)})")


class _EventfdWaiter:
    """wait(), fileno() and async waiting over one or more eventfds."""

    device: Device
    efds: list[int]

    def _disarm(self) -> None:
        raise NotImplementedError

    def _release(self, disarm: bool = True) -> BaseException | None:
        """Disarm the trigger (if `disarm`: only what this object armed), then close every
        eventfd whatever the disarm did; the first error, if any. ENODEV from the disarm
        (the device is gone: surprise removal) is none: nothing is armed any more."""
        first: BaseException | None = None
        if disarm and self.device.fd >= 0:
            try:
                self._disarm()
            except VfiokitError as exc:
                if exc.errno != E.ENODEV:
                    first = exc
        sys = self.device.sys
        for fd in self.efds:
            try:
                sys.close(fd)
            except BaseException as exc:
                first = first or exc
        self.efds = []
        return first

    def __del__(self) -> None:
        fds = list(getattr(self, "efds", ()))
        ufd = getattr(self, "_ufd", -1)
        if fds:
            self.efds = []
            warn_unclosed(self, self.device.sys, fds + ([ufd] if ufd >= 0 else []))

    def close(self) -> None:
        """Disarm and close the eventfds; they are closed even if the disarm fails (the
        error is raised afterwards). A second close does nothing."""
        if not self.efds:
            return
        err = self._release()
        if err is not None:
            raise err

    def fileno(self) -> int:
        """For selectors: readable when the (first) eventfd is signalled."""
        return self.device.sys.pollable(self.efds[0])

    def _drain(self, fds: list[int]) -> int:
        """Read the counters of the signalled eventfds among `fds` (never blocks, also
        for Intx's blocking eventfd: only the ready ones are read)."""
        sys = self.device.sys
        return sum(sys.eventfd_read(fd) for fd in sys.wait_readable(fds, 0))

    async def wait_async(self) -> int:
        """Wait in an asyncio loop; returns the number of interrupts signalled."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        fds = list(self.efds)

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        pollable = [self.device.sys.pollable(fd) for fd in fds]
        for fd in pollable:
            loop.add_reader(fd, ready)
        try:
            await fut
        finally:
            for fd in pollable:
                loop.remove_reader(fd)
        return self._drain(fds)


class Intx(_EventfdWaiter):
    """The device's INTx, enabled with an eventfd trigger on creation."""

    def __init__(self, device: Device, policy: str = "state"):
        self.vfiokit = False
        info = device.irq_info(U.VFIO_PCI_INTX_IRQ_INDEX)
        if info.count < 1 or not info.eventfd:
            raise Unsupported(
                f"{device.address} has no INTx (no interrupt pin, or INTx hidden by VFIO)",
                remedy="use MSI or MSI-X",
            )
        self.device = device
        _check_policy(policy)
        self._policy = policy
        self._ufd = -1  # the unmask eventfd, once policy "eventfd" armed it
        # vfiokit-pci's state page, mapped read-only: policy "state" reads the mask the
        # last interrupt got from memory, no syscall (None: a module without the page).
        # The mmap object itself, indexed per unmask: no buffer export, so a Device.close()
        # before this Intx's can still unmap it (a read then raises EBADF).
        self._page_region: Region | None = None
        self._page: mmap.mmap | None = None
        sys = device.sys
        # Blocking: wait() with no time-out is then one read(2), no poll first.
        self.efds = [sys.eventfd(nonblock=False)]
        self._efd = self.efds[0]
        # Non-empty while interrupts() may unmask with the plain ioctl on the fds it holds:
        # policy "kernel", this Intx and its Device open. Emptied by the policy setter,
        # _release() and the Device's close (device_closing()), so a paused loop never
        # uses an fd number after its close. A list: its truth test is the cheapest check
        # per interrupt (docs/benchmarks.md).
        self._armed: list[int] = []
        # The interrupts() loops made so far (weakly): counts adds their own unmasks.
        self._loops: weakref.WeakSet[Generator[int, None, None]] = weakref.WeakSet()
        try:
            device.set_irqs(
                U.VFIO_PCI_INTX_IRQ_INDEX,
                U.VFIO_IRQ_SET_DATA_EVENTFD | U.VFIO_IRQ_SET_ACTION_TRIGGER,
                0,
                1,
                eventfds=self.efds,
            )
        except BaseException:
            sys.close(self.efds[0])
            self.efds = []
            raise
        try:
            self._setup(device, policy)
        except BaseException:
            self._release()  # disarmed and closed: the set-up error is the one to see
            raise

    def _setup(self, device: Device, policy: str) -> None:
        # Built once per thread: the per-interrupt path only issues syscalls with these.
        # The kernel writes into the state buffer (fcntl copies every buffer back), so no
        # two threads share one: each thread gets copies the first time it unmasks.
        self._tls = threading.local()
        self._unmask_template = U.vfio_irq_set.new(
            flags=U.VFIO_IRQ_SET_DATA_NONE | U.VFIO_IRQ_SET_ACTION_UNMASK,
            index=U.VFIO_PCI_INTX_IRQ_INDEX,
            start=0,
            count=1,
        ).to_bytes()
        hdr = ctypes.sizeof(U.vfio_device_feature)
        self._state_size = ctypes.sizeof(U.vfiokit_intx_state)
        self._state_template = U.vfio_device_feature.new(
            self._state_size,
            flags=U.VFIOKIT_DEVICE_FEATURE_INTX_STATE | U.VFIO_DEVICE_FEATURE_GET,
        ).to_bytes() + bytearray(self._state_size)
        self._mask_device_at = hdr + U.vfiokit_intx_state.mask_device.offset
        self._cmd_hi_offset = device.config.offset + PCI_COMMAND_HI
        self.vfiokit = self._probe_vfiokit()
        if self.vfiokit:
            self._map_page(device)
        self._n_line = self._n_device = self._n_eventfd = self._n_kernel = 0
        sys = device.sys
        self._ioctl = sys.ioctl  # bound once: the per-interrupt path looks up less
        # The per-interrupt path calls the raw builtins (no frame of the syscall layer) and
        # types their errors itself. The unmask's argument is only read by the kernel
        # (fcntl copies the same bytes back), so every thread can share it.
        self._raw_ioctl, self._raw_read = sys.raw_ioctl, sys.raw_eventfd_read
        self._raw_write = sys.raw_eventfd_write
        self._unmask_arg = bytearray(self._unmask_template)
        self.policy = policy  # after the trigger is armed: "eventfd" needs INTx enabled
        device._fd_users.add(self)

    @property
    def policy(self) -> str:
        """ "state": read vfiokit-pci's state and unmask at the device or the line;
        "kernel": one unmask ioctl, vfiokit-pci (or vfio-pci) picks;
        "eventfd": one eventfd write, the kernel unmasks as for the ioctl (armed the first
        time this policy is chosen; it counts under "eventfd")."""
        return self._policy

    @policy.setter
    def policy(self, value: str) -> None:
        _check_policy(value)
        if value == "eventfd" and self._ufd < 0:
            self._arm_unmask_eventfd()
        self._policy = value
        # The unmask path is chosen here, once, not tested on every interrupt.
        self._armed.clear()  # refilled below for "kernel" while everything is open
        if value == "eventfd":
            self.unmask = self._unmask_eventfd  # type: ignore[method-assign]
        elif value == "state" and self._page is not None:
            self.unmask = self._unmask_page  # type: ignore[method-assign]
        elif value == "state" and self.vfiokit:
            self.unmask = self._unmask_state  # type: ignore[method-assign]
        else:
            self.unmask = self._unmask_kernel  # type: ignore[method-assign]
            if self._efd >= 0 and self.device.fd >= 0:  # never the fast path once closed
                self._armed.append(1)

    def device_closing(self) -> None:
        """The Device's fd closes next: paused interrupts() loops leave their fast path."""
        self._armed.clear()

    def _arm_unmask_eventfd(self) -> None:
        """VFIO_IRQ_SET_ACTION_UNMASK | DATA_EVENTFD: the kernel unmasks INTx whenever
        the eventfd is written (its virqfd), as QEMU's KVM path does."""
        sys = self.device.sys
        ufd = sys.eventfd()
        try:
            self.device.set_irqs(
                U.VFIO_PCI_INTX_IRQ_INDEX,
                U.VFIO_IRQ_SET_DATA_EVENTFD | U.VFIO_IRQ_SET_ACTION_UNMASK,
                0,
                1,
                eventfds=[ufd],
            )
        except BaseException:
            sys.close(ufd)
            raise
        self._ufd = ufd

    @property
    def counts(self) -> dict[str, int]:
        """Unmasks so far by how: "line", "device", "kernel" (and "eventfd" once that
        policy was chosen). A snapshot: plain int counters on the per-interrupt path."""
        kernel = self._n_kernel
        for loop in list(self._loops):  # a loop adds its own count here when it ends
            frame: FrameType | None = getattr(loop, "gi_frame", None)  # None once ended
            if frame is not None:
                kernel += frame.f_locals.get("k", 0)
        out = {"line": self._n_line, "device": self._n_device, "kernel": kernel}
        if self._ufd >= 0 or self._n_eventfd:
            out["eventfd"] = self._n_eventfd
        return out

    def unmask_eventfd(self) -> int:
        """The eventfd whose write unmasks INTx (policy "eventfd" arms it), for a loop
        that writes it itself; -1 if not armed."""
        return self._ufd

    def _thread_args(self) -> tuple[bytearray, bytearray]:
        """This thread's (state, unmask) ioctl buffers, made on its first use."""
        tls = self._tls
        tls.args = bytearray(self._state_template), bytearray(self._unmask_template)
        return tls.args  # type: ignore[no-any-return]

    def _map_page(self, device: Device) -> None:
        region = device.find_region(U.VFIOKIT_REGION_TYPE, U.VFIOKIT_REGION_SUBTYPE_INTX_PAGE)
        if region is None:
            return
        try:
            view = region.mmap()
        except VfiokitError:  # a sandbox or an older module refusing it: the feature works
            return
        page = view.obj
        view.release()
        assert isinstance(page, mmap.mmap)
        if int.from_bytes(page[0:4], "little") < 1:  # versions only append fields
            region.unmap(page)
            return
        self._page_region, self._page = region, page

    @property
    def page_mapped(self) -> bool:
        """Whether policy "state" reads vfiokit-pci's state page (no syscall) rather than
        its state feature (one ioctl) before each unmask."""
        return self._page is not None and not self._page.closed

    def _probe_vfiokit(self) -> bool:
        try:
            state = self._thread_args()[0]
            self.device.sys.ioctl(self.device.fd, U.VFIO_DEVICE_FEATURE, state)
            return True
        except VfiokitError as exc:
            if exc.errno in (22, 25, 95):  # EINVAL, ENOTTY, EOPNOTSUPP: stock vfio-pci
                return False
            raise

    def state(self) -> IntxState | None:
        """The line's state from vfiokit-pci; None on stock vfio-pci."""
        if not self.vfiokit:
            return None
        data = self.device.feature_get(U.VFIOKIT_DEVICE_FEATURE_INTX_STATE, self._state_size)
        return IntxState.parse(data)

    def wait(self, timeout: float | None = None) -> int:
        """Block until the interrupt fires; the number signalled (0 on time-out)."""
        if timeout is None:
            try:
                return self._raw_read(self._efd)
            except VfiokitError:
                raise
            except (OSError, ValueError) as exc:
                raise raw_error("read eventfd", exc) from exc
        sys = self.device.sys
        if not sys.wait_readable(self.efds, timeout):
            return 0
        return sys.eventfd_read(self._efd)

    def interrupts(self) -> Iterator[int]:
        """The interrupts as they come, for a driver's loop::

            for n in intx.interrupts():
                handle(device)  # then the next step unmasks, as the policy says, and waits

        Each step waits (as :meth:`wait` with no time-out) and yields the number signalled;
        the step after it first unmasks (as :meth:`unmask`, also after a policy change).
        Leaving the loop (break, an exception) does not unmask: the last interrupt stays
        masked, as with a handler that never called unmask(), until :meth:`unmask`.

        The fastest way to serve INTx from Python: one generator resume per interrupt
        instead of two method calls (under policy "kernel" the unmask is the ioctl itself;
        see docs/benchmarks.md); errors are typed as everywhere else.
        """
        loop = self._loop()
        self._loops.add(loop)
        return loop

    def _loop(self) -> Generator[int, None, None]:
        # Everything per interrupt is in locals: under TCG each bytecode costs tens of
        # nanoseconds and shows in the round trip (docs/benchmarks.md). The fds are read
        # once, here: `armed` goes empty before either is closed, and the loop checks it
        # before every use after the first. The count of its own unmasks is a local too,
        # which `counts` reads from the paused frame (an attribute's or a list item's
        # update per interrupt cost 3-4% of the round trips), folded in when the loop ends.
        read, ioctl, arg, armed = self._raw_read, self._raw_ioctl, self._unmask_arg, self._armed
        efd, fd, req = self._efd, self.device.fd, _SET_IRQS
        k = 0
        try:
            while True:
                try:
                    n = read(efd)
                except VfiokitError:
                    raise
                except (OSError, ValueError) as exc:
                    raise raw_error("read eventfd", exc) from exc
                yield n
                if not armed:  # another policy, or this Intx or its Device closed meanwhile
                    if self._efd < 0 or self.device.fd < 0:
                        raise error_for("interrupts() after close", E.EBADF)
                    self.unmask()
                    continue
                try:
                    ioctl(fd, req, arg, True)
                except VfiokitError:
                    raise
                except (OSError, ValueError) as exc:
                    raise raw_error("VFIO_DEVICE_SET_IRQS", exc) from exc
                k += 1
        finally:
            self._n_kernel += k
            k = 0  # counts may still see this frame until it is gone

    def unmask(self) -> str:
        """Unmask after handling the device; returns how: "line", "device", "kernel" or
        "eventfd".

        (The policy setter points `unmask` at the implementation for the policy.)
        """
        return self._unmask_kernel()

    def _unmask_state(self) -> str:
        fd = self.device.fd
        try:
            arg, unmask = self._tls.args
        except AttributeError:
            arg, unmask = self._thread_args()
        ioctl = self._ioctl
        ioctl(fd, _FEATURE, arg)
        if arg[self._mask_device_at]:
            return self._unmask_device()
        ioctl(fd, _SET_IRQS, unmask)
        self._n_line += 1
        return "line"

    def _unmask_page(self) -> str:
        """Policy "state" with the state page: the mask the last interrupt got, read from
        memory. A stale value (a sharer came or went since) is safe: both unmasks undo
        whichever mask is in effect."""
        try:
            at_device = self._page[_PAGE_MASK_DEVICE]  # type: ignore[index]
        except ValueError as exc:  # unmapped: this Intx or its Device closed meanwhile
            raise error_for("read vfiokit-pci's state page", E.EBADF) from exc
        if at_device:
            return self._unmask_device()
        try:
            self._raw_ioctl(self.device.fd, _SET_IRQS, self._unmask_arg, True)
        except VfiokitError:
            raise
        except (OSError, ValueError) as exc:
            raise raw_error("VFIO_DEVICE_SET_IRQS", exc) from exc
        self._n_line += 1
        return "line"

    def _unmask_device(self) -> str:
        # A write of COMMAND unmasks only where the user's INTx Disable changes (vfio-pci's
        # rule): set it, then clear it, around the byte as it is now.
        dev = self.device
        sys, fd, off = dev.sys, dev.fd, self._cmd_hi_offset
        hi = sys.pread(fd, 1, off)[0] & ~INTX_DISABLE_HI
        sys.pwrite(fd, _BYTE[hi | INTX_DISABLE_HI], off)
        sys.pwrite(fd, _BYTE[hi], off)
        self._n_device += 1
        return "device"

    def _unmask_eventfd(self) -> str:
        try:
            self._raw_write(self._ufd, 1)
        except VfiokitError:
            raise
        except (OSError, ValueError) as exc:
            raise raw_error("write eventfd", exc) from exc
        self._n_eventfd += 1
        return "eventfd"

    def _unmask_kernel(self) -> str:
        try:
            self._raw_ioctl(self.device.fd, _SET_IRQS, self._unmask_arg, True)
        except VfiokitError:
            raise
        except (OSError, ValueError) as exc:
            raise raw_error("VFIO_DEVICE_SET_IRQS", exc) from exc
        self._n_kernel += 1
        return "kernel"

    def mask(self) -> None:
        self.device.set_irqs(
            U.VFIO_PCI_INTX_IRQ_INDEX, U.VFIO_IRQ_SET_DATA_NONE | U.VFIO_IRQ_SET_ACTION_MASK, 0, 1
        )

    def trigger(self) -> None:
        """Loopback: make VFIO signal the eventfd (testing)."""
        self.device.set_irqs(
            U.VFIO_PCI_INTX_IRQ_INDEX,
            U.VFIO_IRQ_SET_DATA_NONE | U.VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            1,
        )

    def _disarm(self) -> None:
        self.device.set_irqs(
            U.VFIO_PCI_INTX_IRQ_INDEX,
            U.VFIO_IRQ_SET_DATA_NONE | U.VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            0,
        )

    def _release(self, disarm: bool = True) -> BaseException | None:
        # wait() after close: EBADF, not a reused fd number; a paused interrupts() loop
        # takes its slow path (armed empty) and stops there, before any unmask.
        self._efd = -1
        self._armed.clear()
        first = super()._release(disarm)  # disabling INTx also ends the unmask eventfd's use
        if self._page is not None and self._page_region is not None:
            if self.unmask == self._unmask_page:
                self.unmask = self._unmask_state  # type: ignore[method-assign]  # as without
            try:
                # This Intx's mapping only: the Region is the device's, shared. The closed
                # mmap stays referenced: a racing unmask gets EBADF, not a TypeError.
                self._page_region.unmap(self._page)
            except BaseException as exc:
                first = first or exc
        if self._ufd >= 0:
            ufd, self._ufd = self._ufd, -1
            try:
                self.device.sys.close(ufd)
            except BaseException as exc:
                first = first or exc
        return first


class Vectors(_EventfdWaiter):
    """MSI (index 1) or MSI-X (index 2) with `count` vectors, one eventfd each."""

    def __init__(self, device: Device, index: int, count: int):
        if index not in (U.VFIO_PCI_MSI_IRQ_INDEX, U.VFIO_PCI_MSIX_IRQ_INDEX):
            raise VfiokitError(f"index {index} is neither MSI (1) nor MSI-X (2)")
        info = device.irq_info(index)
        kind = "MSI" if index == U.VFIO_PCI_MSI_IRQ_INDEX else "MSI-X"
        if not 1 <= count <= info.count:
            raise Unsupported(f"{device.address} offers {info.count} {kind} vectors, not {count}")
        self.device = device
        self.index = index
        self.efds = []
        try:
            for _ in range(count):
                self.efds.append(device.sys.eventfd())
            device.set_irqs(
                index,
                U.VFIO_IRQ_SET_DATA_EVENTFD | U.VFIO_IRQ_SET_ACTION_TRIGGER,
                0,
                count,
                eventfds=self.efds,
            )
        except BaseException:
            # The eventfds made so far. Nothing to disarm: arming is the last step, and
            # a disarm here would switch off vectors another object of this index armed.
            self._release(disarm=False)
            raise

    def wait(self, timeout: float | None = None) -> list[int]:
        """Block until any vector fires; the indexes of the vectors that did."""
        ready = self.device.sys.wait_readable(self.efds, timeout)
        return [i for i, fd in enumerate(self.efds) if fd in ready and self._drain([fd])]

    def trigger(self, vector: int) -> None:
        self.device.set_irqs(
            self.index, U.VFIO_IRQ_SET_DATA_NONE | U.VFIO_IRQ_SET_ACTION_TRIGGER, vector, 1
        )

    def _disarm(self) -> None:
        self.device.set_irqs(
            self.index, U.VFIO_IRQ_SET_DATA_NONE | U.VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0
        )
