"""vfiokit.vfio.uapi against the kernel's own headers: every structure's size and field
offsets, and every constant, compiled with the C compiler from include/uapi of the kernel
tree scripts/build-kernel unpacked (and kmod/vfiokit_pci/vfiokit_pci_uapi.h)."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vfiokit.vfio import uapi as U

CACHE = Path(os.environ.get("VFIOKIT_CACHE", Path.home() / ".cache" / "vfiokit"))
HEADERS = CACHE / "build" / "base" / "usr" / "include"  # make headers_install
KMOD = Path(__file__).resolve().parents[2] / "kmod" / "vfiokit_pci"

needs_headers = pytest.mark.skipif(
    not os.environ.get("VFIOKIT_REQUIRE_KERNEL_HEADERS")
    and (not (HEADERS / "linux" / "iommufd.h").exists() or shutil.which("cc") is None),
    reason="needs the kernel tree of scripts/build-kernel and a C compiler "
    "(scripts/test builds the kernel before the unit tests)",
)  # fmt: skip


def constants() -> dict[str, int]:
    return {
        name: value
        for name, value in vars(U).items()
        if name.isupper() and isinstance(value, int) and name.startswith(("VFIO", "IOMMU"))
    }


@needs_headers
def test_layouts_and_constants_match_the_kernel(tmp_path: Path) -> None:
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        "#include <linux/vfio.h>",
        "#include <linux/iommufd.h>",
        '#include "vfiokit_pci_uapi.h"',
        "int main(void) {",
    ]
    expected: list[str] = []
    for name, cls in sorted(U.STRUCTS.items()):
        lines.append(f'printf("{name} %zu\\n", sizeof(struct {name}));')
        expected.append(f"{name} {ctypes.sizeof(cls)}")
        for field, _ in cls._fields_:
            cname = U.FIELD_ALIASES.get((name, field), field)
            lines.append(f'printf("{name}.{field} %zu\\n", offsetof(struct {name}, {cname}));')
            expected.append(f"{name}.{field} {getattr(cls, field).offset}")
    for name, value in sorted(constants().items()):
        lines.append(f'printf("{name} %llu\\n", (unsigned long long)({name}));')
        expected.append(f"{name} {value}")
    lines += ["return 0;", "}"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "layout"
    cc = subprocess.run(
        ["cc", "-o", str(exe), str(src), f"-I{KMOD}", f"-I{HEADERS}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert cc.returncode == 0, cc.stderr[-3000:]
    got = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    assert got.splitlines() == expected


def test_structs_are_built_by_keyword_only() -> None:
    with pytest.raises(TypeError, match="by keyword"):
        U.iommu_ioas_map(48, 0, 1)  # on purpose: positional order is _fields_ order
    m = U.iommu_ioas_map.new(ioas_id=1, user_va=0x1000, iova=0x2000, length=0x3000)
    assert (m.size, m.iova, m.length) == (ctypes.sizeof(U.iommu_ioas_map), 0x2000, 0x3000)
    s = U.vfio_irq_set.new(8, flags=1)  # argsz: its own size plus 8 bytes of data
    assert s.argsz == ctypes.sizeof(U.vfio_irq_set) + 8 and s.flags == 1


def test_no_positional_struct_construction_anywhere() -> None:
    """No call builds a uAPI structure positionally, in the package or in the code that
    runs only in the VM (tests/vm, bench, scripts)."""
    import ast

    root = Path(__file__).resolve().parents[2]
    files = [*root.glob("vfiokit/**/*.py"), *root.glob("tests/**/*.py"), *root.glob("bench/*.py")]
    files += [p for p in root.glob("scripts/*") if p.is_file() and "python" in p.read_text()[:40]]
    bad = []
    for path in files:
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if name in U.STRUCTS and "# on purpose" not in lines[node.lineno - 1]:
                bad.append(f"{path.relative_to(root)}:{node.lineno}")
    assert bad == []
