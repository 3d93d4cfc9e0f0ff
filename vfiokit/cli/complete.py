"""Shell completion: the values the CLI's arguments complete to, and bash's colons.

The callbacks read the host through SysRoot (so VFIOKIT_SYSROOT fake trees complete too)
and never fail: completion that raises prints a traceback into the user's prompt.
"""

from __future__ import annotations

import grp
import inspect
import os
import pwd

from typer._completion_classes import BashComplete

from ..sysroot import SysRoot

# click's shell_completion module: typer's vendored copy (>= 0.2x) or click's own (0.15)
_shell_completion = inspect.getmodule(BashComplete.__mro__[1])


def pci_addresses(incomplete: str) -> list[str]:
    """The devices in /sys/bus/pci/devices that `incomplete` starts; in the short `bb:dd.f`
    form for domain 0000 when that is what is being typed."""
    found = SysRoot().listdir("/sys/bus/pci/devices")
    full = [a for a in found if a.startswith(incomplete)]
    if full or not incomplete:
        return full
    return [a[5:] for a in found if a.startswith("0000:") and a[5:].startswith(incomplete)]


def users(incomplete: str) -> list[str]:
    """User names (the passwd database `assign --user` resolves names in)."""
    return sorted({p.pw_name for p in pwd.getpwall() if p.pw_name.startswith(incomplete)})


def groups(incomplete: str) -> list[str]:
    """Group names (the group database `assign --group` resolves names in)."""
    return sorted({g.gr_name for g in grp.getgrall() if g.gr_name.startswith(incomplete)})


def join_colon_words(words: list[str], cword: int) -> tuple[list[str], int]:
    """Undo bash's split at ':' (it is in COMP_WORDBREAKS): `0000 : 03 : 00.0` is one word
    again, and the index of the word being completed moves with it."""
    joined: list[str] = []
    new_cword = cword
    glue = False
    for i, w in enumerate(words):
        if joined and (w == ":" or glue) and i > 1:
            joined[-1] += w
        else:
            joined.append(w)
        glue = w == ":"
        if i == cword:
            new_cword = len(joined) - 1
    if cword >= len(words):
        new_cword = len(joined) + (cword - len(words))
    return joined, new_cword


def after_last_colon(values: list[str], word: str) -> list[str]:
    """Bash replaces only what follows the last ':' of the word: give it just that."""
    cut = word.rfind(":") + 1
    return [v[cut:] if v.startswith(word[:cut]) else v for v in values] if cut else values


class ColonBashComplete(BashComplete):
    """Typer's bash completion, with PCI addresses (which contain colons) kept whole."""

    def get_completion_args(self) -> tuple[list[str], str]:
        words = _shell_completion.split_arg_string(os.environ["COMP_WORDS"])  # type: ignore[union-attr]
        words, cword = join_colon_words(words, int(os.environ["COMP_CWORD"]))
        return words[1:cword], words[cword] if cword < len(words) else ""

    def complete(self) -> str:
        args, incomplete = self.get_completion_args()
        values = [c.value for c in self.get_completions(args, incomplete)]
        return "\n".join(after_last_colon(values, incomplete))


def register_bash() -> None:
    """Use ColonBashComplete for bash; after typer's own registration (get_command)."""
    _shell_completion.add_completion_class(ColonBashComplete, "bash")  # type: ignore[union-attr]
