"""The NVMe driver against a fake NVMe controller (unit/nvme_model.py) behind the fake
syscall layer: bring-up, Identify, I/O with PRPs and PRP lists, phase tags across queue
wraps, completions matched by command id, typed status errors, shutdown, and close on
every path."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from unit.nvme_model import FakeNvme, ProtocolError
from vfiokit import InvalidArgument, Unsupported, VfiokitError
from vfiokit.drivers import nvme_spec as S
from vfiokit.drivers.nvme import (
    Nvme,
    NvmeError,
    NvmeInvalidCommand,
    NvmeStatusError,
    NvmeTimeout,
)
from vfiokit.vfio import VfioDevice
from vfiokit.vfio import uapi as U
from vfiokit.vfio.fake import FakeSyscalls

BDF = "0000:00:19.0"


class Bed:
    """A fake kernel with one NVMe controller, and the VFIO session on it."""

    def __init__(self, root: Path, *, backend: str = "legacy", pgsizes: int = 0x1000, **model):
        self.kernel = FakeSyscalls(pgsizes=pgsizes)
        self.dev = self.kernel.add_device(BDF, group="5", bar0_size=0x4000, msix=2, intx=False)
        self.nvme = FakeNvme(self.kernel, self.dev, **model)
        self.vd = VfioDevice(
            BDF, backend=backend, sys=self.kernel, sysroot=self.kernel.sysroot(root)
        )
        self.fds = self.kernel.open_fds  # the session's own: container or iommufd, group, device

    def left_clean(self) -> None:
        """Everything the driver made is gone; the controller is disabled."""
        assert self.kernel.mappings == {}
        assert not self.dev.triggers.get(U.VFIO_PCI_MSIX_IRQ_INDEX)
        assert self.kernel.open_fds == self.fds
        assert self.nvme.reg(S.CC) & S.CC_EN == 0 and self.nvme.reg(S.CSTS) & S.CSTS_RDY == 0


@pytest.fixture(params=["legacy", "iommufd"])
def bed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bed]:
    b = Bed(tmp_path, backend=request.param)
    yield b
    b.vd.close()


def make(tmp_path: Path, **model) -> Bed:
    return Bed(tmp_path, **model)


def pattern(lba: int, count: int, bs: int, tag: bytes = b"vfiokit") -> bytes:
    """Blocks that say which LBA they belong to, so a misplaced block shows."""
    return b"".join(
        (tag + f" lba {lba + i:08d} ".encode()).ljust(32, b".") * (bs // 32) for i in range(count)
    )


# -- layouts ---------------------------------------------------------------------------------
def test_layouts_match_the_spec() -> None:
    """Offsets from the NVMe base specification's figures, independent of nvme_spec."""
    import ctypes

    assert ctypes.sizeof(S.SubmissionEntry) == 64 and ctypes.sizeof(S.CompletionEntry) == 16
    assert ctypes.sizeof(S.IdentifyController) == 4096
    assert ctypes.sizeof(S.IdentifyNamespace) == 4096
    sqe = {"cid": 2, "nsid": 4, "mptr": 16, "prp1": 24, "prp2": 32, "cdw10": 40, "cdw15": 60}
    for name, off in sqe.items():
        assert getattr(S.SubmissionEntry, name).offset == off, name
    cqe = {"result": 0, "sq_head": 8, "sq_id": 10, "cid": 12, "status": 14}
    for name, off in cqe.items():
        assert getattr(S.CompletionEntry, name).offset == off, name
    ctrl = {"sn": 4, "mn": 24, "fr": 64, "mdts": 77, "cntlid": 78, "rtd3e": 88}
    ctrl |= {"sqes": 512, "cqes": 513, "nn": 516}
    for name, off in ctrl.items():
        assert getattr(S.IdentifyController, name).offset == off, name
    ns = {"nsze": 0, "ncap": 8, "nlbaf": 25, "flbas": 26, "lbaf": 128}
    for name, off in ns.items():
        assert getattr(S.IdentifyNamespace, name).offset == off, name
    with pytest.raises(TypeError, match="keyword"):
        S.SubmissionEntry(1)
    cap = S.Cap.parse(0x0040_0020_0F01_07FF | 3 << 32)
    assert (cap.mqes, cap.cqr, cap.to, cap.dstrd, cap.css, cap.mpsmin) == (0x7FF, True, 15, 3, 1, 0)
    assert cap.mpsmax == 4
    assert S.status_fields(0x80 << 1 | 1 << 15 | 1) == (0, 0x80, False, True)


