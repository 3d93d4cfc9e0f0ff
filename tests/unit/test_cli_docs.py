"""docs/cli.md matches `--help`: each verb's section (and the global options') names every
option the rendered help shows, says what the help says of each option and argument, and
starts from the same summary. On failure the message gives the missing table rows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from vfiokit.cli import VERBS, app

DOC = Path(__file__).resolve().parents[2] / "docs/cli.md"
ENV = {"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}
GLOBAL = "`vfiokit` and its global options"


def squash(text: str) -> str:
    """Whitespace and Markdown's backquotes and table pipes don't count."""
    return " ".join(text.replace("`", "").replace("\\|", "|").split())


def sections() -> dict[str, str]:
    """`## ` heading -> its text (### subsections included), for the headings that name a
    verb (`## \\`vfiokit list\\``, `## \\`vfiokit show BDF\\``) or the global options."""
    out: dict[str, str] = {}
    for part in re.split(r"^## ", DOC.read_text(), flags=re.M)[1:]:
        heading, _, body = part.partition("\n")
        if heading.startswith(GLOBAL):
            out[""] = body
        m = re.match(r"`vfiokit ([a-z-]+)", heading)
        if m and m[1] in VERBS:
            assert m[1] not in out, f"two sections for {m[1]}"
            out[m[1]] = heading + "\n" + body
    return out


def rendered(args: list[str]) -> str:
    res = CliRunner().invoke(app, [*args, "--help"], env=ENV)
    assert res.exit_code == 0, res.output
    return res.output


def command(verb: str):
    group = typer.main.get_command(app)
    return group if not verb else group.commands[verb]  # type: ignore[attr-defined]


@pytest.mark.parametrize("verb", ["", *VERBS])
def test_docs_section_matches_help(verb: str) -> None:
    docs = sections()
    assert verb in docs, f"docs/cli.md has no section for {verb or 'the global options'}"
    section = squash(docs[verb])
    shown = rendered([verb] if verb else [])
    cmd = command(verb)
    missing = []
    if verb:
        summary = squash((cmd.help or "").split("\n\n")[0])
        if summary not in section:
            missing.append(f"the summary: {summary}")
    for param in cmd.params:
        names = [*param.opts, *param.secondary_opts]
        if not names[0].startswith("-"):  # an argument
            names = [param.human_readable_name]
        for name in names:
            assert name in shown, f"{name} is not in the rendered help of {verb}"
            if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", section):
                missing.append(f"| `{name}` | {getattr(param, 'help', '')} |")
        help_text = squash(getattr(param, "help", None) or "")
        if help_text and help_text not in section:
            missing.append(f"| `{names[0]}` | {getattr(param, 'help', '')} |")
    assert not missing, f"docs/cli.md, {verb or 'global options'}: add\n" + "\n".join(
        dict.fromkeys(missing)
    )


def test_rendered_help_lists_exactly_the_params() -> None:
    """The check above reads click's params; they are what --help shows (no hidden one)."""
    for verb in VERBS:
        shown = set(re.findall(r"(?<![\w/-])(--[a-z][a-z-]*|-h)(?![\w-])",
                               rendered([verb]).split("Options", 1)[-1]))  # fmt: skip
        names = {n for p in command(verb).params for n in (*p.opts, *p.secondary_opts)
                 if n.startswith("-")}  # fmt: skip
        assert names <= shown, verb
