"""A small NVMe controller behind FakeSyscalls' hooks, for the NVMe driver's unit tests.

Its registers live in the fake BAR0 (`FakeRegion.data`, read back by pread) and its side
effects run from the region's `on_write` hook: CC (enable, disable, shutdown) and the
doorbells. A submission queue doorbell makes it fetch the new entries from DMA memory
(`FakeSyscalls.dma_read`), run them against a bytearray disk, post completions with the
phase tag and signal the CQ's MSI-X vector (`FakeSyscalls.fire`). It is strict where the
spec is: a register access that is not 32-bit, a doorbell out of range, a CQ head beyond
what was posted, a CQ overflow or a bad enable raise ProtocolError (an AssertionError)
right in the driver's call; a PRP that is misaligned or points at unmapped memory completes
the command with PRP Offset Invalid or Data Transfer Error, as a controller would.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from vfiokit.drivers import nvme_spec as S
from vfiokit.vfio import uapi as U
from vfiokit.vfio.fake import FakeDevice, FakeSyscalls, IommuFault


class ProtocolError(AssertionError):
    """The driver broke the NVMe protocol."""


class _Status(Exception):
    def __init__(self, sct: int, sc: int, dnr: bool = True):
        self.sct, self.sc, self.dnr = sct, sc, dnr


@dataclass
class _SQ:
    base: int
    size: int
    cqid: int
    head: int = 0
    tail: int = 0


@dataclass
class _CQ:
    base: int
    size: int
    vector: int
    ien: bool
    head: int = 0
    tail: int = 0
    phase: int = 1
    posted: int = 0  # completions posted and not yet released by a head doorbell


@dataclass
class Command:
    """A fetched command, as the tests inspect it."""

    qid: int
    opcode: int
    cid: int
    prp1: int
    prp2: int
    cdw10: int
    cdw11: int
    cdw12: int


@dataclass
class FakeNvme:
    kernel: FakeSyscalls
    dev: FakeDevice
    serial: str = "VFIOKIT-FAKE-0001"
    model: str = "vfiokit fake NVMe"
    blocks: int = 2048
    lbads: int = 9  # 512-byte blocks; 12 for 4 KiB
    mqes: int = 63
    dstrd: int = 0
    mdts: int = 2  # 4 pages per command: larger transfers need several, most need a list
    to: int = 2  # CAP.TO: 1 s
    mpsmin: int = 0
    max_queues: int = 4
    # knobs
    stall: bool = False  # fetch nothing: commands never complete
    reverse: bool = False  # complete each batch of fetched commands in reverse order
    batch: int = 1  # fetch only once this many commands wait in the SQ
    fail_enable: bool = False  # CC.EN 0->1 sets CSTS.CFS instead of RDY
    no_shutdown: bool = False  # CSTS.SHST never says complete
    delay: float = 0.0  # run the commands this long after the doorbell, from a thread
    inject: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    # what happened
    storage: bytearray = field(default_factory=bytearray)
    log: list[Command] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    fired: dict[int, int] = field(default_factory=dict)  # MSI-X vector -> times signalled
    errors: list[BaseException] = field(default_factory=list)  # raised in the delay thread
    sqs: dict[int, _SQ] = field(default_factory=dict)
    cqs: dict[int, _CQ] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.regs = self.dev.regions[U.VFIO_PCI_BAR0_REGION_INDEX]
        self.storage = bytearray(self.blocks << self.lbads)
        cfg = self.dev.regions[U.VFIO_PCI_CONFIG_REGION_INDEX].data
        cfg[0:4] = (0x1B36 | 0x0010 << 16).to_bytes(4, "little")
        cfg[8:12] = (0x010802 << 8 | 0x02).to_bytes(4, "little")  # NVMe class, revision 2
        cap = (
            self.mqes
            | 1 << 16  # CQR
            | self.to << 24
            | self.dstrd << 32
            | 1 << 37  # CSS: NVM
            | self.mpsmin << 48
            | 4 << 52
        )
        self._set(S.CAP, cap, 8)
        self._set(S.VS, 0x00010400)
        self.regs.on_write = self._on_write
        self._lock = threading.RLock()

    # -- registers ---------------------------------------------------------------------------
    def reg(self, off: int, width: int = 4) -> int:
        return int.from_bytes(self.regs.data[off : off + width], "little")

    def _set(self, off: int, value: int, width: int = 4) -> None:
        self.regs.data[off : off + width] = value.to_bytes(width, "little")

    @property
    def page(self) -> int:
        return 4096 << (self.reg(S.CC) >> S.CC_MPS_SHIFT & 0xF)

    def _on_write(self, off: int, data: bytes) -> None:
        with self._lock:
            self._register_write(off, data)

    def _register_write(self, off: int, data: bytes) -> None:
        if len(data) != 4 or off % 4:
            raise ProtocolError(f"{len(data)}-byte register write at {off:#x}: 32-bit only")
        value = int.from_bytes(data, "little")
        if off >= S.DOORBELLS:
            self._doorbell(off, value)
        elif off == S.CC:
            self._cc(self._cc_before, value)
        elif off in (S.AQA, S.ASQ, S.ASQ + 4, S.ACQ, S.ACQ + 4):
            if self.reg(S.CC) & S.CC_EN:
                raise ProtocolError(f"admin queue register {off:#x} written while enabled")
        else:
            raise ProtocolError(f"write of read-only or reserved register {off:#x}")
        self._cc_before = self.reg(S.CC)

    _cc_before = 0

    def _cc(self, old: int, new: int) -> None:
        csts = self.reg(S.CSTS)
        if new & S.CC_SHN_MASK and not old & S.CC_SHN_MASK:
            self.events.append("shutdown")
            if not self.no_shutdown:
                csts = csts & ~S.CSTS_SHST_MASK | S.CSTS_SHST_COMPLETE
        elif not new & S.CC_SHN_MASK and old & S.CC_SHN_MASK:
            csts &= ~S.CSTS_SHST_MASK
        if new & S.CC_EN and not old & S.CC_EN:
            self.events.append("enable")
            csts = S.CSTS_CFS if self.fail_enable else self._enable(new)
        elif not new & S.CC_EN and old & S.CC_EN:
            self.events.append("disable")
            self.sqs.clear()
            self.cqs.clear()
            self._set(S.CC, 0)
            csts = 0
        self._set(S.CSTS, csts)

    def _enable(self, cc: int) -> int:
        mps = cc >> S.CC_MPS_SHIFT & 0xF
        aqa, asq, acq = self.reg(S.AQA), self.reg(S.ASQ, 8), self.reg(S.ACQ, 8)
        if self.reg(S.CSTS) & S.CSTS_RDY:
            raise ProtocolError("enabled before CSTS.RDY went to 0")
        if not self.mpsmin <= mps <= 4:
            raise ProtocolError(f"CC.MPS {mps} outside CAP.MPSMIN..MPSMAX")
        if cc >> S.CC_IOSQES_SHIFT & 0xF != 6 or cc >> S.CC_IOCQES_SHIFT & 0xF != 4:
            raise ProtocolError(f"CC {cc:#x}: IOSQES/IOCQES not 6/4")
        if cc >> 4 & 7 != 0:
            raise ProtocolError(f"CC {cc:#x}: not the NVM command set")
        page = 4096 << mps
        if asq % page or acq % page or not aqa & 0xFFF or not aqa >> 16 & 0xFFF:
            raise ProtocolError(f"admin queues AQA {aqa:#x} ASQ {asq:#x} ACQ {acq:#x}")
        self.sqs[0] = _SQ(asq, (aqa & 0xFFF) + 1, 0)
        self.cqs[0] = _CQ(acq, (aqa >> 16 & 0xFFF) + 1, 0, True)
        return S.CSTS_RDY

    def _doorbell(self, off: int, value: int) -> None:
        stride = 4 << self.dstrd
        if (off - S.DOORBELLS) % stride:
            raise ProtocolError(f"doorbell write at {off:#x}: not on the {stride}-byte stride")
        index = (off - S.DOORBELLS) // stride
        qid = index // 2
        if not self.reg(S.CSTS) & S.CSTS_RDY:
            raise ProtocolError(f"doorbell {off:#x} rung while the controller is not ready")
        if index % 2:
            cq = self.cqs.get(qid)
            if cq is None or value >= cq.size:
                raise ProtocolError(f"CQ {qid} head doorbell {value}: no such queue or slot")
            released = (value - cq.head) % cq.size
            if released > cq.posted:
                raise ProtocolError(f"CQ {qid} head moved past the completions posted")
            cq.head, cq.posted = value, cq.posted - released
            return
        sq = self.sqs.get(qid)
        if sq is None or value >= sq.size:
            raise ProtocolError(f"SQ {qid} tail doorbell {value}: no such queue or slot")
        sq.tail = value
        if self.stall or (sq.tail - sq.head) % sq.size < self.batch:
            return
        if not self.delay:
            self._process(qid, sq)
            return

        def later() -> None:
            with self._lock:
                try:
                    self._process(qid, sq)
                except BaseException as exc:
                    self.errors.append(exc)

        threading.Timer(self.delay, later).start()

    # -- commands ----------------------------------------------------------------------------
    def _process(self, qid: int, sq: _SQ) -> None:
        done: list[tuple[int, int, int, int]] = []  # (cid, status, result, sq head)
        while sq.head != sq.tail:
            try:
                raw = self.kernel.dma_read(sq.base + sq.head * 64, 64)
            except IommuFault as exc:
                return self._fatal(f"SQ {qid} fetch: {exc}")
            cmd = S.SubmissionEntry.parse(raw)
            sq.head = (sq.head + 1) % sq.size
            self.log.append(
                Command(
                    qid, cmd.opcode, cmd.cid, cmd.prp1, cmd.prp2, cmd.cdw10, cmd.cdw11, cmd.cdw12
                )
            )
            status, result = 0, 0
            try:
                injected = self.inject.pop((qid, cmd.opcode), None)
                if injected is not None:
                    raise _Status(*injected)
                result = self._admin(cmd) if qid == 0 else self._io(cmd)
            except _Status as st:
                status = st.sct << 8 | st.sc | (1 << 14 if st.dnr else 0)
            done.append((cmd.cid, status, result, sq.head))
        if self.reverse:
            done.reverse()
        cq = self.cqs.get(sq.cqid)
        if cq is None:
            return  # its CQ deleted under it: nothing to post to
        for cid, status, result, head in done:
            if (cq.tail + 1) % cq.size == cq.head:
                raise ProtocolError(
                    f"CQ {sq.cqid} overflows: more commands in flight than it holds"
                )
            entry = S.CompletionEntry(
                result=result, sq_head=head, sq_id=qid, cid=cid, status=status << 1 | cq.phase
            )
            try:
                self.kernel.dma_write(cq.base + cq.tail * 16, bytes(entry))
            except IommuFault as exc:
                return self._fatal(f"CQ {sq.cqid} post: {exc}")
            cq.tail += 1
            cq.posted += 1
            if cq.tail == cq.size:
                cq.tail, cq.phase = 0, cq.phase ^ 1
        if done and cq.ien:
            self.fired[cq.vector] = self.fired.get(cq.vector, 0) + 1
            self.kernel.fire(self.dev, U.VFIO_PCI_MSIX_IRQ_INDEX, cq.vector)

    def _fatal(self, why: str) -> None:
        self.faults.append(why)
        self._set(S.CSTS, self.reg(S.CSTS) | S.CSTS_CFS)

    def _admin(self, cmd: S.SubmissionEntry) -> int:
        op, qid, qsize = cmd.opcode, cmd.cdw10 & 0xFFFF, cmd.cdw10 >> 16
        if op == S.ADMIN_IDENTIFY:
            self._to_host(cmd, self._identify(cmd.cdw10 & 0xFF, cmd.nsid))
            return 0
        if op in (S.ADMIN_CREATE_CQ, S.ADMIN_CREATE_SQ):
            if not 0 < qid <= self.max_queues or qid in (
                self.cqs if op == S.ADMIN_CREATE_CQ else self.sqs
            ):
                raise _Status(S.SCT_COMMAND_SPECIFIC, 0x01)
            if not 0 < qsize <= self.mqes:
                raise _Status(S.SCT_COMMAND_SPECIFIC, 0x02)
            if cmd.prp1 % self.page or not cmd.prp1:
                raise _Status(S.SCT_GENERIC, S.SC_PRP_OFFSET_INVALID)
            if not cmd.cdw11 & S.QUEUE_PHYS_CONTIG:
                raise _Status(S.SCT_GENERIC, S.SC_INVALID_FIELD)  # CAP.CQR
            if op == S.ADMIN_CREATE_CQ:
                vector = cmd.cdw11 >> 16
                armed = self.dev.triggers.get(U.VFIO_PCI_MSIX_IRQ_INDEX, [])
                if vector >= len(armed):  # MSI-X off, or no such vector
                    raise _Status(S.SCT_COMMAND_SPECIFIC, 0x08)
                ien = bool(cmd.cdw11 & S.CQ_IRQ_ENABLED)
                self.cqs[qid] = _CQ(cmd.prp1, qsize + 1, vector, ien)
            else:
                cqid = cmd.cdw11 >> 16
                if cqid == 0 or cqid not in self.cqs:
                    raise _Status(S.SCT_COMMAND_SPECIFIC, 0x00)
                self.sqs[qid] = _SQ(cmd.prp1, qsize + 1, cqid)
            self.events.append(f"create {'cq' if op == S.ADMIN_CREATE_CQ else 'sq'} {qid}")
            return 0
        if op == S.ADMIN_DELETE_SQ:
            if qid == 0 or self.sqs.pop(qid, None) is None:
                raise _Status(S.SCT_COMMAND_SPECIFIC, 0x01)
            self.events.append(f"delete sq {qid}")
            return 0
        if op == S.ADMIN_DELETE_CQ:
            if qid == 0 or qid not in self.cqs:
                raise _Status(S.SCT_COMMAND_SPECIFIC, 0x01)
            if any(sq.cqid == qid for sq in self.sqs.values()):
                raise _Status(S.SCT_COMMAND_SPECIFIC, 0x0C)
            del self.cqs[qid]
            self.events.append(f"delete cq {qid}")
            return 0
        raise _Status(S.SCT_GENERIC, S.SC_INVALID_OPCODE)

    def _identify(self, cns: int, nsid: int) -> bytes:
        if cns == S.CNS_CONTROLLER:
            ident = S.IdentifyController(
                vid=0x1B36,
                ssvid=0x1AF4,
                sn=self.serial.ljust(20).encode(),
                mn=self.model.ljust(40).encode(),
                fr=b"1.0     ",
                mdts=self.mdts,
                sqes=0x66,
                cqes=0x44,
                nn=1,
            )
            return bytes(ident)
        if cns == S.CNS_NAMESPACE and nsid == 1:
            ns = S.IdentifyNamespace(nsze=self.blocks, ncap=self.blocks, nuse=self.blocks, nlbaf=1)
            ns.lbaf[0].lbads, ns.lbaf[1].lbads = 9, 12
            ns.flbas = 0 if self.lbads == 9 else 1
            return bytes(ns)
        raise _Status(S.SCT_GENERIC, S.SC_INVALID_NAMESPACE)

    def _io(self, cmd: S.SubmissionEntry) -> int:
        if cmd.opcode == S.IO_FLUSH:
            self.events.append("flush")
            return 0
        if cmd.opcode not in (S.IO_READ, S.IO_WRITE):
            raise _Status(S.SCT_GENERIC, S.SC_INVALID_OPCODE)
        if cmd.nsid != 1:
            raise _Status(S.SCT_GENERIC, S.SC_INVALID_NAMESPACE)
        slba, nlb = cmd.cdw10 | cmd.cdw11 << 32, (cmd.cdw12 & 0xFFFF) + 1
        if slba + nlb > self.blocks:
            raise _Status(S.SCT_GENERIC, S.SC_LBA_OUT_OF_RANGE)
        length = nlb << self.lbads
        if self.mdts and length > (4096 << self.mpsmin) << self.mdts:
            raise _Status(S.SCT_GENERIC, S.SC_INVALID_FIELD)
        at = slba << self.lbads
        if cmd.opcode == S.IO_READ:
            self._to_host(cmd, bytes(self.storage[at : at + length]))
        else:
            self.storage[at : at + length] = self._from_host(cmd, length)
        return 0

    # -- data transfer through PRPs ----------------------------------------------------------
    def prp_segments(self, prp1: int, prp2: int, length: int) -> list[tuple[int, int]]:
        """(IOVA, bytes) pieces of a transfer, walked as the spec's PRP rules say."""
        page = self.page
        if prp1 % 4:
            raise _Status(S.SCT_GENERIC, S.SC_PRP_OFFSET_INVALID)
        first = min(length, page - prp1 % page)
        segments, left = [(prp1, first)], length - first
        if left and left <= page:
            if prp2 % page:
                raise _Status(S.SCT_GENERIC, S.SC_PRP_OFFSET_INVALID)
            return [*segments, (prp2, left)]
        entry = prp2  # the PRP list: may start inside a page; its last slot chains
        if left and entry % 8:
            raise _Status(S.SCT_GENERIC, S.SC_PRP_OFFSET_INVALID)
        while left:
            at_page_end = (entry + 8) % page == 0
            ptr = int.from_bytes(self._read(entry, 8), "little")
            if at_page_end and left > page:
                entry = ptr  # a chained list page
                if entry % page:
                    raise _Status(S.SCT_GENERIC, S.SC_PRP_OFFSET_INVALID)
                continue
            if ptr % page:
                raise _Status(S.SCT_GENERIC, S.SC_PRP_OFFSET_INVALID)
            segments.append((ptr, min(page, left)))
            left -= min(page, left)
            entry += 8
        return segments

    def _read(self, iova: int, size: int) -> bytes:
        try:
            return self.kernel.dma_read(iova, size)
        except IommuFault as exc:
            self.faults.append(str(exc))
            raise _Status(S.SCT_GENERIC, S.SC_DATA_TRANSFER_ERROR) from exc

    def _to_host(self, cmd: S.SubmissionEntry, data: bytes) -> None:
        pos = 0
        for iova, n in self.prp_segments(cmd.prp1, cmd.prp2, len(data)):
            try:
                self.kernel.dma_write(iova, data[pos : pos + n])
            except IommuFault as exc:
                self.faults.append(str(exc))
                raise _Status(S.SCT_GENERIC, S.SC_DATA_TRANSFER_ERROR) from exc
            pos += n

    def _from_host(self, cmd: S.SubmissionEntry, length: int) -> bytes:
        return b"".join(
            self._read(iova, n) for iova, n in self.prp_segments(cmd.prp1, cmd.prp2, length)
        )