# -- bring-up and Identify -------------------------------------------------------------------
def test_identify_and_bring_up(bed: Bed) -> None:
    with Nvme(bed.vd) as nvme:
        c, ns = nvme.controller, nvme.namespace
        assert c.serial == "VFIOKIT-FAKE-0001" and c.model == "vfiokit fake NVMe"
        assert c.firmware == "1.0" and c.vendor_id == 0x1B36 and c.namespaces == 1
        assert c.max_transfer == 16384 and nvme.max_transfer == 16384
        assert (ns.nsid, ns.blocks, ns.block_size, ns.size) == (1, 2048, 512, 1 << 20)
        cc = bed.nvme.reg(S.CC)
        assert cc & S.CC_EN and cc >> 16 & 0xF == 6 and cc >> 20 & 0xF == 4
        assert bed.nvme.reg(S.AQA) == 31 << 16 | 31  # admin_depth 32
        io_cq, io_sq = bed.nvme.cqs[1], bed.nvme.sqs[1]
        assert (io_cq.vector, io_cq.ien, io_cq.size, io_sq.cqid, io_sq.size) == (1, True, 64, 1, 64)
        cfg = bed.vd.device.config
        assert cfg.read(0x04, 2) & 0x6 == 0x6  # memory decoding and bus mastering
        assert bed.nvme.events[:3] == ["enable", "create cq 1", "create sq 1"]


def test_queue_depths_are_clamped_to_cap_mqes(tmp_path: Path) -> None:
    b = make(tmp_path, mqes=7)
    with Nvme(b.vd, admin_depth=64, io_depth=64) as nvme:
        assert b.nvme.reg(S.AQA) == 7 << 16 | 7 and b.nvme.sqs[1].size == 8
        nvme.write(0, pattern(0, 40, 512))
    b.vd.close()


def test_not_an_nvme_controller(tmp_path: Path) -> None:
    b = make(tmp_path)
    b.dev.regions[U.VFIO_PCI_CONFIG_REGION_INDEX].data[8:12] = bytes(4)
    with pytest.raises(NvmeError, match="not an NVMe controller"):
        Nvme(b.vd)
    assert b.kernel.mappings == {} and b.nvme.events == []
    b.vd.close()


# -- I/O -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "pgsizes"),
    [
        ({}, 0x1000),
        ({"lbads": 12}, 0x1000),  # 4 KiB blocks
        ({"dstrd": 2}, 0x1000),  # doorbells 16 bytes apart
        ({"mpsmin": 1}, 0x2000),  # 8 KiB controller pages on an IOMMU with 8 KiB pages
        ({"mdts": 0}, 0x1000),  # no MDTS: the one-page PRP list is the limit
    ],
)
def test_write_then_read_back(tmp_path: Path, model: dict[str, int], pgsizes: int) -> None:
    b = make(tmp_path, pgsizes=pgsizes, blocks=4096, **model)
    with Nvme(b.vd) as nvme:
        bs = nvme.namespace.block_size
        for lba, count in [(0, 1), (7, 3), (100, 40), (4096 - 9, 9)]:
            data = pattern(lba, count, bs)
            nvme.write(lba, data)
            # The disk itself holds it where it belongs, not only the read path.
            assert b.nvme.storage[lba * bs : (lba + count) * bs] == data
            assert nvme.read(lba, count) == data
        assert b.nvme.fired[0] > 0 and b.nvme.fired[1] > 0  # admin on vector 0, I/O on 1
        nvme.flush()
        assert "flush" in b.nvme.events
    b.vd.close()


def test_waits_on_the_msix_vector(tmp_path: Path) -> None:
    """Completions that come later, from another thread: the driver sleeps on the I/O
    queue's MSI-X eventfd and is woken by it."""
    b = make(tmp_path)
    with Nvme(b.vd) as nvme:
        b.nvme.delay = 0.02
        for lba in range(5):
            nvme.write(lba, pattern(lba, 1, 512))
            assert nvme.read(lba, 1) == pattern(lba, 1, 512)
        b.nvme.delay = 0
    assert b.nvme.errors == []
    assert nvme.interrupts[1] >= 1 and b.nvme.fired[1] >= 10
    b.vd.close()


