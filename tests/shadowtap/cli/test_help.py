"""Every command's help, as rich renders it: no paragraph broken mid-sentence by a line break kept
from the source (``shadowtap --help`` showed "one exchange a line, in / request-time order").
Rendered on a terminal wide enough for any paragraph (TERMINAL_WIDTH/COLUMNS), each paragraph of
a command's help must stand on one line, in the command list and on the command's own page."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys

import pytest

from shadowtap.cli import _register, app, reflow

WIDE = "4000"


def _help(*args: str) -> str:
    env = dict(os.environ, COLUMNS=WIDE, TERMINAL_WIDTH=WIDE)
    proc = subprocess.run(
        [sys.executable, "-m", "shadowtap", *args, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    # one line per rendered line, the panels' borders and padding gone
    return "\n".join(
        re.sub(r"\s+", " ", line.strip(" │╭╮╰╯─")) for line in proc.stdout.splitlines()
    )


def _commands() -> dict[str, str]:
    _register()
    out = {}
    for info in app.registered_commands:
        assert info.callback is not None
        name = info.name or info.callback.__name__
        # the docstring as paragraphs, whatever _register did with it: the rendered help must
        # show each of them whole
        out[name] = reflow(inspect.getdoc(info.callback) or "")
    return out


def test_reflow_joins_the_lines_of_a_paragraph_only():
    doc = """First line of a
    sentence that goes on.

    Second paragraph:
    - an item
      that wraps
    - another item"""
    assert reflow(doc) == (
        "First line of a sentence that goes on.\n\n"
        "Second paragraph:\n- an item that wraps\n- another item"
    )


def test_the_command_list_shows_each_summary_on_one_line():
    text = _help()
    for name, help_text in _commands().items():
        first = help_text.split("\n\n", 1)[0].split("\n", 1)[0]
        assert f"{name} {first}" in text, (name, first)


@pytest.mark.parametrize("name", sorted(_commands()))
def test_no_help_paragraph_breaks_mid_sentence(name):
    text = _help(name)
    for paragraph in _commands()[name].split("\n\n"):
        for line in paragraph.split("\n"):  # list items are lines of their own
            assert re.sub(r"\s+", " ", line) in text, (name, line)
