"""A small NVMe userspace driver on vfiokit's VFIO API: the second example, after edu.

It takes an NVMe controller the way the spec's initialization section says: disable
(CC.EN 0, wait CSTS.RDY 0 within CAP.TO), the admin queue (AQA, ASQ, ACQ), enable with the
host's page size (CC.MPS within CAP.MPSMIN..MPSMAX), Identify Controller and Identify
Namespace, then one I/O completion queue on MSI-X vector 1 (the admin queue has vector 0)
and one I/O submission queue. Reads and writes use PRPs: PRP1, PRP2 and, for a transfer
over more than two pages, a one-page PRP list; larger transfers are split into several
commands (at most MDTS each), submitted together and matched to their completions by
command id. close() deletes the I/O queues, shuts the controller down (CC.SHN normal,
wait CSTS.SHST complete), disables it so that it does no more DMA, and only then frees
the memory; it does so on every path, including a failed start.

    from vfiokit.vfio import open_device
    from vfiokit.drivers.nvme import Nvme

    with open_device("0000:00:19.0") as vd, Nvme(vd) as nvme:
        print(nvme.controller.serial, nvme.namespace.size)
        nvme.write(8, b"x" * nvme.namespace.block_size)
        assert nvme.read(8, 1) == b"x" * nvme.namespace.block_size

Registers are read and written through the VFIO region (pread/pwrite of the device fd, one
32-bit access each, as the spec allows for every register), not an mmap: BAR0 also holds
the MSI-X table on QEMU's controller, and the fake syscall layer sees every access.
Commands run one call at a time (no thread safety): this is a readable driver, not a fast one.
"""

from __future__ import annotations

import contextlib
import errno as E
import struct
import time
import warnings
from dataclasses import dataclass
from typing import TypeVar

from ..errors import InvalidArgument, NotFound, Unsupported, VfiokitError
from ..vfio import DmaBuffer, Region, Vectors, VfioDevice
from . import nvme_spec as S

PCI_COMMAND = 0x04
PCI_COMMAND_MEMORY_MASTER = 0x6
PCI_CLASS_NVME = 0x010802  # mass storage, non-volatile memory, NVM Express
ADMIN_VECTOR, IO_VECTOR = 0, 1
IO_QID = 1
POLL = 0.1  # seconds between looks at a completion queue when no interrupt came
_O = TypeVar("_O", Vectors, DmaBuffer)


class NvmeError(VfiokitError):
    """The controller failed (fatal status, no answer) or cannot be driven here."""


class NvmeTimeout(NvmeError):
    """The controller did not answer in time."""

    def __init__(self, message: str) -> None:
        super().__init__(message, errno=E.ETIMEDOUT)


class NvmeStatusError(NvmeError):
    """A command completed with an error status: `sct` (status code type), `sc` (status
    code), `dnr` (do not retry) and `more` as the controller posted them."""

    def __init__(self, what: str, sct: int, sc: int, *, dnr: bool, more: bool) -> None:
        name = S.STATUS_NAMES.get((sct, sc), "status")
        super().__init__(f"{what}: {name} (SCT {sct:#x}, SC {sc:#04x})", errno=E.EIO)
        self.sct, self.sc, self.dnr, self.more = sct, sc, dnr, more


class NvmeInvalidCommand(NvmeStatusError, InvalidArgument):
    """The command as sent was refused (invalid opcode, field, namespace, PRP offset, LBA
    out of range): also an InvalidArgument."""


def _status_error(what: str, status: int) -> NvmeStatusError | None:
    sct, sc, more, dnr = S.status_fields(status)
    if sct == S.SCT_GENERIC and sc == S.SC_SUCCESS:
        return None
    generic_invalid = sct == S.SCT_GENERIC and sc in S.INVALID_COMMAND
    cls = NvmeInvalidCommand if generic_invalid else NvmeStatusError
    return cls(what, sct, sc, dnr=dnr, more=more)