def test_prp_lists_and_splits(bed: Bed) -> None:
    """40 KiB of 512-byte blocks with MDTS 16 KiB: three commands; the 4-page ones carry
    a PRP list, the last (2 pages) PRP1 and PRP2 alone."""
    with Nvme(bed.vd) as nvme:
        data = pattern(50, 80, 512)
        nvme.write(50, data)
        writes = [c for c in bed.nvme.log if c.qid == 1 and c.opcode == S.IO_WRITE]
        assert [(c.cdw10, c.cdw12 + 1) for c in writes] == [(50, 32), (82, 32), (114, 16)]
        page = nvme.page
        for c in writes[:2]:  # PRP2 points into the driver's PRP list buffer
            assert c.prp2 != c.prp1 + page and c.prp2 % 8 == 0
            segs = bed.nvme.prp_segments(c.prp1, c.prp2, 32 * 512)
            assert [n for _, n in segs] == [page] * 4
        assert writes[2].prp2 == writes[2].prp1 + page
        assert bed.nvme.storage[50 * 512 : 130 * 512] == data
        assert nvme.read(50, 80) == data


def test_buffers_at_an_offset(bed: Bed) -> None:
    """PRP1 inside a page: the first page is partial, every other entry whole."""
    with Nvme(bed.vd) as nvme:
        buf = bed.vd.dma_buffer(8 * 4096)
        data = pattern(300, 20, 512, b"offset")
        buf.view[512 : 512 + len(data)] = data
        nvme.write_from(buf, 300, 20, offset=512)
        assert bed.nvme.storage[300 * 512 : 320 * 512] == data
        # Two pages from an offset: PRP2 is the start of the second page, no list.
        nvme.write_from(buf, 300, 8, offset=2048)
        two = [c for c in bed.nvme.log if c.opcode == S.IO_WRITE][-1]
        assert two.prp2 == two.prp1 - 2048 + nvme.page
        assert bed.nvme.storage[300 * 512 : 308 * 512] == bytes(buf.view[2048 : 2048 + 4096])
        buf.view[:] = bytes(len(buf.view))
        nvme.read_into(buf, 300, 20, offset=1024 + 4)
        assert bytes(buf.view[1028 : 1028 + len(data)]) == bed.nvme.storage[300 * 512 : 320 * 512]
        assert bytes(buf.view[:1028]) == bytes(1028)
        with pytest.raises(InvalidArgument):
            nvme.read_into(buf, 0, 64, offset=512)  # past the buffer's end
        with pytest.raises(InvalidArgument):
            nvme.read_into(buf, 0, 1, offset=2)  # PRP1 must be dword aligned
        buf.close()


def test_phase_tags_across_many_wraps(tmp_path: Path) -> None:
    """Queues of 4 entries: the completion queues wrap again and again, so a phase
    tag that is not flipped (or flipped on the wrong side) stalls or reads stale entries."""
    b = make(tmp_path)
    with Nvme(b.vd, admin_depth=2, io_depth=4, timeout=1.0) as nvme:
        for i in range(30):
            data = pattern(i * 3, 1 + i % 3, 512, b"wrap")
            nvme.write(i * 3, data)
            assert nvme.read(i * 3, 1 + i % 3) == data
        # 80 KiB in 16 KiB commands: more commands than the queue holds at once
        big = pattern(1000, 160, 512)
        nvme.write(1000, big)
        assert nvme.read(1000, 160) == big
        assert b.nvme.cqs[1].tail != 0 or b.nvme.cqs[1].phase == 0
    b.vd.close()


