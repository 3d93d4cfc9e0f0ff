import pytest
from hypothesis import given
from hypothesis import strategies as st

from vfiokit import ExitCode, InvalidArgument, PciAddress


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("0000:00:04.0", "0000:00:04.0"),
        ("00:04.0", "0000:00:04.0"),
        ("0:4.0", "0000:00:04.0"),
        ("  ff:1f.7 ", "0000:ff:1f.7"),
        ("10000:3a:00.1", "10000:3a:00.1"),
        ("ABCD:EF:1F.7", "abcd:ef:1f.7"),
    ],
)
def test_valid(text: str, canonical: str) -> None:
    assert str(PciAddress.parse(text)) == canonical


@pytest.mark.parametrize(
    "text",
    [
        "",
        "00:04",
        "00:20.0",
        "00:04.8",
        "000:100:04.0",
        "g0:04.0",
        "0000:00:04.0.1",
        "123456789:00:04.0",
        "00-04.0",
        "eth0",
    ],
)
def test_invalid(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        PciAddress.parse(text)
    assert info.value.exit_code == ExitCode.USAGE
    assert "dddd:bb:dd.f" in (info.value.remedy or "")


def test_fields_checked() -> None:
    with pytest.raises(InvalidArgument):
        PciAddress(0, 0, 32, 0)
    with pytest.raises(InvalidArgument):
        PciAddress(0, 256, 0, 0)


addresses = st.builds(
    PciAddress,
    st.integers(0, 0xFFFF_FFFF),
    st.integers(0, 0xFF),
    st.integers(0, 0x1F),
    st.integers(0, 7),
)


@given(addresses)
def test_roundtrip(addr: PciAddress) -> None:
    assert PciAddress.parse(str(addr)) == addr
    if addr.domain == 0:
        assert PciAddress.parse(str(addr)[5:]) == addr


@given(st.text(max_size=40))
def test_never_crashes(text: str) -> None:
    try:
        addr = PciAddress.parse(text)
    except InvalidArgument:
        return
    assert PciAddress.parse(str(addr)) == addr
