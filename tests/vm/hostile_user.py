"""The hostile user of tests/vm/test_hostile.py: run as the unprivileged user a device was
assigned to, it opens the device and sends a bounded, seeded, reproducible stream of
SET_IRQS, MASK/UNMASK, device-feature ioctls, config reads and writes, BAR writes and resets
with random and malformed arguments, from two threads. Every call must return or fail with
an errno; anything else is a failure (exit 1). Prints a JSON summary.

usage: python hostile_user.py BDF SEED OPS
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import random
import struct
import sys
import threading
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import helpers as h

VFIO_DEVICE_RESET = 0x3B6F
FEATURE_FLAGS = [
    (1 << 16) | 0xFA00,  # GET vfiokit state
    (1 << 18) | 0xFA00,  # PROBE
    (1 << 17) | 0xFA00,  # SET (refused)
    (1 << 17) | 3,  # LOW_POWER_ENTRY
    (1 << 17) | 4,  # LOW_POWER_ENTRY_WITH_WAKEUP
    (1 << 17) | 5,  # LOW_POWER_EXIT
    (1 << 16) | 3,
]


def one(dev: h.VfioDevice, rng: random.Random, efds: list[int], bar0: int, stats: Counter) -> None:
    op = rng.randrange(9)
    fd_choices = [*efds, -1, dev.fd, 9999, rng.getrandbits(31)]
    try:
        if op == 0:  # SET_IRQS, anything
            dtype = rng.choice([1, 2, 4, 3, 0, 7])
            action = rng.choice([8, 0x10, 0x20, 0x20, 0x18, 0, 0x40])
            flags = dtype | action if rng.random() > 0.05 else rng.getrandbits(32)
            index = rng.choice([0, 0, 0, 0, 1, 2, 3, 4, 5, rng.getrandbits(32)])
            start = rng.choice([0, 0, 0, 1, 0xFFFFFFFF])
            count = rng.choice([0, 1, 1, 1, 2, 0xFFFFFFFF])
            data = rng.choice(
                [b"", b"\0", b"\1", h.i32(rng.choice(fd_choices)), os.urandom(rng.randrange(1, 16))]
            )
            argsz = rng.choice([20 + len(data), 20 + len(data), 20, 19, 0, 4096])
            dev.set_irqs_raw(argsz, flags, index, start, count, data)
        elif op == 1:  # well-formed INTx actions
            action = rng.choice([8, 0x10, 0x20])
            kind = rng.choice(["none", "bool", "eventfd"])
            if kind == "none":
                dev.set_irqs_raw(20, 1 | action, 0, 0, rng.choice([0, 1]))
            elif kind == "bool":
                dev.set_irqs_raw(21, 2 | action, 0, 0, 1, bytes([rng.randrange(2)]))
            else:
                dev.set_irqs_raw(24, 4 | action, 0, 0, 1, h.i32(rng.choice(fd_choices)))
        elif op == 2:  # device features
            flags = rng.choice(FEATURE_FLAGS) if rng.random() > 0.1 else rng.getrandbits(32)
            size = rng.choice([0, 4, 48, 8 + rng.randrange(64)])
            buf = bytearray(struct.pack("II", 8 + size, flags)) + bytearray(size)
            if flags & 0xFFFF == 4 and size >= 4:  # wakeup eventfd
                buf[8:12] = h.i32(rng.choice(fd_choices))
            fcntl.ioctl(dev.fd, h.VFIO_DEVICE_FEATURE, buf, True)
        elif op == 3:  # config writes, mostly the command register
            off = rng.choice([4, 4, 5, 4, 6, 0x3C, 0x3D, rng.randrange(0x100)])
            size = rng.choice([1, 2, 4, rng.randrange(1, 9)])
            val = rng.getrandbits(8 * size).to_bytes(size, "little")
            os.pwrite(dev.fd, val, dev.config_offset() + off)
        elif op == 4:  # config reads
            os.pread(dev.fd, rng.choice([1, 2, 4, 64]), dev.config_offset() + rng.randrange(0x100))
        elif op == 5:  # raise an interrupt (BAR0 through the region: EIO while memory is off)
            os.pwrite(dev.fd, struct.pack("<I", 1 << rng.randrange(8)), bar0 + h.EDU_IRQ_RAISE)
        elif op == 6:  # acknowledge
            os.pwrite(dev.fd, struct.pack("<I", 0xFF), bar0 + h.EDU_IRQ_ACK)
        elif op == 7:
            fcntl.ioctl(dev.fd, VFIO_DEVICE_RESET)
        else:  # read whatever was signalled, write an eventfd (an unmask eventfd, maybe)
            e = rng.choice(efds)
            if rng.random() < 0.5:
                os.eventfd_write(e, 1)
            else:
                with contextlib.suppress(BlockingIOError):
                    os.read(e, 8)
        stats[f"{op}:ok"] += 1
    except OSError as exc:
        stats[f"{op}:{errno.errorcode.get(exc.errno or 0, exc.errno)}"] += 1


def main() -> int:
    bdf, seed, ops = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    dev = h.VfioDevice(bdf)
    bar0 = 0  # region i sits at i << 40 on vfio-pci; BAR0 at 0
    efds = [h.eventfd() for _ in range(3)]
    stats: Counter = Counter()
    failures: list[str] = []

    def worker(n: int) -> None:
        rng = random.Random(seed * 10 + n)
        try:
            for _ in range(ops // 2):
                one(dev, rng, efds, bar0, stats)
        except Exception as exc:  # anything but an errno is a failure
            failures.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dev.close()
    print(json.dumps({"uid": os.getuid(), "ops": sum(stats.values()), "stats": stats,
                      "failures": failures}))  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