def test_completions_matched_by_command_id(bed: Bed) -> None:
    """The controller completes a batch in reverse order, and fails the last command:
    the error names that command's LBA, and the data of the others is right."""
    with Nvme(bed.vd) as nvme:
        bed.nvme.reverse, bed.nvme.batch = True, 3  # the three commands of 96 blocks
        data = pattern(400, 96, 512)
        nvme.write(400, data)
        assert nvme.read(400, 96) == data
        seen = [c.cid for c in bed.nvme.log if c.qid == 1][-3:]
        assert len(set(seen)) == 3 and bed.nvme.cqs[1].posted == 0
        original_io = bed.nvme._io

        def fail_last(cmd: S.SubmissionEntry) -> int:
            if cmd.cdw10 == 464:
                from unit.nvme_model import _Status

                raise _Status(S.SCT_MEDIA, 0x81)
            return original_io(cmd)

        bed.nvme._io = fail_last  # type: ignore[method-assign]
        with pytest.raises(NvmeStatusError, match="LBA 464") as info:
            nvme.read(400, 96)
        assert (info.value.sct, info.value.sc) == (S.SCT_MEDIA, 0x81)
        assert "Unrecovered Read Error" in str(info.value)
        assert not isinstance(info.value, InvalidArgument)
        bed.nvme._io = original_io  # type: ignore[method-assign]
        assert nvme.read(400, 96) == data  # the driver goes on
        bed.nvme.reverse, bed.nvme.batch = False, 1


# -- status errors ---------------------------------------------------------------------------
def test_status_codes_become_typed_errors(bed: Bed) -> None:
    with Nvme(bed.vd) as nvme:
        with pytest.raises(NvmeInvalidCommand) as info:
            nvme.read(2048, 1)  # one past the namespace's end
        err = info.value
        assert isinstance(err, NvmeStatusError) and isinstance(err, InvalidArgument)
        assert isinstance(err, VfiokitError) and isinstance(err, ValueError)
        assert (err.sct, err.sc, err.dnr) == (0, 0x80, True)
        assert "LBA Out of Range" in str(err) and err.errno == 5
        with pytest.raises(NvmeInvalidCommand, match="Invalid Command Opcode"):
            nvme.admin(S.SubmissionEntry(opcode=0xC0), "vendor command")
        bed.nvme.inject[(0, S.ADMIN_IDENTIFY)] = (S.SCT_GENERIC, 0x06)
        with pytest.raises(NvmeStatusError, match="Internal Error") as internal:
            nvme.admin(S.SubmissionEntry(opcode=S.ADMIN_IDENTIFY, cdw10=1, prp1=nvme._scratch.iova))
        assert not isinstance(internal.value, InvalidArgument)
        data = pattern(5, 2, 512)
        nvme.write(5, data)
        assert nvme.read(5, 2) == data
        with pytest.raises(InvalidArgument, match="whole number"):
            nvme.write(0, b"x" * 100)


def test_unmapped_prp_is_a_data_transfer_error(bed: Bed) -> None:
    """The controller's DMA goes through the (fake) IOMMU: memory given back is not there."""
    with Nvme(bed.vd) as nvme:
        buf = bed.vd.dma_buffer(4096)
        gone = buf.iova
        buf.close()
        with pytest.raises(NvmeStatusError, match="Data Transfer Error"):
            nvme.admin(S.SubmissionEntry(opcode=S.ADMIN_IDENTIFY, cdw10=1, prp1=gone))
        assert bed.nvme.faults


# -- shutdown and close ----------------------------------------------------------------------
def test_close_deletes_queues_shuts_down_and_disables(bed: Bed) -> None:
    nvme = Nvme(bed.vd)
    nvme.write(0, pattern(0, 1, 512))
    nvme.close()
    assert bed.nvme.events[-4:] == ["delete sq 1", "delete cq 1", "shutdown", "disable"]
    bed.left_clean()
    nvme.close()  # a second close does nothing
    with pytest.raises(NvmeError, match="closed"):
        nvme.read(0, 1)


def test_with_closes_on_an_exception(bed: Bed) -> None:
    with pytest.raises(RuntimeError), Nvme(bed.vd):
        raise RuntimeError("boom")
    assert bed.nvme.events[-2:] == ["shutdown", "disable"]
    bed.left_clean()


