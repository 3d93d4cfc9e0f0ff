"""DMA: page-aligned buffers mapped into the device's IOVA space, and the IOVA allocator."""

from __future__ import annotations

import errno as E
import mmap
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import Busy, InvalidArgument, VfiokitError
from .iommu import DmaSpace, IovaRange
from .sys import Syscalls, VfioError

PAGE = mmap.PAGESIZE


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


@dataclass
class IovaAllocator:
    """First-fit allocation of IOVA ranges within the IOMMU's usable ranges.

    `limit` is the highest IOVA the device can address (its DMA mask); `reserve_low` keeps
    the first pages out (IOVA 0 makes a NULL-looking DMA address). Thread-safe: buffers
    may be made and closed from any thread.
    """

    ranges: list[IovaRange]
    limit: int = (1 << 64) - 1
    align: int = PAGE
    reserve_low: int = PAGE
    used: dict[int, int] = field(default_factory=dict)  # iova -> size
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def alloc(self, size: int, align: int = 0) -> int:
        """An IOVA for `size` bytes, a multiple of `align` if that is larger than the
        allocator's own (a huge page's size: the IOMMU can then map it with its large
        pages, the physical and the IO address aligned alike)."""
        if size <= 0:
            raise InvalidArgument(f"DMA size {size} must be positive")
        if align & (align - 1):
            raise InvalidArgument(f"IOVA alignment {align:#x} is not a power of two")
        size = _align_up(size, self.align)
        with self._lock:
            return self._alloc(size, max(self.align, align))

    def _alloc(self, size: int, align: int) -> int:
        taken = sorted(self.used.items())
        for first, last in sorted(self.ranges):
            cur = _align_up(max(first, self.reserve_low), align)
            last = min(last, self.limit)
            for start, length in taken:
                if start + length <= cur:
                    continue
                if start >= cur + size:
                    break
                cur = _align_up(start + length, align)
            if cur + size - 1 <= last:
                self.used[cur] = size
                return cur
        raise VfiokitError(
            f"no free IOVA range of {size:#x} bytes below {self.limit:#x}",
            errno=E.ENOSPC,
            remedy="free DMA buffers, or map smaller ones",
        )

    def free(self, iova: int) -> None:
        with self._lock:
            size = self.used.pop(iova, None)
        if size is None:
            raise InvalidArgument(f"IOVA {iova:#x} was not allocated")


class HugepagesUnavailable(VfioError):
    """A DMA buffer that must be of huge pages cannot have them. `errno` says why: ENOMEM,
    the pool of that size has too few free pages; EINVAL, the kernel has no pool of that
    size; EOPNOTSUPP, the kernel has no huge pages at all (no /sys/kernel/mm/hugepages)."""

    def __init__(self, page_size: int, pages: int, errno: int):
        kib = f"{page_size >> 10} KiB" if page_size else "huge"
        size = f"hugepages-{page_size >> 10}kB" if page_size else "hugepages-<size>kB"
        remedy = {
            E.ENOMEM: f"reserve {kib} pages as root: echo N > /sys/kernel/mm/hugepages/"
            f"{size}/nr_hugepages (or hugepages=N on the kernel command line), or ask "
            "with hugepages='prefer' to fall back to normal pages",
            E.EINVAL: "ask for a size the kernel has (ls /sys/kernel/mm/hugepages), or "
            "leave hugepage_size out for the default one",
        }.get(errno, "a kernel with CONFIG_HUGETLBFS, or hugepages='prefer'")
        super().__init__(f"mmap of {pages} {kib} page(s) for DMA", errno, remedy)
        self.page_size = page_size