@dataclass(frozen=True)
class Controller:
    """What Identify Controller says, in the driver's terms."""

    vendor_id: int
    serial: str
    model: str
    firmware: str
    namespaces: int
    max_transfer: int  # bytes per command (MDTS), 0: no limit of the controller's own
    shutdown_latency: float  # seconds (RTD3E), 0 when not reported


@dataclass(frozen=True)
class Namespace:
    """What Identify Namespace says of the namespace in use."""

    nsid: int
    blocks: int  # NSZE, logical blocks
    capacity: int  # NCAP
    block_size: int  # bytes, from the LBA format in use
    lba_format: int

    @property
    def size(self) -> int:
        return self.blocks * self.block_size


class _Queue:
    """A submission queue and its completion queue, in DMA memory, with their doorbells."""

    def __init__(self, qid: int, depth: int, sq: DmaBuffer, cq: DmaBuffer, stride: int):
        self.qid, self.depth, self.sq, self.cq = qid, depth, sq, cq
        self.sq_doorbell = S.DOORBELLS + 2 * qid * stride
        self.cq_doorbell = S.DOORBELLS + (2 * qid + 1) * stride
        self.tail = 0  # next SQ slot to fill
        self.head = 0  # next CQ slot to look at
        self.phase = 1  # the phase tag a new completion carries; flips at every wrap
        # At most depth - 1 commands in flight (a full SQ has tail + 1 == head), so the
        # command ids are the numbers below that: an id is free again once completed.
        self.free = list(range(depth - 2, -1, -1))
        self.done: dict[int, S.CompletionEntry] = {}


