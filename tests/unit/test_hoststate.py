"""HostState.read(): the mounts and interfaces the in-use verdict rests on, from /proc and
/sys (psutil's answers, without importing psutil)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from fakesys import FakeSys
from vfiokit import SysRoot
from vfiokit.binding.inuse import HostState, read_ipv6, read_mounts


def test_mounts_unescaped_last_wins(fake: FakeSys) -> None:
    fake.write("proc/self/mounts",
               "/dev/vda1 / ext4 rw,relatime 0 0\n"
               "proc /proc proc rw 0 0\n"
               "/dev/sdb1 /media/my\\040disk vfat rw 0 0\n"
               "project /work/main 9p rw,trans=virtio 0 0\n"
               "/dev/vda1 /srv/bind ext4 rw 0 0\n")  # fmt: skip
    assert read_mounts(SysRoot(fake.root)) == {
        "/dev/vda1": "/srv/bind", "proc": "/proc", "/dev/sdb1": "/media/my disk",
        "project": "/work/main"}  # fmt: skip


def test_ipv6_global_first_link_local_scoped(fake: FakeSys) -> None:
    fake.write("proc/net/if_inet6",
               "fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n"
               "00000000000000000000000000000001 01 80 10 80       lo\n"
               "fd000000000000000000000000000002 04 40 00 82     eth0\n")  # fmt: skip
    assert read_ipv6(SysRoot(fake.root)) == {
        "eth0": ["fd00::2", "fe80::fc:ff:fe00:1%eth0"], "lo": ["::1"]}  # fmt: skip


def test_interfaces_up_with_addresses(fake: FakeSys) -> None:
    for name, flags in (("eth0", "0x1003"), ("eth1", "0x1002"), ("lo", "0x9")):
        fake.write(f"sys/class/net/{name}/flags", flags + "\n")
    fake.write("proc/net/if_inet6", "fd000000000000000000000000000002 04 40 00 82 eth1\n")
    host = HostState.read(SysRoot(fake.root), ipv4={"eth0": "192.0.2.7"}.get)
    assert host.net == {"eth0": (True, ["192.0.2.7"]), "eth1": (False, ["fd00::2"]),
                        "lo": (True, [])}  # fmt: skip
    assert host.mounts == {}


def test_this_host_agrees_with_iproute2() -> None:
    """On the real machine: every interface `ip -j addr` lists, up as it says, with its
    first IPv4 address (SIOCGIFADDR gives the primary one) and all its IPv6 ones."""
    if shutil.which("ip") is None:
        pytest.skip("no iproute2 here")
    res = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"ip -j addr: {res.stderr.strip()}")
    host = HostState.read()
    links = [x for x in json.loads(res.stdout) if x["ifname"] in host.net]
    assert links  # (a container's /sys may show another network namespace than ip's)
    for link in links:
        name = link["ifname"]
        up, ips = host.net[name]
        assert up == ("UP" in link["flags"]), name
        v4 = [a["local"] for a in link.get("addr_info", []) if a["family"] == "inet"]
        v6 = {a["local"] for a in link.get("addr_info", []) if a["family"] == "inet6"}
        assert [a for a in ips if ":" not in a] == v4[:1], name
        assert {a.split("%")[0] for a in ips if ":" in a} == v6, name