def test_a_failed_enable_leaves_nothing(tmp_path: Path) -> None:
    b = make(tmp_path, fail_enable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        with pytest.raises(NvmeError, match="fatal status during enable"):
            Nvme(b.vd)
        gc.collect()
    b.left_clean()
    b.vd.close()


def test_a_timeout_in_identify_closes_everything(tmp_path: Path) -> None:
    b = make(tmp_path)
    real = b.nvme._admin

    def stall_identify(cmd: S.SubmissionEntry) -> int:
        if cmd.opcode == S.ADMIN_IDENTIFY:
            b.nvme.stall = True  # from now on nothing is fetched
        return real(cmd)

    b.nvme.stall = False
    b.nvme._admin = stall_identify  # type: ignore[method-assign]
    with pytest.raises(NvmeTimeout) as info:
        Nvme(b.vd, timeout=0.2, shutdown_timeout=0.1)
    assert info.value.errno == 110
    assert "shutdown" in b.nvme.events and b.nvme.events[-1] == "disable"
    b.left_clean()
    b.vd.close()


def test_a_failed_queue_creation_deletes_the_cq(bed: Bed) -> None:
    bed.nvme.inject[(0, S.ADMIN_CREATE_SQ)] = (S.SCT_COMMAND_SPECIFIC, 0x02)
    with pytest.raises(NvmeStatusError, match="Invalid Queue Size"):
        Nvme(bed.vd)
    assert "delete cq 1" in bed.nvme.events and bed.nvme.cqs == {}
    bed.left_clean()


def test_an_io_timeout_stops_io_and_close_still_cleans_up(bed: Bed) -> None:
    nvme = Nvme(bed.vd, timeout=0.2, shutdown_timeout=0.1)
    bed.nvme.stall = True
    with pytest.raises(NvmeTimeout, match="Read of 1 blocks at LBA 3"):
        nvme.read(3, 1)
    bed.nvme.stall = False
    with pytest.raises(NvmeError, match="timed out"):
        nvme.read(3, 1)
    nvme.close()
    bed.left_clean()


def test_a_shutdown_that_never_completes(tmp_path: Path) -> None:
    b = make(tmp_path, no_shutdown=True)
    nvme = Nvme(b.vd, shutdown_timeout=0.1)
    with pytest.raises(NvmeTimeout, match="shutdown did not complete"):
        nvme.close()
    assert b.nvme.events[-1] == "disable"  # disabled all the same, then memory freed
    b.left_clean()
    b.vd.close()


def test_mps_larger_than_the_iommu_page_is_refused(tmp_path: Path) -> None:
    b = make(tmp_path, mpsmin=1)  # 8 KiB pages, a 4 KiB IOMMU
    with pytest.raises(Unsupported, match="8192"):
        Nvme(b.vd)
    assert b.kernel.mappings == {}
    b.vd.close()


def test_protocol_violations_surface(bed: Bed) -> None:
    """The model is strict: a doorbell past the queue's size is the driver's bug."""
    with Nvme(bed.vd) as nvme, pytest.raises(ProtocolError, match="tail doorbell"):
        nvme._w32(nvme._io.sq_doorbell, 64)  # type: ignore[union-attr]


def test_unclosed_warns_and_touches_no_register(bed: Bed) -> None:
    nvme = Nvme(bed.vd)
    writes = len(bed.dev.regions[0].data)
    before = list(bed.nvme.events)
    with pytest.warns(ResourceWarning, match="unclosed Nvme"):
        del nvme
        gc.collect()
    assert bed.nvme.events == before and writes == len(bed.dev.regions[0].data)
    assert bed.nvme.reg(S.CC) & S.CC_EN  # nothing was written from the finalizer


def test_closed_objects_do_not_warn(bed: Bed) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        with Nvme(bed.vd) as nvme:
            nvme.write(0, pattern(0, 1, 512))
        del nvme
        gc.collect()


def test_the_docs_nvme_example_runs_on_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/api.md's NVMe example, as written, on the model (tests/vm/test_docs.py runs it
    on QEMU's controller)."""
    import re

    import vfiokit.vfio

    doc = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "Nvme(" in b]
    assert len(blocks) == 1 and "0000:00:19.0" in blocks[0]
    b = make(tmp_path)
    monkeypatch.setattr(vfiokit.vfio, "open_device", lambda address: b.vd)
    exec(compile(blocks[0], "docs/api.md", "exec"), {})
    out = capsys.readouterr().out
    assert "VFIOKIT-FAKE-0001 vfiokit fake NVMe 2048 512" in out
    assert "0 128 " in out and "LBA Out of Range" in out
    assert b.kernel.open_fds == 0 and b.kernel.mappings == {}  # the with closed both
    assert b.nvme.events[-2:] == ["shutdown", "disable"]
