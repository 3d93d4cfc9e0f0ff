from hypothesis import given
from hypothesis import strategies as st

from fakesys import config_space, msi_cap, msix_cap, pcie_cap
from vfiokit import pciconfig as pc


def test_capability_walk() -> None:
    cfg = config_space(0x8086, 0x10D3, 0x020000, caps=[pcie_cap(), msi_cap(3), msix_cap(5, 3)])
    assert [cid for cid, _ in pc.capabilities(cfg) or []] == [0x10, 0x05, 0x11]
    m = pc.msi(cfg)
    assert m is not None and m.vectors == 8 and m.is_64bit and not m.enabled
    x = pc.msix(cfg)
    assert x is not None and (x.table_size, x.table_bar, x.table_offset) == (5, 3, 0x2000)
    assert pc.is_pcie(cfg) is True


def test_truncated_config_is_unknown() -> None:
    cfg = config_space(0x8086, 0x10D3, 0x020000, caps=[msi_cap()], size=64)
    assert pc.capabilities(cfg) is None
    assert pc.msi(cfg) is None
    assert pc.is_pcie(cfg) is None
    assert pc.interrupt_pin(cfg) == 1


def test_no_caps() -> None:
    cfg = config_space(0x1234, 0x11E8, 0xFF00, caps=[])
    assert pc.capabilities(cfg) == []
    assert pc.is_pcie(cfg) is False


def test_loop_in_list_terminates() -> None:
    cfg = bytearray(config_space(0x1234, 0x11E8, 0xFF00, caps=[msi_cap()]))
    cfg[0x41] = 0x40  # next pointer back to itself
    assert pc.capabilities(bytes(cfg)) == [(0x05, 0x40)]


def test_intx_bits() -> None:
    cfg = config_space(1, 2, 3, command=pc.COMMAND_INTX_DISABLE, status=pc.STATUS_INTERRUPT)
    assert pc.intx_disabled(cfg) is True and pc.intx_asserted(cfg) is True
    assert pc.intx_disabled(b"") is None


@given(st.binary(max_size=300))
def test_garbage_never_raises(cfg: bytes) -> None:
    caps = pc.capabilities(cfg)
    assert caps is None or len(caps) <= 48
    pc.msi(cfg)
    pc.msix(cfg)
    pc.is_pcie(cfg)
    pc.intx_disabled(cfg)
    pc.intx_asserted(cfg)
    pin = pc.interrupt_pin(cfg)
    assert pin is None or 0 <= pin <= 4