class DmaBuffer:
    """Anonymous memory mapped for the device at `iova`, its address, size and IOVA
    multiples of the IOMMU's alignment (the allocator's `align`: a page, or more).

    `page_size` > 0 asks for huge pages of that size (MAP_HUGETLB): the size is rounded
    up to whole huge pages and the IOVA aligned to one; HugepagesUnavailable if the
    kernel has none to give. `hugepages` and `page_size` say what backs the buffer.

    `view` is a memoryview of the buffer; the device sees the same bytes at `iova`.
    `on_close`, if given, is called once the buffer is closed (the session forgets it).
    """

    def __init__(
        self,
        space: DmaSpace,
        sys: Syscalls,
        allocator: IovaAllocator,
        size: int,
        *,
        readable: bool = True,
        writable: bool = True,
        on_close: Callable[[DmaBuffer], None] | None = None,
        page_size: int = 0,
    ):
        self._on_close = on_close
        self.closed = True  # until it is mapped
        align = max(PAGE, allocator.align)
        self.hugepages = page_size > 0
        self.page_size = page_size or PAGE
        if page_size and page_size % align:
            raise InvalidArgument(
                f"huge pages of {page_size:#x} bytes are not a multiple of the IOMMU's "
                f"{align:#x}-byte pages"
            )
        self.size = _align_up(size, max(align, page_size))
        self._space = space
        self._alloc = allocator
        if page_size:
            # The kernel aligns a huge page mapping to its page: no room needed.
            try:
                self._mem = sys.anon_mmap(self.size, page_size)
            except VfioError as exc:
                if exc.errno not in (E.ENOMEM, E.EINVAL):
                    raise
                raise HugepagesUnavailable(page_size, self.size // page_size, exc.errno) from exc
        else:
            # Room to start at an `align` boundary where the IOMMU's pages are larger
            # than the CPU's (mmap only promises a CPU page).
            self._mem = sys.anon_mmap(self.size + align - PAGE)
        base = sys.address_of(self._mem)
        skip = -base % align
        self.vaddr = base + skip
        try:
            if skip + self.size > len(self._mem):
                raise VfiokitError(f"mmap gave {base:#x}, not aligned to {align:#x}")
            self.iova = allocator.alloc(self.size, page_size)
        except BaseException:
            self._mem.close()
            raise
        try:
            space.map(self.vaddr, self.iova, self.size, readable=readable, writable=writable)
        except BaseException as exc:
            allocator.free(self.iova)
            self._mem.close()
            if isinstance(exc, VfioError) and exc.errno == E.ENOMEM:
                raise VfioError(
                    f"DMA map of {self.size} bytes",
                    E.ENOMEM,
                    remedy="mapped memory is pinned and counted against RLIMIT_MEMLOCK: raise "
                    "it (`ulimit -l`, limits.d or LimitMEMLOCK=; `vfiokit doctor` shows it)",
                ) from exc
            raise
        self.view = memoryview(self._mem)
        if len(self.view) != self.size:  # the aligned window of a larger mapping
            whole = self.view
            self.view = whole[skip : skip + self.size]
            whole.release()  # the slice keeps the mapping exported, not this view
        self.closed = False

    def close(self) -> None:
        """Unmap the buffer from the device, give its IOVA back and free the memory.

        If the unmap fails, nothing has changed: the error is raised, the buffer stays open
        and close() can be tried again. Once unmapped the buffer is closed whatever else
        happens; if a view derived from `view` (a slice, a cast, a ctypes array) is still
        alive, the memory, no longer visible to the device, is freed when the last such
        view goes, and close() raises Busy to say so. A second close does nothing.
        """
        if self.closed:
            return
        self._space.unmap(self.iova, self.size)
        self.closed = True
        self._alloc.free(self.iova)
        held = False
        try:
            self.view.release()
            self._mem.close()
        except BufferError:
            held = True  # the views keep the mmap alive; it goes with the last of them
        if self._on_close is not None:
            self._on_close(self)
        if held:
            raise Busy(
                f"DMA buffer at IOVA {self.iova:#x} is unmapped, but views of its memory "
                "are still in use; the memory is freed when the last one goes",
                remedy="release() views derived from buf.view before close()",
            )

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            # No unmap from a finalizer: the mapping goes with the container or iommufd.
            warnings.warn("unclosed DmaBuffer", ResourceWarning, source=self, stacklevel=2)

    def __enter__(self) -> DmaBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
