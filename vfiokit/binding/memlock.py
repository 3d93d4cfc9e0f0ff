"""The memlock limit another user will get: VFIO pins every page it maps for DMA (a VM's
whole RAM), and the pages count against RLIMIT_MEMLOCK of the process that maps them.

The limit a login session gets comes from pam_limits (/etc/security/limits.conf, then
/etc/security/limits.d/*.conf); without a matching line it is what PID 1 passes on (the
kernel's default, 8 MiB since Linux 5.16). systemd services take LimitMEMLOCK= instead.
"""

from __future__ import annotations

import contextlib
import grp
import pwd
import resource
from dataclasses import dataclass

from ..sysroot import SysRoot

UNLIMITED = resource.RLIM_INFINITY
_SIZES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """'512M', '4G', '1048576' (bytes), 'unlimited' -> bytes. ValueError on anything else."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    if t in ("unlimited", "infinity"):
        return UNLIMITED
    unit = t[-1:] if t[-1:] in _SIZES else ""
    number = t[: len(t) - len(unit)]
    if not number.isdigit():
        raise ValueError(f"not a size: {text!r}")
    return int(number) * _SIZES[unit]


def human(n: int) -> str:
    if n == UNLIMITED:
        return "unlimited"
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def limits_file(user: str) -> str:
    """The pam_limits file vfiokit's remedies name for `user` (assign and doctor alike)."""
    return f"/etc/security/limits.d/90-vfiokit-{user}.conf"


@dataclass(frozen=True)
class Limit:
    user: str
    soft: int
    hard: int
    source: str  # the file and line it came from, or "PID 1 (kernel default)"

    def enough(self, need: int) -> bool:
        return self.soft == UNLIMITED or self.soft >= need

    def remedy(self) -> str:
        return (
            f"for login sessions: echo '{self.user} - memlock unlimited' > "
            f"{limits_file(self.user)}; for a systemd service: "
            "LimitMEMLOCK=infinity in its [Service] section; for a running process: "
            "prlimit --pid PID --memlock=unlimited:unlimited"
        )

    def to_dict(self) -> dict[str, object]:
        def val(n: int) -> int | None:
            return None if n == UNLIMITED else n

        return {"user": self.user, "soft": val(self.soft), "hard": val(self.hard),
                "source": self.source}  # fmt: skip


def _pid1_limit(sysroot: SysRoot) -> tuple[int, int]:
    for line in (sysroot.read("/proc/1/limits") or "").splitlines():
        if line.startswith("Max locked memory"):
            words = line.split()
            return tuple(  # type: ignore[return-value]
                UNLIMITED if w == "unlimited" else int(w) for w in words[3:5]
            )
    return (8 << 20, 8 << 20)


def _limit_files(sysroot: SysRoot) -> list[str]:
    files = ["/etc/security/limits.conf"]
    files += [
        f"/etc/security/limits.d/{n}"
        for n in sysroot.listdir("/etc/security/limits.d")
        if n.endswith(".conf")
    ]
    return files


def _value(word: str) -> int:
    """A limits.conf memlock value: KiB, or unlimited/infinity/-1."""
    if word in ("unlimited", "infinity", "-1"):
        return UNLIMITED
    return int(word) << 10


def user_limit(sysroot: SysRoot, user: str) -> Limit:
    """The memlock limit pam_limits gives `user`'s sessions: a line for the user beats one
    for one of its @groups, which beats `*`; among equals the later line wins."""
    pw = pwd.getpwnam(user)
    groups = {g.gr_name for g in grp.getgrall() if user in g.gr_mem}
    with contextlib.suppress(KeyError):
        groups.add(grp.getgrgid(pw.pw_gid).gr_name)
    soft, hard = _pid1_limit(sysroot)
    best: dict[str, tuple[int, int, str]] = {}  # soft/hard -> (rank, value, where)
    for path in _limit_files(sysroot):
        for no, line in enumerate((sysroot.read(path) or "").splitlines(), 1):
            words = line.split("#", 1)[0].split()
            if len(words) != 4 or words[2] != "memlock":
                continue
            domain, kind, _item, value = words
            rank = 3 if domain == user else 2 if domain[1:] in groups and domain[0] == "@" \
                else 1 if domain == "*" else 0  # fmt: skip
            if rank == 0:
                continue
            try:
                v = _value(value)
            except ValueError:
                continue
            for k in ("soft", "hard") if kind == "-" else (kind,):
                if k in ("soft", "hard") and rank >= best.get(k, (0, 0, ""))[0]:
                    best[k] = (rank, v, f"{path}:{no}")
    if "soft" in best:
        soft = best["soft"][1]
    if "hard" in best:
        hard = best["hard"][1]
    where = sorted({w for _r, _v, w in best.values()}) or ["PID 1 (kernel default)"]
    if hard != UNLIMITED and (soft == UNLIMITED or soft > hard):
        soft = hard  # pam_limits cannot set a soft limit above the hard one
    return Limit(user, soft, hard, ", ".join(where))