class Nvme:
    """Drive the NVMe controller of `vd`, namespace `nsid`; a context manager.

    `timeout` bounds every command, in seconds; the controller's own CAP.TO bounds
    enabling and disabling it, and `shutdown_timeout` (default: RTD3E, at least 5 s) its
    shutdown. Queue depths are clamped to what CAP.MQES allows.
    """

    def __init__(
        self,
        vd: VfioDevice,
        *,
        nsid: int = 1,
        admin_depth: int = 32,
        io_depth: int = 64,
        timeout: float = 30.0,
        shutdown_timeout: float | None = None,
    ):
        self.vd = vd
        self.timeout = timeout
        self._shutdown_limit = shutdown_timeout
        self.interrupts = [0, 0]  # per MSI-X vector: admin, I/O
        self._closed = False
        self._started = False  # CC.EN written: from here on close() disables
        self._ready = False  # CSTS.RDY seen: from here on close() shuts down
        self._failed = False  # a command timed out: no more I/O
        self._io: _Queue | None = None
        self._owned: list[Vectors | DmaBuffer] = []
        self._bar: Region = vd.device.bar(0)
        try:
            self._start(nsid, admin_depth, io_depth)
        except BaseException:
            with contextlib.suppress(Exception):  # the start's error is the one to see
                self.close()
            raise

    # -- registers ---------------------------------------------------------------------------
    def _r32(self, off: int) -> int:
        return self._bar.read(off, 4)

    def _w32(self, off: int, value: int) -> None:
        self._bar.write(off, value, 4)

    def _w64(self, off: int, value: int) -> None:
        self._w32(off, value & 0xFFFFFFFF)  # low dword first, as the spec allows
        self._w32(off + 4, value >> 32)

    def _wait_csts(self, mask: int, want: int, what: str) -> None:
        end = time.monotonic() + self._ready_timeout
        while (csts := self._r32(S.CSTS)) & mask != want:
            if csts & S.CSTS_CFS and what != "disable":
                raise NvmeError(f"{self.vd.address}: controller fatal status during {what}")
            if time.monotonic() > end:
                raise NvmeTimeout(
                    f"{self.vd.address}: {what} not done after {self._ready_timeout} s "
                    f"(CSTS {csts:#x})"
                )
            time.sleep(0.001)

    # -- bring-up ----------------------------------------------------------------------------
    def _start(self, nsid: int, admin_depth: int, io_depth: int) -> None:
        dev = self.vd.device
        klass = dev.config.read(0x08, 4) >> 8
        if klass != PCI_CLASS_NVME:
            raise NvmeError(f"{self.vd.address} is not an NVMe controller (class {klass:#08x})")
        dev.config.write(
            PCI_COMMAND, dev.config.read(PCI_COMMAND, 2) | PCI_COMMAND_MEMORY_MASTER, 2
        )

        cap = S.Cap.parse(self._r32(S.CAP) | self._r32(S.CAP + 4) << 32)
        self.cap = cap
        self._ready_timeout = max(cap.to, 1) * 0.5
        if not cap.css & 1:
            raise Unsupported(f"{self.vd.address} lacks the NVM command set (CAP.CSS {cap.css:#x})")
        mps = cap.mpsmin  # 4 KiB pages unless the controller wants larger ones
        self.page = 4096 << mps
        if mps > cap.mpsmax or self.vd.allocator.align % self.page:
            raise Unsupported(
                f"{self.vd.address}: controller pages of {self.page} bytes do not match the "
                f"IOMMU's {self.vd.allocator.align}-byte alignment"
            )
        stride = 4 << cap.dstrd
        admin_depth = max(2, min(admin_depth, cap.mqes + 1, 4096))
        io_depth = max(2, min(io_depth, cap.mqes + 1))

        self._disable()
        self._vectors = self._own(self.vd.msix(2))  # before any CQ that signals them
        admin = _Queue(0, admin_depth, *self._queue_memory(admin_depth), stride)
        self._admin = admin
        self._scratch = self._own(self.vd.dma_buffer(max(4096, self.page)))
        self._w32(S.AQA, (admin_depth - 1) << 16 | (admin_depth - 1))
        self._w64(S.ASQ, admin.sq.iova)
        self._w64(S.ACQ, admin.cq.iova)
        cc = (
            S.CC_CSS_NVM
            | mps << S.CC_MPS_SHIFT
            | S.CC_AMS_RR
            | S.SQE_SIZE_LOG2 << S.CC_IOSQES_SHIFT
            | S.CQE_SIZE_LOG2 << S.CC_IOCQES_SHIFT
        )
        self._started = True
        self._w32(S.CC, cc | S.CC_EN)
        self._wait_csts(S.CSTS_RDY, S.CSTS_RDY, "enable")
        self._ready = True

        self.controller = self._identify_controller(cap)
        self.namespace = self._identify_namespace(nsid)
        # One PRP list page per I/O command id: a transfer touches at most page/8 + 1
        # pages, so its list always fits in one page.
        limit = self.page * (self.page // 8)
        if self.controller.max_transfer:
            limit = min(limit, self.controller.max_transfer)
        self.max_transfer = limit // self.namespace.block_size * self.namespace.block_size
        self._prp_lists = self._own(self.vd.dma_buffer(self.page * (io_depth - 1)))

        io = _Queue(IO_QID, io_depth, *self._queue_memory(io_depth), stride)
        qsize = (io_depth - 1) << 16 | IO_QID
        self._admin_command(
            S.SubmissionEntry(
                opcode=S.ADMIN_CREATE_CQ,
                prp1=io.cq.iova,
                cdw10=qsize,
                cdw11=IO_VECTOR << 16 | S.CQ_IRQ_ENABLED | S.QUEUE_PHYS_CONTIG,
            ),
            "Create I/O Completion Queue",
        )
        try:
            self._admin_command(
                S.SubmissionEntry(
                    opcode=S.ADMIN_CREATE_SQ,
                    prp1=io.sq.iova,
                    cdw10=qsize,
                    cdw11=IO_QID << 16 | S.QUEUE_PHYS_CONTIG,
                ),
                "Create I/O Submission Queue",
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self._delete_queue(S.ADMIN_DELETE_CQ, "Delete I/O Completion Queue")
            raise
        self._io = io

    def _own(self, obj: _O) -> _O:
        self._owned.append(obj)
        return obj

    def _queue_memory(self, depth: int) -> tuple[DmaBuffer, DmaBuffer]:
        sq = self._own(self.vd.dma_buffer(depth << S.SQE_SIZE_LOG2))
        cq = self._own(self.vd.dma_buffer(depth << S.CQE_SIZE_LOG2))
        return sq, cq

    def _identify(self, cns: int, nsid: int) -> bytes:
        self._admin_command(
            S.SubmissionEntry(
                opcode=S.ADMIN_IDENTIFY, nsid=nsid, prp1=self._scratch.iova, cdw10=cns
            ),
            f"Identify (CNS {cns})",
        )
        return bytes(self._scratch.view[:4096])

    def _identify_controller(self, cap: S.Cap) -> Controller:
        ident = S.IdentifyController.parse(self._identify(S.CNS_CONTROLLER, 0))

        def fits(sizes: int, log2: int) -> bool:  # bits 3:0 required, 7:4 maximum
            return sizes & 0xF <= log2 <= sizes >> 4

        if not (fits(ident.sqes, S.SQE_SIZE_LOG2) and fits(ident.cqes, S.CQE_SIZE_LOG2)):
            raise Unsupported(
                f"{self.vd.address}: queue entry sizes {ident.sqes:#x}/{ident.cqes:#x} "
                "exclude the standard 64/16 bytes"
            )
        return Controller(
            vendor_id=ident.vid,
            serial=ident.sn.decode("ascii", "replace").strip(),
            model=ident.mn.decode("ascii", "replace").strip(),
            firmware=ident.fr.decode("ascii", "replace").strip(),
            namespaces=ident.nn,
            max_transfer=(4096 << cap.mpsmin) << ident.mdts if ident.mdts else 0,
            shutdown_latency=ident.rtd3e / 1e6,
        )

    def _identify_namespace(self, nsid: int) -> Namespace:
        ident = S.IdentifyNamespace.parse(self._identify(S.CNS_NAMESPACE, nsid))
        if ident.nsze == 0:
            raise NotFound(f"{self.vd.address}: namespace {nsid} is not active")
        index = ident.lba_format_index
        fmt = ident.lbaf[index]
        if fmt.ms:
            raise Unsupported(
                f"{self.vd.address}: namespace {nsid} has {fmt.ms} bytes of metadata per block"
            )
        return Namespace(nsid, ident.nsze, ident.ncap, 1 << fmt.lbads, index)

    # -- commands ----------------------------------------------------------------------------
    def _submit(self, q: _Queue, cmd: S.SubmissionEntry, cid: int | None = None) -> int:
        """Put `cmd` in the next SQ slot under command id `cid` (a free one if None, else
        one taken from q.free by the caller), ring the doorbell; the command id."""
        if cid is None:
            cid = q.free.pop()
        cmd.cid = cid
        slot = q.tail << S.SQE_SIZE_LOG2
        q.sq.view[slot : slot + 64] = bytes(cmd)
        q.tail = (q.tail + 1) % q.depth
        self._w32(q.sq_doorbell, q.tail)
        return cid

    def _reap(self, q: _Queue) -> int:
        """Take every new completion off the CQ; how many there were."""
        n = 0
        view = q.cq.view
        while True:
            at = q.head << S.CQE_SIZE_LOG2
            # The status word (with the phase tag) first, the rest only once it is new:
            # the controller writes the phase last.
            status = view[at + 14] | view[at + 15] << 8
            if status & 1 != q.phase:
                break
            cqe = S.CompletionEntry.parse(view, at)
            if cqe.cid >= q.depth - 1 or cqe.cid in q.free or cqe.cid in q.done:
                raise NvmeError(
                    f"{self.vd.address}: queue {q.qid} completed command id {cqe.cid}, "
                    "which is not in flight"
                )
            q.done[cqe.cid] = cqe
            q.head += 1
            if q.head == q.depth:
                q.head, q.phase = 0, q.phase ^ 1
            n += 1
        if n:
            self._w32(q.cq_doorbell, q.head)
        return n

    def _wait(self, q: _Queue, cid: int, what: str) -> S.CompletionEntry:
        """The completion of command `cid`, waiting on the queue's MSI-X vector (and
        looking at the queue every POLL seconds all the same)."""
        end = time.monotonic() + self.timeout
        while cid not in q.done:
            if self._reap(q):
                continue
            left = end - time.monotonic()
            if left <= 0:
                self._failed = True
                csts = self._r32(S.CSTS)
                fatal = " (controller fatal status)" if csts & S.CSTS_CFS else ""
                raise NvmeTimeout(
                    f"{self.vd.address}: {what} (command id {cid}) not completed after "
                    f"{self.timeout} s{fatal}"
                )
            for vector in self._vectors.wait(min(left, POLL)):
                self.interrupts[vector] += 1
        cqe = q.done.pop(cid)
        q.free.append(cid)
        return cqe

    def _admin_command(self, cmd: S.SubmissionEntry, what: str) -> int:
        cqe = self._wait(self._admin, self._submit(self._admin, cmd), what)
        err = _status_error(what, cqe.status)
        if err is not None:
            raise err
        return int(cqe.result)

    def admin(self, cmd: S.SubmissionEntry, what: str = "admin command") -> int:
        """Run one admin command (its cid is set here); DW0 of its completion. An error
        status raises NvmeStatusError."""
        self._live()
        return self._admin_command(cmd, what)

    def _delete_queue(self, opcode: int, what: str) -> None:
        self._admin_command(S.SubmissionEntry(opcode=opcode, cdw10=IO_QID), what)

    # -- I/O ---------------------------------------------------------------------------------
    def _live(self) -> _Queue:
        if self._closed or self._io is None:
            raise NvmeError(f"{self.vd.address}: the NVMe driver is closed")
        if self._failed:
            raise NvmeError(
                f"{self.vd.address}: a command timed out; its memory may still be in use",
                remedy="close() (it disables the controller) and start again",
            )
        return self._io

    def _prps(self, cid: int, iova: int, length: int) -> tuple[int, int]:
        """PRP1 and PRP2 for `length` bytes at `iova`: PRP2 is the second page, or the
        PRP list (this command id's page of the list buffer) past two pages."""
        page = self.page
        first = page - iova % page  # PRP1 may start inside a page; the rest are whole pages
        if length <= first:
            return iova, 0
        if length <= first + page:
            return iova, iova + first
        pages = [iova + first + i * page for i in range(-(-(length - first) // page))]
        at = cid * page
        self._prp_lists.view[at : at + 8 * len(pages)] = struct.pack(f"<{len(pages)}Q", *pages)
        return iova, self._prp_lists.iova + at

    def _rw(self, opcode: int, buf: DmaBuffer, lba: int, count: int, offset: int) -> None:
        q = self._live()
        bs = self.namespace.block_size
        if count <= 0 or lba < 0 or offset < 0 or offset % 4 or offset + count * bs > buf.size:
            raise InvalidArgument(
                f"{count} blocks of {bs} bytes at offset {offset} do not fit the "
                f"{buf.size}-byte buffer (offset a multiple of 4, count at least 1)"
            )
        what = "Write" if opcode == S.IO_WRITE else "Read"
        per = self.max_transfer // bs
        chunks = [(lba + i, min(per, count - i)) for i in range(0, count, per)]
        inflight: list[tuple[int, str]] = []
        errors: list[NvmeError] = []

        def complete_oldest() -> None:
            cid, label = inflight.pop(0)
            err = _status_error(label, self._wait(q, cid, label).status)
            if err is not None:
                errors.append(err)

        for start, n in chunks:
            if not q.free:
                complete_oldest()
            iova = buf.iova + offset + (start - lba) * bs
            cid = q.free.pop()
            prp1, prp2 = self._prps(cid, iova, n * bs)
            cmd = S.SubmissionEntry(
                opcode=opcode,
                nsid=self.namespace.nsid,
                prp1=prp1,
                prp2=prp2,
                cdw10=start & 0xFFFFFFFF,
                cdw11=start >> 32,
                cdw12=n - 1,  # NLB is 0's based
            )
            inflight.append((self._submit(q, cmd, cid), f"{what} of {n} blocks at LBA {start}"))
        while inflight:
            complete_oldest()
        if errors:
            raise errors[0]

    def read_into(self, buf: DmaBuffer, lba: int, count: int, offset: int = 0) -> None:
        """Read `count` blocks from `lba` into `buf` at `offset`, with no copy."""
        self._rw(S.IO_READ, buf, lba, count, offset)

    def write_from(self, buf: DmaBuffer, lba: int, count: int, offset: int = 0) -> None:
        """Write `count` blocks from `buf` at `offset` to `lba`, with no copy."""
        self._rw(S.IO_WRITE, buf, lba, count, offset)

    def read(self, lba: int, count: int) -> bytes:
        """`count` blocks from `lba` (through a DMA buffer made for the call)."""
        size = count * self.namespace.block_size
        self._live()
        with self.vd.dma_buffer(max(size, 1)) as buf:
            self.read_into(buf, lba, count)
            return bytes(buf.view[:size])

    def write(self, lba: int, data: bytes) -> None:
        """Write `data`, a whole number of blocks, from `lba` on."""
        bs = self.namespace.block_size
        if not data or len(data) % bs:
            raise InvalidArgument(f"{len(data)} bytes are not a whole number of {bs}-byte blocks")
        self._live()
        with self.vd.dma_buffer(len(data)) as buf:
            buf.view[: len(data)] = data
            self.write_from(buf, lba, len(data) // bs)

    def flush(self) -> None:
        """Make the writes so far durable (the controller's volatile write cache)."""
        q = self._live()
        cid = self._submit(q, S.SubmissionEntry(opcode=S.IO_FLUSH, nsid=self.namespace.nsid))
        err = _status_error("Flush", self._wait(q, cid, "Flush").status)
        if err is not None:
            raise err

    # -- shutdown ----------------------------------------------------------------------------
    def _disable(self) -> None:
        cc = self._r32(S.CC)
        if cc & S.CC_EN:
            self._w32(S.CC, cc & ~S.CC_EN)
        self._wait_csts(S.CSTS_RDY, 0, "disable")

    def _shutdown(self) -> None:
        """Delete the I/O queues, then a normal shutdown (CC.SHN), waiting for SHST."""
        errors: list[BaseException] = []
        if self._io is not None:
            self._io = None
            for opcode, what in (
                (S.ADMIN_DELETE_SQ, "Delete I/O Submission Queue"),
                (S.ADMIN_DELETE_CQ, "Delete I/O Completion Queue"),
            ):
                try:
                    self._delete_queue(opcode, what)
                except NvmeTimeout as exc:
                    errors.append(exc)
                    break  # an admin queue that does not answer will not answer the next
                except NvmeError as exc:
                    errors.append(exc)
        cc = self._r32(S.CC)
        self._w32(S.CC, cc & ~S.CC_SHN_MASK | S.CC_SHN_NORMAL)
        end = time.monotonic() + self._shutdown_timeout()
        while self._r32(S.CSTS) & S.CSTS_SHST_MASK != S.CSTS_SHST_COMPLETE:
            if time.monotonic() > end:
                errors.append(NvmeTimeout(f"{self.vd.address}: shutdown did not complete"))
                break
            time.sleep(0.001)
        if errors:
            raise errors[0]

    def _shutdown_timeout(self) -> float:
        """How long a normal shutdown may take: as asked, else RTD3E where reported, at
        least 5 s (Linux's default shutdown_timeout)."""
        if self._shutdown_limit is not None:
            return self._shutdown_limit
        ctrl = getattr(self, "controller", None)
        return max(ctrl.shutdown_latency if ctrl is not None else 0.0, 5.0)

    def close(self) -> None:
        """Shut the controller down and disable it, then free its interrupts and memory;
        on every path, the first error raised once all is done. A second close does
        nothing."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        if self._ready:
            try:
                self._shutdown()
            except BaseException as exc:
                errors.append(exc)
        if self._started:
            try:
                self._disable()  # no DMA from here on: the memory can go
            except BaseException as exc:
                errors.append(exc)
        while self._owned:
            try:
                self._owned.pop().close()
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            # No register access from a finalizer: the buffers and vectors warn and close
            # their own fds, and the controller stops when the device fd goes.
            warnings.warn("unclosed Nvme", ResourceWarning, source=self, stacklevel=2)

    def __enter__(self) -> Nvme:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
